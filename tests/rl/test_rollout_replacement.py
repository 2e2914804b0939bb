"""One helper asks the rollout workers again after a lost process (RLController._ask_rollouts), without Ray.

The controller's pages, held-out pages and weight sync all go through it. A
fake rollout group answers from a script, and the replacement (Ray's restart
and the resync, which tests/rl/test_rl_stage.py exercises with SIGKILL) is
recorded instead of run: what is checked here is which worker is replaced,
how often, what is asked again (the same arguments, so the same seed) and the
error once ``rl.rollout.max_restarts`` is spent.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any, Dict, List

import pytest

from pagerl.config.schema import RLConfig, RolloutConfig, WeightSyncConfig
from pagerl.rl.controller import RLController, RLError
from pagerl.rl.roles.groups import RoleDiedError
from pagerl.rl.roles.rollout import RolloutVersionError


def _died(role: str, index: int) -> RoleDiedError:
    return RoleDiedError(f"role {role!r}: actor {index} died before generate() returned", role, index)


class ScriptedRollouts:
    """Rollout workers whose answers are scripted: per worker, what each wait or call gives (an
    exception is raised); ``calls`` records what was asked again."""

    def __init__(self, script: Dict[int, List[Any]]) -> None:
        self.script = {w: list(outcomes) for w, outcomes in script.items()}
        self.calls: List[tuple] = []

    def __len__(self) -> int:
        return len(self.script)

    def _next(self, worker: int) -> Any:
        outcome = self.script[worker].pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def wait(self, refs):
        return [self._next(ref) for ref in refs]  # a "reference" is the worker's index here

    def call_one(self, worker: int, method: str, *args: Any) -> Any:
        self.calls.append((worker, method, *args))
        return self._next(worker)


def _controller(rollouts: Any, max_restarts: int = 2, replace_errors: List[BaseException] = ()):
    """An RLController with only what the helper reads: rl.rollout.max_restarts (and rl.sync.verify off),
    the version, the rollout group, and a recording stand-in for the replacement (the resync's figures
    are its answer)."""
    controller = object.__new__(RLController)
    controller.cfg = dataclasses.replace(RLConfig(), rollout=RolloutConfig(max_restarts=max_restarts),
                                         sync=WeightSyncConfig(verify=False))
    controller.version = 5
    controller.rollouts = rollouts
    controller.replaced = []
    pending = list(replace_errors)

    def replace(worker: int, step: int):
        controller.replaced.append((worker, step))
        if pending:
            raise pending.pop(0)
        return {"resynced": controller.version}

    controller._replace_rollout = replace
    return controller


ARGS = [(["r0", "r1"], 1001), (["r2", "r3"], 1002)]  # per worker: its requests and its seed


def test_a_lost_worker_is_replaced_and_asked_again_with_the_same_seed():
    rollouts = ScriptedRollouts({0: ["pages 0"], 1: [_died("rollout", 1), "pages 1, redone"]})
    controller = _controller(rollouts)
    answers = controller._answers("generate", [0, 1], ARGS, 7, "rl step 7")
    assert answers == ["pages 0", "pages 1, redone"]
    assert controller.replaced == [(1, 7)]
    assert rollouts.calls == [(1, "generate", ["r2", "r3"], 1002, 5)]  # same requests and seed, current version


def test_a_call_that_reached_the_restarted_process_before_its_resync_replaces_the_worker_asked():
    version_error = RolloutVersionError("rollout worker 0 holds policy version 0, asked to generate with version 5")
    rollouts = ScriptedRollouts({0: [version_error, ["held-out pages"]], 1: [["more"]]})
    controller = _controller(rollouts)
    answers = controller._answers("heldout_pages", [0, 1], ARGS, 3, "rl held-out evaluation of policy version 5")
    assert answers == [["held-out pages"], ["more"]]
    assert controller.replaced == [(0, 3)]
    assert rollouts.calls == [(0, "heldout_pages", ["r0", "r1"], 1001, 5)]


def test_out_of_restarts_the_error_names_the_step_the_worker_and_the_key():
    rollouts = ScriptedRollouts({0: [_died("rollout", 0)] * 3, 1: ["unused"]})
    controller = _controller(rollouts, max_restarts=2)
    with pytest.raises(RLError, match=r"^rl step 7: rollout worker 0 was lost 3 times "
                                      r"\(rl\.rollout\.max_restarts=2\): role 'rollout': actor 0 died") as caught:
        controller._answers("generate", [0, 1], ARGS, 7, "rl step 7")
    assert isinstance(caught.value.__cause__, RoleDiedError)
    assert controller.replaced == [(0, 7), (0, 7)] and len(rollouts.calls) == 2
    held = _controller(ScriptedRollouts({0: [_died("rollout", 0)]}), max_restarts=0)
    with pytest.raises(RLError, match=r"^rl held-out evaluation of policy version 5: rollout worker 0 was lost "
                                      r"1 times \(rl\.rollout\.max_restarts=0\)"):
        held._answers("heldout_pages", [0], ARGS[:1], 3, "rl held-out evaluation of policy version 5")
    assert held.replaced == []


def test_another_roles_death_is_not_the_helpers_to_handle():
    trainer = _died("trainer", 1)
    controller = _controller(ScriptedRollouts({0: [trainer]}))
    with pytest.raises(RoleDiedError) as caught:
        controller._answers("generate", [0], ARGS[:1], 2, "rl step 2")
    assert caught.value is trainer and controller.replaced == []


def test_the_weight_sync_answers_with_the_resync_of_the_worker_its_error_names():
    attempts = []

    def sync_once():
        attempts.append(1)
        raise _died("rollout", 1)

    controller = _controller(ScriptedRollouts({0: [], 1: []}))
    controller.sync = SimpleNamespace(sync=lambda version: sync_once())
    assert controller._sync(4) == ({"resynced": 6}, None)  # the next version, resynced; no probe asked for
    assert attempts == [1] and controller.replaced == [(1, 4)]
    # a loss during the replacement (its resync) counts as one more, and the worker it names is replaced
    stubborn = _controller(ScriptedRollouts({0: [], 1: []}), max_restarts=2,
                           replace_errors=[_died("rollout", 0), _died("rollout", 1)])
    stubborn.sync = SimpleNamespace(sync=lambda version: sync_once())
    with pytest.raises(RLError, match=r"^rl step 4: the weight sync lost rollout workers 3 times "
                                      r"\(rl\.rollout\.max_restarts=2\): role 'rollout': actor 1 died"):
        stubborn._sync(4)
    assert stubborn.replaced == [(1, 4), (0, 4)]
