"""``object_store``: buckets through Ray's object store.

Rank 0 ``ray.put``s each bucket as it is gathered; each receiver gets the
bucket references and the manifest in ONE remote call per sync (never one per
parameter or bucket) and fetches the buckets one at a time, so its heap holds
one bucket next to its model. The object store holds the model once until
every receiver has it (Ray spills to disk under pressure). No setup; works
wherever Ray does.
"""

from __future__ import annotations

import ray
from ray.exceptions import GetTimeoutError

from pagerl.rl.weight_sync.buckets import WeightBucket, WeightSyncError, check_manifest, specs_from_rows
from pagerl.rl.weight_sync.transport import Transport, register_transport


@register_transport("object_store")
class ObjectStoreTransport(Transport):
    """Buckets through Ray's object store: one ``ray.put`` per bucket, one call per receiver."""

    def send(self, buckets, plan, version, source):
        refs = []
        for bucket in buckets:
            if source:
                refs.append(ray.put(bucket.flat))
        if not source:
            return None
        return {"transport": self.name, "version": version, "manifest": [tuple(s) for s in plan], "buckets": refs}

    def receive(self, payload, params, held_version=None):
        manifest = specs_from_rows(payload["manifest"])
        if len(manifest) != len(payload["buckets"]):
            raise WeightSyncError(f"weight sync of version {payload['version']}: {len(manifest)} buckets in the "
                                  f"manifest, {len(payload['buckets'])} sent")
        check_manifest(manifest, params, payload["version"], held_version)
        for k, (spec, ref) in enumerate(zip(manifest, payload["buckets"])):
            try:
                flat = ray.get(ref, timeout=self.timeout_s)
            except GetTimeoutError:
                raise WeightSyncError(
                    f"weight sync of version {payload['version']}: bucket {k + 1}/{len(manifest)} did not arrive "
                    f"from the object store within {self.timeout_s:g} s (rl.timeout_s)"
                ) from None
            yield WeightBucket(spec, flat)
