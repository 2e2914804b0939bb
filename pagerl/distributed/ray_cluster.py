"""Connecting to Ray: an existing cluster, or a private one on loopback.

``distributed.ray_address`` empty starts a single-node cluster for this
process. Such a cluster must not listen on the machine's external address (a
laptop, a CI runner, a shared dev box), so it is pinned to 127.0.0.1: Ray binds
to loopback when it is told the cluster is single-node, which is what
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` means to it (the name is Ray's; on Linux
it only switches the node address to loopback). Inside ``ray job submit`` the
address is ``auto`` (or anything Ray accepts) and the cluster's own settings,
token authentication included, apply unchanged.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

log = logging.getLogger(__name__)

# Ray's own variable; with it off, a local cluster binds to loopback only.
_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def connect(address: str = "", num_cpus: Optional[int] = None) -> bool:
    """Make sure this process is connected to Ray.

    Returns True when this call started a local cluster (the caller then owns
    it and should :func:`shutdown` it), False when an existing connection or
    cluster is used. Inside a ``ray job submit`` job, the job's cluster is used
    whatever ``address`` says, since the job already runs on it.
    """
    _pin_local_cluster_to_loopback_if_needed(address)
    import ray

    if ray.is_initialized():
        return False
    in_job = bool(os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_ADDRESS"))
    if address or in_job:
        ray.init(address=address or "auto", log_to_driver=True)
        return False
    ray.init(
        address="local",  # a new private cluster, never one a `ray start` left running
        num_cpus=num_cpus,
        # The dashboard serves Ray's state API, which Ray Train's controller
        # polls; bound to loopback like the rest of the local cluster.
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
        # Workers inherit the driver's environment: keep them on loopback too.
        runtime_env={"env_vars": {_SINGLE_NODE_ENV: "0"}},
    )
    log.info("started a local Ray cluster on loopback: %s", ray.get_runtime_context().gcs_address)
    return True


def _pin_local_cluster_to_loopback_if_needed(address: str) -> None:
    """Set Ray's single-node switch before a local cluster starts.

    Ray reads the variable when it is imported, and the processes it spawns
    (GCS, raylet, workers) read it from the environment they inherit; when
    this process imported Ray already, its module constant is updated too.
    """
    if address or os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_ADDRESS"):
        return
    os.environ[_SINGLE_NODE_ENV] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def shutdown(started_here: bool) -> None:
    import ray

    if started_here and ray.is_initialized():
        ray.shutdown()
