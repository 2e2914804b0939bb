"""The stages of a run, one file each, in the order the pipeline runs them.

Importing this package registers every stage (:mod:`pagerl.stages.base`
describes the shape they share) and puts :data:`STAGES` in :data:`ORDER`, the
order the pipeline runs them in and ``run.stages`` must follow. The rllib
baseline comes before the language-model stages, so the eval stage compares
each of their policies with it. A new stage is a new module here, imported
below and named in :data:`ORDER`.
"""

from pagerl.config.rules import Finding, rule
from pagerl.config.schema import RecipeConfig
from pagerl.stages import eval, rl, rllib, rm, sft, synth  # noqa: F401  (each registers its stage)
from pagerl.stages.base import STAGES, RunContext, Stage, order_stages, register_stage, stage

ORDER = ("synth", "rllib", "sft", "rm", "rl", "eval")
order_stages(ORDER)

__all__ = ["ORDER", "STAGES", "RunContext", "Stage", "register_stage", "stage"]


@rule
def _stages(r: RecipeConfig) -> Finding:
    """``run.stages`` lists its stages each once, in the registry's order (that each is a registered
    stage is checked against :data:`STAGES` by the recipe loader)."""
    names = tuple(STAGES)
    order = [names.index(s) for s in r.run.stages if s in names]
    if order != sorted(order) or len(set(order)) != len(order):
        return "run.stages", f"stages must be distinct and in the order {', '.join(names)}, got {r.run.stages}"
    return None
