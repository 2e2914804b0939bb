"""``collective``: a process group of its own, one broadcast per bucket. Why a
separate group and not the trainers' one: the trainer ranks' default
group is theirs (ZeRO's gathers and reductions run on it), and the rollout
workers are not part of it. The sync group is trainer rank 0 (rank 0 here)
plus every rollout worker (ranks 1..R), created without touching
``torch.distributed``'s global state: a ``ProcessGroupGloo`` (or
``ProcessGroupNCCL`` when the process has a GPU: the same code, NCCL moves
device tensors) built directly on a ``PrefixStore`` over a TCPStore that the
controller hosts for the lifetime of the run. ``dist.new_group`` cannot do
this, since it needs every member in one default group first.

Every operation has the timeout ``rl.timeout_s``, the store included, so a
member that never arrives fails the sync with a :class:`WeightSyncError`
instead of hanging it. The store and the gloo sockets listen on the node's
address as Ray knows it (127.0.0.1 on a local cluster, which
:func:`pagerl.distributed.ray_cluster.connect` pins to loopback); torch's
own TCPStore server would listen on every interface, so :func:`host_store`
hands it a socket bound to that address.

A sync: rank 0 broadcasts the manifest (names, shapes, dtypes of every
bucket, as JSON), every receiver checks it against its parameters and an
all-reduce of "ok" lets all members refuse together before any weight moves;
then one broadcast per flat bucket, gathered (under ZeRO-3) and sent one at a
time.
"""

from __future__ import annotations

import datetime
import json
import socket
import uuid
from typing import Any, Callable, List, Optional, Tuple

import ray
import torch
import torch.distributed as dist

from pagerl.rl.roles.groups import wait_groups
from pagerl.rl.weight_sync.buckets import (
    BucketSpec,
    WeightBucket,
    WeightSyncError,
    check_manifest,
    specs_from_rows,
    torch_dtype,
)
from pagerl.rl.weight_sync.transport import Transport, register_transport


def host_store(host: str, timeout_s: float) -> Tuple[Any, int]:
    """A TCPStore server listening on ``host`` only, on a free port: ``(store, port)``.

    torch's own server binds every interface; handing it a socket bound to
    ``host`` keeps it where the cluster is (loopback for a local cluster).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    store = dist.TCPStore(host, port, None, True, timeout=datetime.timedelta(seconds=timeout_s),
                          wait_for_workers=False, master_listen_fd=sock.detach())
    return store, port


def _node_address() -> str:
    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


@register_transport("collective")
class CollectiveTransport(Transport):
    """Broadcast of each flat bucket over a process group of trainer rank 0 + the rollout workers."""

    concurrent = True

    def __init__(self, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self._store = None
        self._group = None
        self._device = torch.device("cpu")

    def connect(self, trainers, rollouts):
        host = _node_address()
        self._store, port = host_store(host, self.timeout_s)  # kept alive by the controller
        spec = {"transport": self.name, "host": host, "port": port, "world_size": 1 + len(rollouts),
                "prefix": uuid.uuid4().hex}
        sender, receivers = wait_groups(
            (trainers, [trainers.async_call_one(0, "setup_weight_sync", {**spec, "rank": 0})]),
            (rollouts, rollouts.async_call_each("setup_weight_sync",
                                                [({**spec, "rank": 1 + i},) for i in range(len(rollouts))])))
        return sender + receivers

    def setup(self, spec):
        timeout = datetime.timedelta(seconds=self.timeout_s)
        store = dist.PrefixStore(f"pagerl-weight-sync/{spec['prefix']}/",
                                 dist.TCPStore(spec["host"], int(spec["port"]), None, False, timeout=timeout))
        rank, size = int(spec["rank"]), int(spec["world_size"])
        if torch.cuda.is_available() and dist.is_nccl_available():
            self._device = torch.device("cuda", torch.cuda.current_device())
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self._group = dist.ProcessGroupNCCL(store, rank, size, options)
        else:
            options = dist.ProcessGroupGloo._Options()
            options._timeout = timeout
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=_node_address())]
            self._group = dist.ProcessGroupGloo(store, rank, size, options)
        return {"rank": rank, "backend": "nccl" if self._device.type == "cuda" else "gloo", "host": spec["host"],
                "device_host": _node_address()}

    def _run(self, what: str, work_of: Callable[[], Any]) -> None:
        if self._group is None:
            raise WeightSyncError("collective weight sync used before setup_weight_sync (WeightSync.connect)")
        try:
            work_of().wait(datetime.timedelta(seconds=self.timeout_s))
        except RuntimeError as exc:
            raise WeightSyncError(f"collective weight sync: {what} failed or timed out after {self.timeout_s:g} s "
                                  f"(rl.timeout_s): {str(exc).splitlines()[0] if str(exc) else exc!r}") from None

    def _broadcast(self, tensor: torch.Tensor, what: str) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = 0, 0
        self._run(what, lambda: self._group.broadcast([tensor], opts))

    def _all_ok(self, ok: bool) -> bool:
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=self._device)
        opts = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp.MIN
        self._run("the manifest check", lambda: self._group.allreduce([flag], opts))
        return bool(flag.item())

    def _broadcast_manifest(self, plan: Optional[List[BucketSpec]]) -> List[BucketSpec]:
        data = json.dumps([list(s) for s in plan]).encode() if plan is not None else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=self._device)
        self._broadcast(size, "the manifest size")
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self._device) if plan is not None else \
            torch.empty(int(size.item()), dtype=torch.uint8, device=self._device)
        self._broadcast(raw, "the manifest")
        return specs_from_rows(json.loads(raw.cpu().numpy().tobytes()))

    def send(self, buckets, plan, version, source):
        buckets = iter(buckets)
        try:
            if not source:
                return None
            self._broadcast_manifest(plan)
            if not self._all_ok(True):
                raise WeightSyncError(f"weight sync of version {version}: a rollout worker refused the manifest "
                                      "(its own error names the parameters)")
            for k, bucket in enumerate(buckets):
                self._broadcast(bucket.flat.to(self._device), f"bucket {k + 1}/{len(plan)}")
            return {"transport": self.name, "version": version}
        finally:
            for _ in buckets:  # every rank finishes the ZeRO-3 gathers, whatever happened here
                pass

    def receive(self, payload, params, held_version=None):
        manifest = self._broadcast_manifest(None)
        try:
            check_manifest(manifest, params, payload["version"], held_version)
        except WeightSyncError:
            self._all_ok(False)
            raise
        self._all_ok(True)
        for k, spec in enumerate(manifest):
            flat = torch.empty(sum(spec.numels), dtype=torch_dtype(spec.dtype), device=self._device)
            self._broadcast(flat, f"bucket {k + 1}/{len(manifest)}")
            yield WeightBucket(spec, flat)

    def close(self):
        group, self._group, self._store = self._group, None, None
        if group is not None and hasattr(group, "shutdown"):
            group.shutdown()
