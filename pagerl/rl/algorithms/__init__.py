"""RL algorithms of the page policy: KL estimators and controllers, losses,
advantage estimators with per-slot credit, and the algorithm registry.

Pure tensor code (CPU or GPU, no Ray): the RL stage's roles call it on the
experience they hold. Every choice a recipe makes is a name in one of the
registries exported here; :func:`resolve_algorithm` checks them all.
"""

from pagerl.config.rules import Finding, rule
from pagerl.config.schema import RecipeConfig
from pagerl.registry import Registry, lookup, register
from pagerl.rl.algorithms.advantage_baselines import BASELINE_SCOPES, SlotBaseline
from pagerl.rl.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    SLOT_CREDITS,
    AdvantageInputs,
    advantage_options,
    compute_advantages,
    gae,
    grpo,
    reinforce_pp,
    reinforce_pp_baseline,
    rloo,
)
from pagerl.rl.algorithms.algorithm import ALGORITHMS, KL_MODES, Algorithm, resolve_algorithm
from pagerl.rl.algorithms.kl import (
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    estimate_kl,
    k1,
    k2,
    k3,
    kl_penalty,
    make_kl_controller,
)
from pagerl.rl.algorithms.losses import (
    LOSS_AGGREGATIONS,
    aggregate_loss,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_bonus,
    kl_loss,
    masked_mean,
    token_entropy,
)
from pagerl.rl.algorithms.off_policy import CORRECTIONS

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "ALGORITHMS",
    "BASELINE_SCOPES",
    "CORRECTIONS",
    "KL_CONTROLLERS",
    "KL_ESTIMATORS",
    "KL_MODES",
    "LOSS_AGGREGATIONS",
    "SLOT_CREDITS",
    "AdaptiveKLController",
    "AdvantageInputs",
    "Algorithm",
    "FixedKLController",
    "Registry",
    "SlotBaseline",
    "advantage_options",
    "aggregate_loss",
    "clipped_policy_loss",
    "clipped_value_loss",
    "compute_advantages",
    "entropy_bonus",
    "estimate_kl",
    "gae",
    "grpo",
    "k1",
    "k2",
    "k3",
    "kl_loss",
    "kl_penalty",
    "lookup",
    "make_kl_controller",
    "masked_mean",
    "register",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "resolve_algorithm",
    "rloo",
    "token_entropy",
]


@rule
def _rl_algorithm(r: RecipeConfig) -> Finding:
    """When the recipe trains RL, ``rl.algorithm`` resolves with the estimator, baseline and KL settings
    it is combined with (each name is checked against its registry by the recipe loader)."""
    c = r.rl
    if "rl" in r.run.stages:
        try:
            resolve_algorithm(c)
        except ValueError as exc:
            text = str(exc)
            key = text.split(":", 1)[0] if text.startswith("rl.") else "rl.algorithm"
            return key, text
    return None
