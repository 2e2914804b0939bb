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
from typing import List, Optional

from pagerl.errors import PageRLError


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagerl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the recipe's stages (synth, sft, eval) and write the report")
    _recipe_args(p)

    p = sub.add_parser("config", help="recipe tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    _recipe_args(csub.add_parser("show", help="print the resolved recipe"))

    p = sub.add_parser("data", help="data tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    synth = dsub.add_parser("synth", help="write a simulated logged data set")
    _recipe_args(synth)
    synth.add_argument("--out", help="output directory (default: <run dir>/data)")
    synth.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    val = dsub.add_parser("validate", help="check a data file and report every bad row with its line")
    val.add_argument("files", nargs="+")

    p = sub.add_parser("sft", help="run only the SFT stage of a recipe")
    _recipe_args(p)
    p = sub.add_parser("rm", help="run only the reward-model stage of a recipe (after sft)")
    _recipe_args(p)
    p = sub.add_parser("eval", help="run only the evaluation stage of a recipe")
    _recipe_args(p)
    p.add_argument("--model", help="a saved policy dir to evaluate (default: <run dir>/sft/final if present)")
    return parser


def _load(args: argparse.Namespace):
    from pagerl.config.load import load_recipe

    recipe, _ = load_recipe(args.recipe, args.overrides)
    return recipe


def _main(argv: Optional[List[str]]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config":
        from pagerl.config.load import recipe_to_yaml

        print(recipe_to_yaml(_load(args)), end="")
        return 0
    if args.command == "run":
        from pagerl import pipeline

        pipeline.run(_load(args))
        return 0
    if args.command in ("sft", "rm"):
        from pagerl import pipeline

        out = pipeline.run(_load(args), stages=[args.command])
        return 0 if out.get(args.command, {}).get("finished") else 3
    if args.command == "eval":
        from pagerl import pipeline
        from pagerl.eval.evaluate import run_eval_stage

        recipe = _load(args)
        run_dir = pipeline.prepare_run_dir(recipe)
        default = run_dir / "sft" / "final"
        model = args.model or (str(default) if (default / "config.json").is_file() else None)
        results = run_eval_stage(recipe, run_dir, model_dir=model)
        print(json.dumps(results.get("methods", results), indent=2))
        return 0
    if args.command == "data":
        return _data(args)
    return 2


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        from pagerl import pipeline
        from pagerl.sim.synth import synthesize

        recipe = _load(args)
        out = Path(args.out) if args.out else pipeline.run_dir_of(recipe) / "data"
        stats = synthesize(recipe.sim, recipe.run.seed, out, fmt=args.format)
        print(json.dumps(pipeline._jsonable(stats), indent=2))
        return 0
    from pagerl.data.io import validate_file

    bad = 0
    for path in args.files:
        result = validate_file(path)
        for err in result.bad_rows:
            print(err)
        print(f"{path}: {result.summary}")
        bad += len(result.bad_rows)
    return 1 if bad else 0


def main(argv: Optional[List[str]] = None) -> None:
    try:
        code = _main(argv)
    except PageRLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
