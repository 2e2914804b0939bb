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
2. **carried by a transport** of :data:`TRANSPORTS` (:mod:`~pagerl.rl.weight_sync.transport`, one module each):
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
(:class:`pagerl.rl.roles.rollout.RolloutWorker`) has ``setup_weight_sync(spec)`` and
``load_weights(payload)``; the controller's :class:`WeightSync` drives both
through their :class:`~pagerl.rl.roles.groups.ActorGroup` and returns :class:`SyncStats`.

Only parameters are synced: buffers of the supported models (rotary
frequencies) are computed from the config, not trained.

Modules: :mod:`~pagerl.rl.weight_sync.buckets` (packing, gathering, the
manifest check), :mod:`~pagerl.rl.weight_sync.transport` (the interface and
registry), one module per transport, :mod:`~pagerl.rl.weight_sync.sender`
(trainer side) and :mod:`~pagerl.rl.weight_sync.sync` (controller side and the
verification).
"""

from pagerl.rl.weight_sync import collective, in_process, object_store  # noqa: F401  (register the transports)
from pagerl.rl.weight_sync.buckets import (
    BucketSpec,
    WeightBucket,
    WeightSyncError,
    bucket_bytes_of,
    check_manifest,
    copy_bucket,
    iter_buckets,
    plan_buckets,
    specs_from_rows,
    torch_dtype,
)
from pagerl.rl.weight_sync.collective import host_store
from pagerl.rl.weight_sync.sender import WeightSender
from pagerl.rl.weight_sync.sync import SyncStats, WeightSync, ragged, verify_sync
from pagerl.rl.weight_sync.transport import TRANSPORTS, Transport, register_transport, transport_class

__all__ = [
    "TRANSPORTS",
    "BucketSpec",
    "SyncStats",
    "Transport",
    "WeightBucket",
    "WeightSender",
    "WeightSync",
    "WeightSyncError",
    "bucket_bytes_of",
    "check_manifest",
    "copy_bucket",
    "host_store",
    "iter_buckets",
    "plan_buckets",
    "ragged",
    "register_transport",
    "specs_from_rows",
    "torch_dtype",
    "transport_class",
    "verify_sync",
]
