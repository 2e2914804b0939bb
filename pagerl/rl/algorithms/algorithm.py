"""The RL algorithms a recipe can pick (``rl.algorithm``), and the check of
every ``rl.*`` key this package reads.

An algorithm is which advantage estimator it uses and what it needs around
it: a critic (a value head trained with the clipped value loss) or groups of
pages per request (``rl.rollout.samples_per_request >= 2``, since a group of
one page gives zero advantages in grpo and rloo). The clipped surrogate, the
KL handling and the loss aggregation are shared by all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pagerl.config.schema import RLConfig
from pagerl.registry import Registry, lookup, register
from pagerl.rl.algorithms.advantage_baselines import BASELINE_SCOPES
from pagerl.rl.algorithms.advantages import ADVANTAGE_ESTIMATORS, SLOT_CREDITS, AdvantageEstimator
from pagerl.rl.algorithms.kl import KL_CONTROLLERS, KL_ESTIMATORS
from pagerl.rl.algorithms.losses import LOSS_AGGREGATIONS

ALGORITHMS = Registry("rl.algorithm")
KL_MODES = ("reward", "loss")


@dataclass(frozen=True)
class Algorithm:
    """``advantage`` is a name in ``ADVANTAGE_ESTIMATORS``."""

    name: str
    advantage: str
    needs_critic: bool
    needs_groups: bool

    @property
    def estimator(self) -> AdvantageEstimator:
        return lookup(ADVANTAGE_ESTIMATORS, self.advantage)


for _algorithm in (
    Algorithm("ppo", "gae", needs_critic=True, needs_groups=False),
    Algorithm("grpo", "grpo", needs_critic=False, needs_groups=True),
    Algorithm("reinforce_pp", "reinforce_pp", needs_critic=False, needs_groups=False),
    Algorithm("reinforce_pp_baseline", "reinforce_pp_baseline", needs_critic=False, needs_groups=False),
    Algorithm("rloo", "rloo", needs_critic=False, needs_groups=True),
):
    register(ALGORITHMS, _algorithm.name)(_algorithm)


def resolve_algorithm(cfg: RLConfig) -> Algorithm:
    """The algorithm of ``cfg.algorithm`` after checking every rl key used here.

    ValueError naming the key at fault, so a bad recipe stops before any
    worker starts rather than at the first update.
    """
    algorithm = lookup(ALGORITHMS, cfg.algorithm)
    lookup(ADVANTAGE_ESTIMATORS, algorithm.advantage)
    lookup(LOSS_AGGREGATIONS, cfg.loss_agg)
    lookup(BASELINE_SCOPES, cfg.baseline_scope)
    lookup(SLOT_CREDITS, cfg.slot_credit)
    lookup(KL_ESTIMATORS, cfg.kl.estimator)
    lookup(KL_CONTROLLERS, cfg.kl.controller)
    if cfg.kl.mode not in KL_MODES:
        raise ValueError(f"rl.kl.mode: unknown {cfg.kl.mode!r}; expected one of {list(KL_MODES)}")
    if algorithm.needs_groups and cfg.rollout.samples_per_request < 2:
        raise ValueError(
            f"rl.rollout.samples_per_request: {cfg.algorithm} compares the pages sampled for one "
            f"request, so it needs >= 2, got {cfg.rollout.samples_per_request}"
        )
    checks = (
        ("rl.clip_low", cfg.clip_low, 0.0 <= cfg.clip_low < 1.0, "in [0, 1)"),
        ("rl.clip_high", cfg.clip_high, cfg.clip_high >= 0.0, ">= 0"),
        ("rl.gamma", cfg.gamma, 0.0 <= cfg.gamma <= 1.0, "in [0, 1]"),
        ("rl.lam", cfg.lam, 0.0 <= cfg.lam <= 1.0, "in [0, 1]"),
        ("rl.kl.coef", cfg.kl.coef, cfg.kl.coef >= 0.0, ">= 0"),
    )
    for key, value, ok, expected in checks:
        if not ok:
            raise ValueError(f"{key}: expected {expected}, got {value}")
    return algorithm
