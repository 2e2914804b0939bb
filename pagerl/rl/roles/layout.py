"""Where the RL roles run: the role groups a controller drives, and the function that makes them.

:class:`Roles` is what :class:`~pagerl.rl.controller.RLController` drives: the
trainer ranks, the rollout workers and the reward workers, each a group that
speaks :class:`~pagerl.rl.roles.groups.ActorGroup`'s call vocabulary, and what
to release at the end. A controller is given the function that builds them:
:func:`ray_roles` (the default: Ray actors, every role's resources reserved at
once in one placement group, :mod:`pagerl.rl.roles.placement`) or
:func:`pagerl.rl.roles.local.local_roles` (the same classes in the driver's
own process). Both take ``(recipe, run_dir, policy_dir, needs_critic,
resume_dir)``.

A role is given the sections of the recipe it reads, not the whole recipe:
:func:`rollout_args` and :func:`trainer_args` pick them, for both layouts.
The reward workers are the exception: they build the recipe's reward source,
which is made from the whole recipe (:mod:`pagerl.rl.roles.reward_workers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

from pagerl.rl import rl_seed
from pagerl.rl.roles.groups import ActorGroup
from pagerl.rl.roles.placement import plan_placement
from pagerl.rl.roles.reward_workers import RewardWorkerGroup
from pagerl.rl.roles.rollout import RolloutWorker
from pagerl.rl.roles.trainer import PolicyTrainerRank


@dataclass
class Roles:
    """The role groups a controller drives, and what to release when it is done."""

    trainers: Any
    rollouts: Any
    rewards: Any
    placement: Any = None

    def shutdown(self) -> None:
        for group in (self.rollouts, self.trainers):
            try:
                group.kill()
            except Exception:  # already gone
                pass
        self.rewards.shutdown()
        if self.placement is not None:
            self.placement.remove()


def rollout_args(recipe: Any, policy_dir: str) -> Tuple[Any, ...]:
    """:class:`~pagerl.rl.roles.rollout.RolloutWorker`'s arguments: ``rl.rollout``, ``model``, the policy
    directory and ``rl.timeout_s``."""
    return (recipe.rl.rollout, recipe.model, str(policy_dir), float(recipe.rl.timeout_s))


def trainer_args(recipe: Any, policy_dir: str, world_size: int, needs_critic: bool,
                 resume_dir: Optional[Path]) -> Tuple[Any, ...]:
    """:class:`~pagerl.rl.roles.trainer.PolicyTrainerRank`'s arguments: ``rl``, ``model``, ``distributed``,
    the RL seed (:func:`pagerl.rl.rl_seed`), then the policy directory, the ranks, whether it trains a
    critic and the RL checkpoint to resume from (or None)."""
    return (recipe.rl, recipe.model, recipe.distributed, rl_seed(recipe), str(policy_dir), int(world_size),
            bool(needs_critic), None if resume_dir is None else str(resume_dir))


def ray_roles(recipe: Any, run_dir: Path, policy_dir: str, needs_critic: bool, resume_dir: Optional[Path]) -> Roles:
    """Every role as Ray actors, reserved together in one placement group (``rl.*``, ``rewards.*``)."""
    cfg = recipe.rl
    timeout, ranks = float(cfg.timeout_s), int(cfg.trainer.num_ranks)
    placement = plan_placement({
        "trainer": (ranks, cfg.trainer.cpus_per_rank, cfg.trainer.gpus_per_rank),
        "rollout": (cfg.rollout.num_workers, cfg.rollout.cpus_per_worker, cfg.rollout.gpus_per_worker),
        "reward": (recipe.rewards.num_workers, recipe.rewards.cpus_per_worker, 0.0),
    }, timeout, name="")
    trainers = ActorGroup("trainer", PolicyTrainerRank, ranks, num_cpus=cfg.trainer.cpus_per_rank,
                          num_gpus=cfg.trainer.gpus_per_rank, placement=placement.of("trainer"),
                          init_args=trainer_args(recipe, policy_dir, ranks, needs_critic, resume_dir),
                          timeout_s=timeout)
    rollouts = ActorGroup("rollout", RolloutWorker, cfg.rollout.num_workers,
                          num_cpus=cfg.rollout.cpus_per_worker, num_gpus=cfg.rollout.gpus_per_worker,
                          max_restarts=int(cfg.rollout.max_restarts), placement=placement.of("rollout"),
                          init_args=rollout_args(recipe, policy_dir), timeout_s=timeout)
    rewards = RewardWorkerGroup(recipe, run_dir, placement=placement.of("reward"))
    return Roles(trainers, rollouts, rewards, placement)
