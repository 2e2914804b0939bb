"""Buckets: how a model's weights are packed, gathered, checked on arrival and copied in.

:func:`iter_buckets` walks the model's parameters in ``named_parameters()``
order and packs them, cast to the rollout's dtype, into flat buckets of at
most ``rl.sync.bucket_mb`` (a larger parameter is a bucket of its own). Under
ZeRO-3 each bucket's parameters are gathered with
``deepspeed.zero.GatheredParameters(..., modifier_rank=None)`` one bucket at a
time, by every rank (gathering is collective) in the same order; only the
source rank (0) copies the data out, so no rank ever holds more than one
gathered bucket next to its own partition. The receiver compares the sender's
manifest (names, shapes, dtypes of every bucket) with its own parameters
*before* copying anything (:func:`check_manifest`), so a missing or unexpected
name is an error naming it, never a partial load.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch

from pagerl.errors import PageRLError


class WeightSyncError(PageRLError):
    """Weights did not arrive, arrived different from what was sent, or give different logprobs."""


def bucket_bytes_of(bucket_mb: float) -> int:
    """``rl.sync.bucket_mb`` in bytes (1 MB = 2**20 bytes)."""
    if bucket_mb <= 0:
        raise WeightSyncError(f"rl.sync.bucket_mb must be positive, got {bucket_mb}")
    return max(1, int(bucket_mb * 2**20))


def torch_dtype(dtype: Any) -> torch.dtype:
    """A torch dtype from itself or its name (``"bfloat16"``)."""
    return dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class BucketSpec(NamedTuple):
    """What one bucket holds: parameter names and shapes, and the dtype they travel in."""

    names: Tuple[str, ...]
    shapes: Tuple[Tuple[int, ...], ...]
    dtype: str

    @property
    def numels(self) -> List[int]:
        return [int(torch.Size(s).numel()) for s in self.shapes]

    @property
    def nbytes(self) -> int:
        return sum(self.numels) * torch_dtype(self.dtype).itemsize


def specs_from_rows(rows: Sequence[Sequence[Any]]) -> List[BucketSpec]:
    """Bucket specs from their plain form (lists, as JSON or a remote call carries them)."""
    return [BucketSpec(tuple(n), tuple(tuple(int(d) for d in s) for s in sh), str(dt)) for n, sh, dt in rows]


class WeightBucket(NamedTuple):
    """One bucket: its spec and the flat data (``None`` on ranks that do not ship it)."""

    spec: BucketSpec
    flat: Optional[torch.Tensor]


def _full_shape(p: torch.Tensor) -> Tuple[int, ...]:
    # a ZeRO-3 parameter is an empty placeholder; ds_shape is its real shape
    return tuple(int(d) for d in getattr(p, "ds_shape", p.shape))


def plan_buckets(hf_model: Any, bucket_bytes: int, dtype: Any = None) -> List[BucketSpec]:
    """The buckets :func:`iter_buckets` yields, without gathering anything.

    Parameters in ``named_parameters()`` order are packed greedily while the
    bucket stays within ``bucket_bytes`` (counted in ``dtype``, the dtype
    they are sent in, default each parameter's own); a parameter larger than
    ``bucket_bytes`` is a bucket of its own.
    """
    buckets: List[BucketSpec] = []
    names: List[str] = []
    shapes: List[Tuple[int, ...]] = []
    size, current = 0, None
    for name, p in hf_model.named_parameters():
        target = torch_dtype(dtype) if dtype is not None else p.dtype
        nbytes = int(torch.Size(_full_shape(p)).numel()) * target.itemsize
        if names and (size + nbytes > bucket_bytes or target != current):
            buckets.append(BucketSpec(tuple(names), tuple(shapes), _dtype_name(current)))
            names, shapes, size = [], [], 0
        names.append(name)
        shapes.append(_full_shape(p))
        size, current = size + nbytes, target
    if names:
        buckets.append(BucketSpec(tuple(names), tuple(shapes), _dtype_name(current)))
    return buckets


def iter_buckets(hf_model: Any, bucket_bytes: int, dtype: Any = None, *, keep: bool = True) -> Iterator[WeightBucket]:
    """Yield the model's weights bucket by bucket (see :func:`plan_buckets` for the packing).

    Under ZeRO-3 this is collective: every rank must iterate it to the end,
    in step, because each bucket is gathered from all ranks. Ranks with
    ``keep=False`` take part in the gathering and get ``flat=None``.
    """
    params = dict(hf_model.named_parameters())
    for spec in plan_buckets(hf_model, bucket_bytes, dtype):
        group = [params[n] for n in spec.names]
        partitioned = [p for p in group if hasattr(p, "ds_id")]
        if partitioned:
            import deepspeed  # only ZeRO-3 parameters carry ds_id

            gather = deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)
        else:
            gather = nullcontext()
        with gather, torch.no_grad():
            flat = None
            if keep:  # copied out before the gathered parameters are released again
                flat = torch.cat([p.detach().reshape(-1).to(torch_dtype(spec.dtype)) for p in group])
        yield WeightBucket(spec, flat)


def check_manifest(manifest: Sequence[BucketSpec], params: Dict[str, torch.Tensor], version: int,
                   held_version: Optional[int] = None) -> None:
    """Refuse a sync whose weights do not match the receiver's parameters one to one,
    or that is older than the version the receiver holds (``held_version``)."""
    if held_version is not None and version < held_version:
        raise WeightSyncError(f"weight sync of version {version} refused: this rollout worker holds the newer "
                              f"version {held_version}")
    sent: Dict[str, Tuple[Tuple[int, ...], str]] = {}
    for spec in manifest:
        for name, shape in zip(spec.names, spec.shapes):
            sent[name] = (tuple(shape), spec.dtype)

    def listing(names: List[str]) -> str:
        return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")

    missing, unexpected = [n for n in params if n not in sent], [n for n in sent if n not in params]
    problems = ([f"no weights sent for {listing(missing)}"] if missing else []) + (
        [f"unexpected weights {listing(unexpected)}"] if unexpected else [])
    for name, (shape, dtype) in sent.items():
        if name in params:
            have = params[name]
            if tuple(have.shape) != shape:
                problems.append(f"{name}: sent shape {list(shape)}, the rollout model has {list(have.shape)}")
            elif _dtype_name(have.dtype) != dtype:
                problems.append(f"{name}: sent as {dtype}, the rollout model holds {_dtype_name(have.dtype)}")
    if problems:
        raise WeightSyncError(
            f"weight sync of version {version} refused before any weight was copied: " + "; ".join(problems[:8])
            + " (trainer and rollout must load the same model with the same model.dtype)"
        )


def copy_bucket(bucket: WeightBucket, params: Dict[str, torch.Tensor]) -> None:
    """Copy a received bucket into the receiver's parameters by name."""
    spec, flat = bucket
    if flat is None or flat.numel() != sum(spec.numels) or _dtype_name(flat.dtype) != spec.dtype:
        got = "nothing" if flat is None else f"{flat.numel()} x {_dtype_name(flat.dtype)}"
        raise WeightSyncError(f"bucket {spec.names[0]}...: expected {sum(spec.numels)} x {spec.dtype}, got {got}")
    with torch.no_grad():
        for name, shape, chunk in zip(spec.names, spec.shapes, flat.split(spec.numels)):
            params[name].copy_(chunk.view(shape))
