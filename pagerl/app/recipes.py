"""Loading a recipe as a command does: every rule and every registry of the package in place.

:func:`pagerl.config.load.load_recipe` checks a recipe against the rules that
are registered when it runs (:mod:`pagerl.config.rules`). Rules that need a
subsystem are registered by that subsystem's own module (the stages, the
environments, the reward sources, the RL algorithms, ...), so a recipe is
checked in full only once those modules are imported. This module imports them
all (through :mod:`pagerl.stages`, which imports every stage and what it
runs) and adds the one rule whose subsystem sits beside ``config`` rather than
above it: the metrics sinks (:mod:`pagerl.tracking.sinks`). Commands, the
pipeline and the ablation load recipes through :func:`load_recipe` here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple

from pagerl.config import load as config_load
from pagerl.config.rules import Finding, one_of, rule
from pagerl.config.schema import RecipeConfig
from pagerl.stages import STAGES
from pagerl.tracking.sinks import SINKS, TRACKING_EXTRA, WANDB_MODES, missing_modules

__all__ = ["STAGES", "load_recipe"]


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Tuple[RecipeConfig, Dict[str, str]]:
    """Load, merge and validate a recipe against every rule (:func:`pagerl.config.load.load_recipe`)."""
    return config_load.load_recipe(path, overrides)


# Metrics sinks (pagerl.tracking.sinks): an optional tracker whose package is missing fails here,
# at load, rather than in a Ray worker after the stages before it have run.
@rule
def _tracking(r: RecipeConfig) -> Finding:
    t = r.tracking
    for name in SINKS:
        missing = missing_modules(name, t) if getattr(t, name) else []
        if missing:
            return f"tracking.{name}", (f"is on, but {', '.join(missing)} cannot be imported: install the "
                                        f"tracking extra ({TRACKING_EXTRA}) or set tracking.{name}=false")
    if not t.wandb_project.strip():
        return "tracking.wandb_project", "expected a W&B project name"
    if not t.mlflow_experiment.strip():
        return "tracking.mlflow_experiment", "expected an MLflow experiment name"
    uri = t.mlflow_uri
    if uri and (":" not in uri or (uri.startswith("sqlite:") and not uri.startswith("sqlite:////"))):
        return "tracking.mlflow_uri", (
            f"expected an MLflow tracking URI with an absolute path or a host (sqlite:////abs/path/mlflow.db, "
            f"http://host:5000), or empty for a store in the run directory; got {uri!r} (Ray Train workers "
            "start in another directory, so a relative path would point elsewhere)")
    return one_of("tracking.wandb_mode", t.wandb_mode, WANDB_MODES)
