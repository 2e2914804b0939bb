"""The transport interface and its registry (``rl.sync.transport``): one module per transport.

A transport moves buckets from trainer rank 0 to the rollout workers; the
same class serves the sender, the receiver and the controller. The built-in
ones are :mod:`~pagerl.rl.weight_sync.object_store`,
:mod:`~pagerl.rl.weight_sync.collective` and
:mod:`~pagerl.rl.weight_sync.in_process`; a new one is a class registered with
:func:`register_transport`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

import torch

from pagerl.registry import Registry, register
from pagerl.rl.weight_sync.buckets import BucketSpec, WeightBucket, WeightSyncError

TRANSPORTS = Registry("rl.sync.transport")


def register_transport(name: str) -> Callable[[type], type]:
    """Add a transport class under ``name`` (a value of ``rl.sync.transport``); names are unique."""

    def add(cls: type) -> type:
        cls.name = name
        return register(TRANSPORTS, name)(cls)

    return add


def transport_class(name: str) -> type:
    if name not in TRANSPORTS:
        raise WeightSyncError(f"rl.sync.transport: expected one of {', '.join(TRANSPORTS)}, got {name!r}")
    return TRANSPORTS[name]


class Transport:
    """One way to move buckets; the same class serves the sender, the receiver and the controller.

    ``timeout_s`` bounds every wait of the transport (``rl.timeout_s``).
    """

    name = ""
    concurrent = False  # both sides at once (a collective), or the sender's payload to the receivers after

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = float(timeout_s)

    def connect(self, trainers: Any, rollouts: Any) -> List[Dict[str, Any]]:
        """Controller: set both sides up once, before the first sync; the members' answers."""
        return []

    def setup(self, spec: Dict[str, Any]) -> Dict[str, Any]:
        """Sender rank 0 or a receiver: join what :meth:`connect` prepared."""
        return {}

    def send(self, buckets: Iterable[WeightBucket], plan: List[BucketSpec], version: int,
             source: bool) -> Optional[Dict[str, Any]]:
        """Every trainer rank; ``source`` (rank 0) ships. Returns the receivers' payload (rank 0)."""
        raise NotImplementedError

    def receive(self, payload: Dict[str, Any], params: Dict[str, torch.Tensor],
                held_version: Optional[int] = None) -> Iterator[WeightBucket]:
        """Receiver: check the manifest (:func:`check_manifest`) before yielding the first bucket."""
        raise NotImplementedError

    def close(self) -> None:
        pass
