"""The RL roles in the driver's own process, without Ray: the single-process reference loop.

:func:`local_roles` builds the same role classes the Ray stage runs
(:class:`~pagerl.rl.roles.trainer.PolicyTrainerRank` as one rank,
:class:`~pagerl.rl.roles.rollout.RolloutWorker`, :class:`~pagerl.rl.roles.reward_workers.RewardWorker`)
as plain objects, given the same sections of the recipe (:func:`~pagerl.rl.roles.layout.rollout_args`,
:func:`~pagerl.rl.roles.layout.trainer_args`), behind :class:`LocalGroup`, which speaks the vocabulary of
:class:`~pagerl.rl.roles.groups.ActorGroup` (``call``, ``call_each``, ``call_one``,
``async_*`` and ``wait``) by calling the methods directly. An
:class:`~pagerl.rl.controller.RLController` given ``build_roles=local_roles``
therefore runs its own step, line for line, on the same model and batch; what
differs is only how a call reaches its role: no Ray, no serialisation, no
placement, and a weight sync that hands tensors over in memory
(``rl.sync.transport=in_process``). The throughput benchmark
(``benchmarks/bench_rl.py``) measures the distributed loop against it, so the
gap between the two is the cost of orchestration.

A call started with ``async_*`` runs at once, to its end, so overlap
(``rl.overlap``) changes nothing here; a role is never restarted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from pagerl.rl.roles.groups import CallVocabulary, RoleDiedError
from pagerl.rl.roles.layout import Roles, rollout_args, trainer_args
from pagerl.rl.roles.reward_workers import RewardWorker
from pagerl.rl.roles.rollout import RolloutWorker
from pagerl.rl.roles.trainer import PolicyTrainerRank


class _Answer:
    """What a local call returned or raised, standing in for a Ray object reference."""

    def __init__(self, value: Any = None, error: Optional[BaseException] = None) -> None:
        self.value, self.error = value, error


class LocalGroup(CallVocabulary):
    """Instances of one role's class, called in this process with ActorGroup's vocabulary."""

    def __init__(self, name: str, instances: Sequence[Any]) -> None:
        self.name = name
        self._instances: List[Any] = list(instances)

    def __len__(self) -> int:
        return len(self._instances)

    @property
    def actors(self) -> List[Any]:
        return list(self._instances)

    def _run(self, index: int, method: str, args: Sequence[Any], kwargs: Dict[str, Any]) -> _Answer:
        if not self._instances:
            raise RoleDiedError(f"role {self.name!r}: the group was shut down (kill() was called)", self.name)
        try:
            return _Answer(getattr(self._instances[index], method)(*args, **kwargs))
        except Exception as exc:  # handed to wait(), as a remote error would be
            return _Answer(error=exc)

    def async_call(self, method: str, *args: Any, **kwargs: Any) -> List[_Answer]:
        return [self._run(i, method, args, kwargs) for i in range(len(self._instances))]

    def async_call_each(self, method: str, per_actor_args: Sequence[Any], **kwargs: Any) -> List[_Answer]:
        if len(per_actor_args) != len(self._instances):
            raise ValueError(f"role {self.name!r}: {len(per_actor_args)} argument tuples for "
                             f"{len(self._instances)} instances")
        return [self._run(i, method, tuple(a), kwargs) for i, a in enumerate(per_actor_args)]

    def async_call_one(self, index: int, method: str, *args: Any, **kwargs: Any) -> _Answer:
        return self._run(index, method, args, kwargs)

    def wait(self, refs: Sequence[_Answer]) -> List[Any]:
        for answer in refs:
            if answer.error is not None:
                raise answer.error
        return [answer.value for answer in refs]

    def await_restart(self, index: int) -> None:
        raise RoleDiedError(f"role {self.name!r}: an in-process role is never restarted", self.name, index)

    def kill(self) -> None:
        for instance in self._instances:
            if hasattr(instance, "shutdown"):
                instance.shutdown()
        self._instances = []


class LocalRewards:
    """One :class:`~pagerl.rl.roles.reward_workers.RewardWorker` in this process, with the group's interface
    (given the whole recipe, as the worker is: its reward source is built from it)."""

    def __init__(self, recipe: Any, run_dir: Path) -> None:
        self.worker = RewardWorker(recipe, str(run_dir))
        self.stats: Dict[str, float] = {"pages": 0, "chunks": 0, "retries": 0, "workers_lost": 0, "seconds": 0.0}

    def wait_ready(self, timeout_s: float = 0.0) -> List[Dict[str, Any]]:
        return [self.worker.ready()]

    def score(self, requests, pages, valid=None):
        started = time.perf_counter()
        scored = self.worker.score(list(requests), [list(p) for p in pages], None if valid is None else list(valid))
        self.stats["pages"] += len(pages)
        self.stats["chunks"] += 1
        self.stats["seconds"] += time.perf_counter() - started
        return scored

    def peak_memory_mb(self) -> List[Dict[str, float]]:
        return [self.worker.peak_memory_mb()]

    def take_compute_spans(self):
        return self.worker.take_compute_spans()

    def shutdown(self) -> None:
        pass


def local_roles(recipe: Any, run_dir: Path, policy_dir: str, needs_critic: bool, resume_dir: Optional[Path]):
    """One trainer rank, one rollout worker and one reward worker, all in this process.

    The recipe must ask for one trainer rank, one rollout worker and the
    ``in_process`` weight-sync transport (the benchmark sets them).
    """

    cfg = recipe.rl
    asked = (cfg.trainer.num_ranks, cfg.rollout.num_workers, recipe.rewards.num_workers, cfg.sync.transport)
    if asked != (1, 1, 1, "in_process"):
        raise ValueError("local_roles runs one trainer rank, one rollout worker and one reward worker with the "
                         "in_process weight sync; the recipe has rl.trainer.num_ranks, rl.rollout.num_workers, "
                         f"rewards.num_workers, rl.sync.transport = {asked}")
    trainer = PolicyTrainerRank(*trainer_args(recipe, policy_dir, 1, needs_critic, resume_dir))
    rollout = RolloutWorker(*rollout_args(recipe, policy_dir))
    return Roles(LocalGroup("trainer", [trainer]), LocalGroup("rollout", [rollout]), LocalRewards(recipe, run_dir))
