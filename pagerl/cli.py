"""The ``pagerl`` command line: argument parsing only (what each command does: :mod:`pagerl.app.commands`).

Every command that takes a recipe takes overrides after it, as
``section.key=value`` (``pagerl run recipes/quickstart.yaml sft.lr=1e-3``).
Bad input (a recipe key, a data row) ends the command with one line naming
where the problem is and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from pagerl.errors import PageRLError
from pagerl.tracking.console import CONSOLE


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


def _main(argv: Optional[List[str]]) -> int:
    args = _parser().parse_args(argv)
    # Only now: the commands import torch, transformers and DeepSpeed (seconds), which --help and a
    # mistyped argument never need.
    from pagerl.app import commands

    if args.command == "config":
        return commands.config_show(args)
    if args.command == "run":
        return commands.run_stages(args, None)
    if args.command in _STAGE_COMMANDS:
        return commands.run_stages(args, [args.command])
    if args.command == "ablate":
        return commands.ablate(args)
    if args.command == "eval-policy":
        return commands.eval_policy(args)
    if args.command == "data":
        return commands.data(args)
    return 2


def main(argv: Optional[List[str]] = None) -> None:
    try:
        code = _main(argv)
    except PageRLError as exc:
        CONSOLE.error(f"error: {exc}")
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
