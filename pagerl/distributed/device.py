"""The device a worker computes on, and moving a batch onto it.

Every loop that runs on a Ray actor (rollout, trainer ranks, reward and
reference workers) picks its device the same way, so "use a GPU" means one
thing everywhere: the recipe reserved GPUs for the role, and Ray made exactly
those visible to the actor (``CUDA_VISIBLE_DEVICES``), so the actor's first
visible GPU is its own. Nothing here falls back silently: a role that asked
for a GPU and sees none is a broken placement, not a reason to run on CPU at
a fraction of the speed.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from pagerl.errors import PageRLError


class DeviceError(PageRLError):
    """A role asked for a device this process does not have."""


def worker_device(use_gpu: bool) -> torch.device:
    """``cuda`` (the first GPU Ray made visible to this actor) when ``use_gpu``, else ``cpu``."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            "this worker was asked to run on a GPU but sees none (torch.cuda.is_available() is False); "
            "reserve GPUs for the role in the recipe (e.g. rl.rollout.gpus_per_worker, "
            "rl.trainer.gpus_per_rank) on a cluster that has them, or set them to 0 to run on CPU"
        )
    return torch.device("cuda", torch.cuda.current_device())


def to_device(batch: Mapping[str, Any], device: torch.device, non_blocking: bool = False) -> dict:
    """A copy of ``batch`` with every tensor value on ``device`` (other values as they are).

    Nested mappings, lists and tuples are followed, so a batch may carry
    per-row lists of ids or metadata next to its tensors.
    """
    return {key: _move(value, device, non_blocking) for key, value in batch.items()}


def _move(value: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, Mapping):
        return {k: _move(v, device, non_blocking) for k, v in value.items()}
    if isinstance(value, list):
        return [_move(v, device, non_blocking) for v in value]
    if isinstance(value, tuple):
        moved = [_move(v, device, non_blocking) for v in value]
        return type(value)(*moved) if hasattr(value, "_fields") else tuple(moved)  # named tuples keep their type
    return value


def peak_memory_mb(device: torch.device) -> dict:
    """This process's peak memory: resident set (``ru_maxrss``) and, on a GPU, the peak allocated there.

    What a role reports for the throughput benchmark's per-role memory; on Linux
    ``ru_maxrss`` is in KiB.
    """
    import resource

    out = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
