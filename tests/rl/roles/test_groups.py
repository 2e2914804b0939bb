"""Actor groups and placement on a real local Ray cluster: results in rank order, a call that
outlives the timeout fails naming the group, actor, method and recipe key, a dead actor is
named as such, method errors arrive as themselves, and an unsatisfiable placement fails fast
with what every role asked for and what the cluster has."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pagerl.errors import PageRLError
from pagerl.rl.roles.groups import ActorGroup, RoleDiedError, RoleTimeoutError, wait_groups
from pagerl.rl.roles.placement import PlacementError, plan_placement


class Probe:
    """A tiny actor: answers who it is, sleeps, fails on request."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def whoami(self, x: int = 0, scale: int = 1):
        import ray

        return self.tag, x * scale, ray.get_runtime_context().get_placement_group_id()

    def env(self, key: str):
        return os.environ.get(key)

    def pid(self) -> int:
        return os.getpid()

    def sleep(self, seconds: float) -> str:
        time.sleep(seconds)
        return "woke"

    def refuse(self) -> None:
        raise PageRLError("refused: rl.something is wrong")


def group(name: str, count: int, **kw) -> ActorGroup:
    return ActorGroup(name, Probe, count, num_cpus=0.1, init_args=("t",), **kw)


def test_results_come_back_in_rank_order(local_ray):
    with group("probes", 3, env={"PAGERL_PROBE": "yes"}) as g:
        g.wait_ready()
        assert len(g) == 3
        assert [r[:2] for r in g.call("whoami", 2, scale=5)] == [("t", 10)] * 3
        assert [r[1] for r in g.call_each("whoami", [(1,), (2, 10), 3])] == [1, 20, 3]
        assert g.call_one(2, "whoami", 7)[:2] == ("t", 7)
        refs = g.async_call("whoami", 4)
        assert [r[1] for r in g.wait(refs[::-1])] == [4, 4, 4]
        assert g.call("env", "PAGERL_PROBE") == ["yes"] * 3
        assert g.call("env", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == ["0"] * 3  # still pinned to loopback
        assert len(set(g.call("pid"))) == 3
        with pytest.raises(ValueError, match="2 argument tuples for 3 actors"):
            g.call_each("whoami", [(1,), (2,)])
        with pytest.raises(AttributeError, match="role 'probes': its actors have no method 'nope'"):
            g.call("nope")


def test_a_call_past_the_timeout_names_group_actor_method_and_key(local_ray):
    with group("rollout", 2, timeout_s=60) as g:
        g.wait_ready()  # starting a process is not what is timed here
        g.timeout_s = 1.5
        refs = [g.async_call_one(0, "whoami"), g.async_call_one(1, "sleep", 30)]
        started = time.monotonic()
        with pytest.raises(RoleTimeoutError) as err:
            g.wait(refs)
        took = time.monotonic() - started
        assert took < 5, took
        message = str(err.value)
        assert "rollout[1].sleep()" in message and "rollout[0]" not in message
        assert "1.5 s" in message and "rl.timeout_s" in message


def test_a_dead_actor_is_named_and_method_errors_arrive_as_themselves(local_ray):
    with group("trainer", 2) as g:
        pids = g.call("pid")
        with pytest.raises(PageRLError, match="refused: rl.something is wrong"):
            g.call_one(0, "refuse")
        os.kill(pids[1], signal.SIGKILL)
        with pytest.raises(RoleDiedError, match=r"role 'trainer': actor 1 died before whoami\(\) returned"):
            g.call("whoami")
        assert g.call_one(0, "whoami")[0] == "t"  # the survivor still answers
    with pytest.raises(RoleDiedError, match="shut down"):
        g.call("whoami")


def test_wait_groups_raises_the_first_failure_of_either_side(local_ray):
    with group("trainer", 1) as trainers, group("rollout", 1, timeout_s=30) as rollouts:
        trainers.wait_ready()
        rollouts.wait_ready()
        slow = rollouts.async_call("sleep", 6)
        failing = trainers.async_call("refuse")
        started = time.monotonic()
        with pytest.raises(PageRLError, match="refused"):
            wait_groups((rollouts, slow), (trainers, failing))
        assert time.monotonic() - started < 4  # not after the slow side is done
        a, b = wait_groups((trainers, trainers.async_call("whoami", 1)),
                           (rollouts, [rollouts.async_call_one(0, "pid")]))
        assert a[0][1] == 1 and isinstance(b[0], int)


def test_roles_share_one_placement_group(local_ray):
    placement = plan_placement({"trainer": (2, 0.25, 0), "rollout": (1, 0.5, 0)}, timeout_s=30)
    try:
        assert placement.ranges == {"trainer": range(0, 2), "rollout": range(2, 3)}
        assert placement.of("rollout")[1] == 2
        t = ActorGroup("trainer", Probe, 2, num_cpus=0.25, placement=placement.of("trainer"), init_args=("tr",))
        r = ActorGroup("rollout", Probe, 1, num_cpus=0.5, placement=placement.of("rollout"), init_args=("ro",))
        with t, r:
            groups = {x[2] for x in t.call("whoami") + r.call("whoami")}
            assert groups == {placement.group.id.hex()}
    finally:
        placement.remove()


def test_an_unsatisfiable_placement_fails_fast_with_the_resource_listing(local_ray):
    import ray

    cpus = ray.cluster_resources()["CPU"]
    started = time.monotonic()
    with pytest.raises(PlacementError) as err:
        plan_placement({"trainer": (2, cpus, 0), "rollout": (1, 0.5, 0)}, timeout_s=2)
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert f"trainer: 2 x {{CPU: {cpus:g}}}" in message and "rollout: 1 x {CPU: 0.5}" in message
    assert f"total {{CPU: {2 * cpus + 0.5:g}}}" in message and f"the cluster has {{CPU: {cpus:g}, GPU: 0}}" in message
    assert "rl.timeout_s=2" in message
    # the half-made reservation was given back: a placement that fits goes through right after
    plan_placement({"rollout": (1, 0.5, 0)}, timeout_s=30).remove()
    with pytest.raises(PlacementError, match="0 CPUs and 0 GPUs"):
        plan_placement({"reward": (1, 0, 0)}, timeout_s=1)
