"""The controller's side: one sync of the trainers' weights to every rollout worker, and its check.

A sync is versioned (each push carries the policy version, recorded by the
receiver once every bucket is in) and verified: after it, the controller
compares trainer and rollout logprobs of a fixed probe batch with
:func:`verify_sync` (``rl.sync.max_logprob_delta``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import ray
import torch
from ray.exceptions import RayError

from pagerl.rl.roles.groups import wait_groups
from pagerl.rl.weight_sync.buckets import WeightSyncError
from pagerl.rl.weight_sync.transport import Transport, transport_class


@dataclass
class SyncStats:
    """One sync as the controller saw it (MB = 2**20 bytes; seconds are wall time)."""

    version: int
    transport: str
    bytes: int
    buckets: int
    seconds: float
    mb_per_s: float
    receivers: int
    remote_calls: int


class WeightSync:
    """Drives syncs from the trainer group to the rollout group (``rl.sync``, ``rl.timeout_s``)."""

    def __init__(self, trainers: Any, rollouts: Any, sync_cfg: Any, timeout_s: float) -> None:
        self.trainers, self.rollouts = trainers, rollouts
        self.transport: Transport = transport_class(sync_cfg.transport)(timeout_s)
        self.members = self.transport.connect(trainers, rollouts)
        self.history: List[SyncStats] = []

    def sync(self, version: int, push_method: str = "push_weights") -> SyncStats:
        """Send the trainers' weights to every rollout worker as ``version``; one call per receiver."""
        started = time.perf_counter()
        if self.transport.concurrent:
            pushes = self.trainers.async_call(push_method, version)
            loads = self.rollouts.async_call("load_weights", {"transport": self.transport.name, "version": version})
            try:
                sent, answers = wait_groups((self.trainers, pushes), (self.rollouts, loads))
            except WeightSyncError as error:
                raise self._receivers_reason(loads) or error from None
        else:
            sent = self.trainers.call(push_method, version)
            answers = self.rollouts.call("load_weights", sent[0]["payload"])
        seconds = time.perf_counter() - started
        head = sent[0]
        for i, answer in enumerate(answers):
            if answer["version"] != version or answer["buckets"] != head["buckets"] or answer["bytes"] != head["bytes"]:
                raise WeightSyncError(f"rollout worker {i} loaded {answer} of version {version}, "
                                      f"trainer rank 0 sent {head['buckets']} buckets, {head['bytes']} bytes")
        stats = SyncStats(version, self.transport.name, int(head["bytes"]), int(head["buckets"]), seconds,
                          head["bytes"] / 2**20 / max(seconds, 1e-9), len(answers), len(answers))
        self.history.append(stats)
        return stats

    def _receivers_reason(self, loads: List[Any]) -> Optional[BaseException]:
        """A receiver's own error, which names what it refused, in place of the sender's "refused"."""
        for ref in loads:
            try:
                ray.get(ref, timeout=min(5.0, self.transport.timeout_s))
            except RayError as exc:
                if isinstance(getattr(exc, "cause", None), WeightSyncError):
                    return exc.cause
        return None

    def close(self) -> None:
        self.transport.close()


def ragged(rows: Sequence[Sequence[float]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(values [B, T] float64, mask [B, T] bool)`` of per-token rows of different lengths."""
    width = max((len(r) for r in rows), default=0)
    values = torch.zeros((len(rows), width), dtype=torch.float64)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, row in enumerate(rows):
        values[b, : len(row)] = torch.as_tensor(list(row), dtype=torch.float64)
        mask[b, : len(row)] = True
    return values, mask


def verify_sync(trainer_logprobs: Any, rollout_logprobs: Any, mask: Any, threshold: float, step: int) -> float:
    """Max per-token ``|trainer - rollout|`` logprob over ``mask``; above ``threshold`` it raises.

    Inputs are ``[B, T]`` tensors, or per-token rows of different lengths
    (then ``mask`` may be ``None``). Tokens both sides give ``-inf`` agree; a
    NaN, or ``-inf`` on one side only, is an infinite difference.
    """
    if not isinstance(trainer_logprobs, torch.Tensor):
        trainer_logprobs, row_mask = ragged(trainer_logprobs)
        mask = row_mask if mask is None else mask
    if not isinstance(rollout_logprobs, torch.Tensor):
        rollout_logprobs, _ = ragged(rollout_logprobs)
    a, b = trainer_logprobs.detach().double().cpu(), rollout_logprobs.detach().double().cpu()
    if a.shape != b.shape:
        raise WeightSyncError(f"sync check at step {step}: trainer logprobs {tuple(a.shape)}, "
                              f"rollout {tuple(b.shape)}")
    m = torch.ones_like(a, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool().cpu()
    same = (a == b)  # equal infinities included
    delta = torch.where(same, torch.zeros_like(a), (a - b).abs())
    delta = torch.where(delta.isnan(), torch.full_like(delta, float("inf")), delta)
    worst = float(delta[m].max()) if bool(m.any()) else 0.0
    if worst > threshold:
        raise WeightSyncError(
            f"weight sync check failed at step {step}: rollout and trainer logprobs of the probe batch differ "
            f"by up to {worst:.3g} per token, above rl.sync.max_logprob_delta={threshold:g}; the rollout "
            "workers are not sampling from the weights being trained"
        )
    return worst
