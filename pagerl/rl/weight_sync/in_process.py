"""``in_process``: the flat buckets themselves in the payload, for roles in one process."""

from __future__ import annotations

from pagerl.rl.weight_sync.buckets import WeightBucket, check_manifest, specs_from_rows
from pagerl.rl.weight_sync.transport import Transport, register_transport


@register_transport("in_process")
class InProcessTransport(Transport):
    """The flat buckets themselves in the payload: for a trainer and rollout workers in one process
    (:mod:`pagerl.rl.roles.local`), where handing over a tensor is free. Through Ray it would pickle every
    bucket into one call's arguments: use ``object_store`` there."""

    def send(self, buckets, plan, version, source):
        flats = [bucket.flat for bucket in buckets]
        if not source:
            return None
        return {"transport": self.name, "version": version, "manifest": [tuple(s) for s in plan], "buckets": flats}

    def receive(self, payload, params, held_version=None):
        manifest = specs_from_rows(payload["manifest"])
        check_manifest(manifest, params, payload["version"], held_version)
        for spec, flat in zip(manifest, payload["buckets"]):
            yield WeightBucket(spec, flat)
