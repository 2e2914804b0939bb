"""The trainer-rank side of a sync: every rank iterates the buckets, rank 0 ships them."""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from pagerl.rl.weight_sync.buckets import WeightSyncError, bucket_bytes_of, iter_buckets, plan_buckets, torch_dtype
from pagerl.rl.weight_sync.transport import Transport, transport_class


class WeightSender:
    """The trainer-rank side: runs on every rank, rank 0 ships (``rl.sync.*``, ``rl.timeout_s``)."""

    def __init__(self, sync_cfg: Any, *, rank: int, dtype: Any, timeout_s: float) -> None:
        self.rank = int(rank)
        self.dtype = torch_dtype(dtype)
        self.bucket_bytes = bucket_bytes_of(sync_cfg.bucket_mb)
        self.transport: Transport = transport_class(sync_cfg.transport)(timeout_s)

    def setup(self, spec: Dict[str, Any]) -> Dict[str, Any]:
        """Join the channel the controller prepared (rank 0; see :meth:`Transport.connect`)."""
        if spec.get("transport", self.transport.name) != self.transport.name:
            raise WeightSyncError(f"trainer rank {self.rank} sends over {self.transport.name!r} (rl.sync.transport), "
                                  f"asked to set up {spec['transport']!r}")
        return self.transport.setup(spec)

    def push(self, hf_model: Any, version: int) -> Optional[Dict[str, Any]]:
        """Send the model's weights as ``version``. Collective under ZeRO-3: every rank calls it.

        Rank 0 returns ``{"payload", "bytes", "buckets", "seconds"}``; the others ``None``.
        """
        started = time.perf_counter()
        plan = plan_buckets(hf_model, self.bucket_bytes, self.dtype)
        source = self.rank == 0
        payload = self.transport.send(iter_buckets(hf_model, self.bucket_bytes, self.dtype, keep=source),
                                      plan, int(version), source)
        if not source:
            return None
        return {"payload": payload, "bytes": sum(s.nbytes for s in plan), "buckets": len(plan),
                "seconds": time.perf_counter() - started}
