"""Reserving the resources of every RL role at once: one placement group, one bundle per actor.

Why one group for all roles: if each role asked Ray for its actors on its
own, a cluster that fits every role *but not all of them together* would
start some actors of each and leave the rest pending forever. The trainer
ranks would then wait in their first collective for a rank that never
starts, the rollout workers for weights that never come: a deadlock that
looks like a slow run. A placement group is reserved atomically (all bundles
or none), so here the run either gets everything it asked for within
``rl.timeout_s`` or stops at once with an error that lists what every role
asked for and what the cluster has.

Why wait out the timeout rather than compare with the cluster's size right
away: an autoscaling cluster adds nodes for a pending placement group, so
"more than the cluster has now" is not yet "never". Strategy PACK puts the
bundles on as few nodes as possible (rollout next to trainer rank 0 keeps the
weight sync local) but spreads them when one node cannot hold them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Tuple

from pagerl.errors import PageRLError


class PlacementError(PageRLError):
    """The resources the RL roles asked for could not be reserved."""


# role name -> (actors, CPUs per actor, GPUs per actor)
RoleAsk = Tuple[int, float, float]


@dataclass
class RolePlacement:
    """One placement group holding every role's bundles, and the bundle range of each role."""

    group: Any
    ranges: Dict[str, range] = field(default_factory=dict)

    def of(self, role: str) -> Tuple[Any, int]:
        """``(placement group, first bundle index)`` of ``role``: what :class:`ActorGroup` takes."""
        if role not in self.ranges:
            raise KeyError(f"no bundles were reserved for role {role!r} (roles: {', '.join(self.ranges)})")
        return self.group, self.ranges[role].start

    def remove(self) -> None:
        """Give the reserved resources back to the cluster (the roles' actors end with it)."""
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.group)


def _bundle(role: str, cpus: float, gpus: float) -> Dict[str, float]:
    if cpus < 0 or gpus < 0:
        raise PlacementError(f"role {role!r} asks for negative resources ({cpus} CPUs, {gpus} GPUs)")
    bundle = {k: float(v) for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}
    if not bundle:
        raise PlacementError(
            f"role {role!r} asks for 0 CPUs and 0 GPUs per actor; a reserved bundle needs some resource "
            "(give the role a fraction of a CPU)"
        )
    return bundle


def _fmt(resources: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"


def describe_asks(roles: Mapping[str, RoleAsk]) -> str:
    """``"rollout: 1 x {CPU: 0.5}; trainer: 2 x {CPU: 0.5}; total {CPU: 1.5}"``."""
    parts, total = [], {"CPU": 0.0, "GPU": 0.0}
    for role, (count, cpus, gpus) in roles.items():
        parts.append(f"{role}: {count} x {_fmt(_bundle(role, cpus, gpus))}")
        total["CPU"] += count * cpus
        total["GPU"] += count * gpus
    return "; ".join(parts) + f"; total {_fmt({k: v for k, v in total.items() if v > 0 or k == 'CPU'})}"


def plan_placement(
    roles: Mapping[str, RoleAsk],
    timeout_s: float,
    *,
    strategy: str = "PACK",
    name: str = "",
    timeout_key: str = "rl.timeout_s",
) -> RolePlacement:
    """Reserve one bundle per actor of every role in ONE placement group, within ``timeout_s``.

    ``roles`` maps a role name to ``(actors, CPUs per actor, GPUs per actor)``
    (fractions allowed). Bundles are laid out role after role in the order
    given; the result says which range belongs to which role. On timeout the
    half-made reservation is removed and :class:`PlacementError` lists what
    every role asked for, what the cluster has and what is free.
    """
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util.placement_group import placement_group, remove_placement_group

    if not roles:
        raise PlacementError("plan_placement: no roles to place")
    bundles, ranges = [], {}
    for role, (count, cpus, gpus) in roles.items():
        if int(count) < 1:
            raise PlacementError(f"role {role!r} asks for {count} actors; every role needs at least one")
        start = len(bundles)
        bundles.extend(_bundle(role, cpus, gpus) for _ in range(int(count)))
        ranges[role] = range(start, len(bundles))
    group = placement_group(bundles, strategy=strategy, name=name)
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except GetTimeoutError:
        remove_placement_group(group)
        keys = ("CPU", "GPU")
        have = {k: float(ray.cluster_resources().get(k, 0.0)) for k in keys}
        free = {k: float(ray.available_resources().get(k, 0.0)) for k in keys}
        raise PlacementError(
            f"could not reserve the RL roles' resources within {timeout_s:g} s ({timeout_key}={timeout_s:g}): "
            f"asked {describe_asks(roles)}; the cluster has {_fmt(have)}, free now {_fmt(free)}. "
            "Lower the roles' counts or per-actor CPUs/GPUs (rl.rollout.*, rl.trainer.*, rewards.*) or "
            "use a larger cluster"
        ) from None
    return RolePlacement(group, ranges)
