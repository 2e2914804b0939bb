"""Loading a recipe as a command does: every rule and every registry of the package in place.

:func:`pagerl.config.load.load_recipe` checks each registry-valued key against
the :class:`~pagerl.registry.Registry` of that key, and the recipe against the
rules that are registered when it runs (:mod:`pagerl.config.rules`). The
registries are filled, and the rules that need a subsystem registered, by that
subsystem's own module (the stages, the environments, the reward sources, the
RL algorithms, ...), so a recipe can be checked only once those modules are
imported (a registry that is not is reported as a programming error). This
module imports them all (through :mod:`pagerl.stages`, which imports every
stage and what it runs) and adds the one rule whose subsystem sits beside
``config`` rather than above it: the metrics sinks (:mod:`pagerl.tracking.sinks`).
Commands, the pipeline and the ablation load recipes through :func:`load_recipe` here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from pagerl.config import load as config_load
from pagerl.config.rules import Finding, check_choice, rule
from pagerl.config.schema import RecipeConfig
from pagerl.stages import STAGES
from pagerl.tracking.sinks import SINKS, TRACKING_EXTRA, WANDB_MODES, missing_modules

__all__ = ["STAGES", "load_recipe"]


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Tuple[RecipeConfig, Dict[str, str]]:
    """Load, merge and validate a recipe against every rule (:func:`pagerl.config.load.load_recipe`)."""
    return config_load.load_recipe(path, overrides)


# Metrics sinks (pagerl.tracking.sinks): an optional tracker whose package is missing fails here,
# at load, rather than in a Ray worker after the stages before it have run.
# (The tracking keys' own checks, such as tracking.mlflow_uri's form, are on their schema fields.)
@rule
def _tracking(r: RecipeConfig) -> List[Finding]:
    t = r.tracking
    found: List[Finding] = []
    for name in SINKS:
        missing = missing_modules(name, t) if getattr(t, name) else []
        if missing:
            found.append((f"tracking.{name}", (f"is on, but {', '.join(missing)} cannot be imported: install the "
                                               f"tracking extra ({TRACKING_EXTRA}) or set tracking.{name}=false")))
    found.append(check_choice("tracking.wandb_mode", t.wandb_mode, WANDB_MODES))
    return found
