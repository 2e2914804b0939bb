"""Versioned, bucketed, verified weight sync from the trainer ranks to the rollout workers.

After each RL step the rollout workers must sample from the weights the
trainer just produced, and the run must *know* they do: a rollout that
silently keeps old weights (or half of the new ones) still produces
plausible pages, and the PPO ratio then quietly corrects for a policy that
is not the one being trained. So a sync is

1. **bucketed**: :func:`iter_buckets` walks the model's parameters in
   ``named_parameters()`` order and packs them, cast to the rollout's dtype,
   into flat buckets of at most ``rl.sync.bucket_mb`` (a larger parameter is
   a bucket of its own). Under ZeRO-3 each bucket's parameters are gathered
   with ``deepspeed.zero.GatheredParameters(..., modifier_rank=None)`` one
   bucket at a time, by every rank (gathering is collective) in the same
   order; only the source rank (0) copies the data out. No rank ever holds
   more than one gathered bucket next to its own partition. Under ZeRO-1/2
   and for plain modules the parameters are already whole.
2. **carried by a transport** of :data:`TRANSPORTS` (:mod:`pagerl.rl.transports`):
   ``object_store`` (one ``ray.put`` per bucket, and ONE remote call per
   receiver per sync) or ``collective`` (a process group of trainer rank 0
   and the rollout workers, one broadcast per bucket; gloo or NCCL).
3. **checked on arrival**: the receiver compares the sender's manifest
   (names, shapes, dtypes of every bucket) with its own parameters *before*
   copying anything, so a missing or unexpected name is an error naming it,
   never a partial load; the version is recorded once every bucket is in.
4. **verified**: the controller compares trainer and rollout logprobs of a
   fixed probe batch with :func:`verify_sync` (``rl.sync.max_logprob_delta``).

Who calls what: each trainer rank actor owns a :class:`WeightSender` behind
``setup_weight_sync(spec)`` and ``push_weights(version)``; each rollout worker
(:class:`pagerl.rl.rollout.RolloutWorker`) has ``setup_weight_sync(spec)`` and
``load_weights(payload)``; the controller's :class:`WeightSync` drives both
through their :class:`~pagerl.rl.groups.ActorGroup` and returns :class:`SyncStats`.

Only parameters are synced: buffers of the supported models (rotary
frequencies) are computed from the config, not trained.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch

from pagerl.errors import PageRLError
from pagerl.registry import Registry, register


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


# ------------------------------------------------------------------------------ buckets
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


# ------------------------------------------------------------------------------ receiving
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


# ------------------------------------------------------------------------------ transports
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


# ------------------------------------------------------------------------------ the two ends
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


# ------------------------------------------------------------------------------ the controller
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
        from pagerl.rl.groups import wait_groups

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
        import ray
        from ray.exceptions import RayError

        for ref in loads:
            try:
                ray.get(ref, timeout=min(5.0, self.transport.timeout_s))
            except RayError as exc:
                if isinstance(getattr(exc, "cause", None), WeightSyncError):
                    return exc.cause
        return None

    def close(self) -> None:
        self.transport.close()


# ------------------------------------------------------------------------------ verification
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


# The built-in transports live in their own module; importing it registers them.
from pagerl.rl import transports as _transports  # noqa: E402,F401
