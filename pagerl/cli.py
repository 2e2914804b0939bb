"""The ``pagerl`` command line.

Every command that takes a recipe takes overrides after it, as
``section.key=value`` (``pagerl run recipes/quickstart.yaml sft.lr=1e-3``).
Bad input (a recipe key, a data row) ends the command with one line naming
where the problem is and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagerl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the recipe's run.stages (complete ones are skipped) and write the report")
    _recipe_args(p)

    p = sub.add_parser("config", help="recipe tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    _recipe_args(csub.add_parser("show", help="print the resolved recipe (every path made absolute)"))

    p = sub.add_parser("data", help="data tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    synth = dsub.add_parser("synth", help="write a simulated logged data set")
    _recipe_args(synth)
    synth.add_argument("--out", help="output directory (default: <run dir>/data)")
    synth.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    val = dsub.add_parser("validate", help="check a data file and report every bad row with its line")
    val.add_argument("files", nargs="+")

    for name, text in _STAGE_COMMANDS.items():
        _recipe_args(sub.add_parser(name, help=text))
    p = sub.add_parser("ablate", help="the reward ablation: every variant of ablation.variants for every seed of "
                       "ablation.seeds from the recipe's shared stages, and its table")
    _recipe_args(p)
    p = sub.add_parser("eval-policy", help="evaluate one saved policy directory beside eval.baselines "
                       "(written to <run dir>/eval like the eval stage)")
    _recipe_args(p)
    p.add_argument("--model", required=True, help="a saved policy directory (e.g. <run dir>/sft/final)")
    return parser


# Commands that run one stage of a recipe in its run directory (skipped when complete).
_STAGE_COMMANDS = {
    "rllib": "run only the RLlib baseline's stage: PPO over a candidate-scoring MLP in the simulator",
    "sft": "run only the SFT stage of a recipe",
    "rm": "run only the reward-model stage (uses the run's SFT policy when there is one, else builds its own)",
    "eval": "run only the evaluation stage: every policy in the run directory and eval.baselines",
}


def _load(args: argparse.Namespace):
    recipe, _ = load_recipe(args.recipe, args.overrides)
    return recipe


def _run_stages(args: argparse.Namespace, stages: Optional[List[str]]) -> int:
    """Run stages with the person's lines on the terminal and everything else in the run's log."""
    recipe = _load(args)
    out = _in_session(pipeline.prepare_run_dir(recipe), lambda: pipeline.run(recipe, stages=stages))
    return 3 if out.get("stopped") else 0


def _in_session(run_dir: Path, work: Callable[[], Any]) -> Any:
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


def _main(argv: Optional[List[str]]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config":
        CONSOLE.line(recipe_to_yaml(_load(args)).rstrip("\n"))
        return 0
    if args.command == "run":
        return _run_stages(args, None)
    if args.command in _STAGE_COMMANDS:
        return _run_stages(args, [args.command])
    if args.command == "ablate":
        return _ablate(args)
    if args.command == "eval-policy":
        return _eval_policy(args)
    if args.command == "data":
        return _data(args)
    return 2


def _ablate(args: argparse.Namespace) -> int:
    """Every part of the ablation in one console session: its lines here, the rest in the recipe's run log."""
    recipe = _load(args)
    shared_stages(recipe)  # a recipe that cannot be ablated is refused before its run directory is made
    run_dir = pipeline.prepare_run_dir(recipe)
    _in_session(run_dir, lambda: run_ablation(args.recipe, args.overrides))
    CONSOLE.line(f"ablation:      {run_dir / ABLATION_DIR / TABLE_FILE}")
    return 0


def _eval_policy(args: argparse.Namespace) -> int:
    recipe = _load(args)
    model = Path(args.model).resolve()
    if not is_saved_policy(model):
        raise PageRLError(f"--model {args.model}: no saved policy there (expected a language model's directory "
                          f"with config.json, or a policy with {MANIFEST} such as the rllib stage's)")
    run_eval_stage(recipe, pipeline.prepare_run_dir(recipe), policies={"policy": str(model)})
    return 0


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        recipe = _load(args)
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


def main(argv: Optional[List[str]] = None) -> None:
    try:
        code = _main(argv)
    except PageRLError as exc:
        CONSOLE.error(f"error: {exc}")
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
