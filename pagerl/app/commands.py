"""What each ``pagerl`` command does, once :mod:`pagerl.cli` has parsed its arguments.

Each function takes the parsed arguments and returns the exit status. Bad
input raises :class:`pagerl.errors.PageRLError`, which the command line turns
into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, List, Optional

from pagerl.app import pipeline
from pagerl.app.ablation import run_ablation, shared_stages
from pagerl.app.ablation_table import ABLATION_DIR, TABLE_FILE
from pagerl.app.recipes import load_recipe
from pagerl.config.load import recipe_to_yaml
from pagerl.data.io import validate_file
from pagerl.envs.synth import synthesize_recipe
from pagerl.errors import PageRLError
from pagerl.eval.policy_kinds import MANIFEST, is_saved_policy
from pagerl.stages.eval import run_eval_stage
from pagerl.tracking import console
from pagerl.tracking.console import CONSOLE
from pagerl.tracking.records import jsonable


def load(args: argparse.Namespace):
    recipe, _ = load_recipe(args.recipe, args.overrides)
    return recipe


def run_stages(args: argparse.Namespace, stages: Optional[List[str]]) -> int:
    """Run stages with the person's lines on the terminal and everything else in the run's log."""
    recipe = load(args)
    out = in_session(pipeline.prepare_run_dir(recipe), lambda: pipeline.run(recipe, stages=stages))
    return 3 if out.get("stopped") else 0


def in_session(run_dir: Path, work: Callable[[], Any]) -> Any:
    """``work()`` with the person's lines on the terminal and everything else in ``run_dir``'s log,
    which is named at the end either way."""
    try:
        with console.session(run_dir):
            out = work()
    except BaseException:
        CONSOLE.error(f"(full log: {run_dir / console.LOG_FILE})")
        raise
    CONSOLE.line(f"log:           {run_dir / console.LOG_FILE}")
    return out


def ablate(args: argparse.Namespace) -> int:
    """Every part of the ablation in one console session: its lines here, the rest in the recipe's run log."""
    recipe = load(args)
    shared_stages(recipe)  # a recipe that cannot be ablated is refused before its run directory is made
    run_dir = pipeline.prepare_run_dir(recipe)
    in_session(run_dir, lambda: run_ablation(args.recipe, args.overrides))
    CONSOLE.line(f"ablation:      {run_dir / ABLATION_DIR / TABLE_FILE}")
    return 0


def eval_policy(args: argparse.Namespace) -> int:
    recipe = load(args)
    model = Path(args.model).resolve()
    if not is_saved_policy(model):
        raise PageRLError(f"--model {args.model}: no saved policy there (expected a language model's directory "
                          f"with config.json, or a policy with {MANIFEST} such as the rllib stage's)")
    run_eval_stage(recipe, pipeline.prepare_run_dir(recipe), policies={"policy": str(model)})
    return 0


def data(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        recipe = load(args)
        out = Path(args.out) if args.out else pipeline.run_dir_of(recipe) / "data"
        stats = synthesize_recipe(recipe, out, fmt=args.format)
        CONSOLE.line(json.dumps(jsonable(stats), indent=2))
        return 0
    bad = 0
    for path in args.files:
        result = validate_file(path)
        for err in result.bad_rows:
            CONSOLE.line(str(err))
        CONSOLE.line(f"{path}: {result.summary}")
        bad += len(result.bad_rows)
    return 1 if bad else 0


def config_show(args: argparse.Namespace) -> int:
    CONSOLE.line(recipe_to_yaml(load(args)).rstrip("\n"))
    return 0
