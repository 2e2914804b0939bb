"""The ``synth`` stage: logged impressions of the recipe's environment, a training and a held-out split.

Reads ``env.*`` (``pagesim``: ``sim.*``), writes ``data/`` (``train.jsonl``,
``eval.jsonl``, ``synth.json``, ``stats.json``: :mod:`pagerl.envs.synth`), is
complete once ``data/stats.json`` and ``data/synth.json`` exist. Its report
section is the report's "Data" section, which every run has.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from pagerl.envs.synth import synthesize_recipe
from pagerl.stages.base import RunContext, Stage, json_of, register_stage
from pagerl.tracking.console import CONSOLE
from pagerl.tracking.records import write_json


def _run(ctx: RunContext) -> Dict[str, Any]:
    out = ctx.run_dir / "data"
    stats = synthesize_recipe(ctx.recipe, out, progress=_progress(ctx))
    write_json(out / "stats.json", stats, allow_nan=True)
    return stats


def _progress(ctx: RunContext) -> Callable[[str, int, int], None]:
    displays: Dict[str, Any] = {}

    def tick(split: str, done: int, total: int) -> None:
        if split not in displays:
            displays[split] = CONSOLE.progress(f"synth {split}", total, ctx.recipe.tracking.progress_every_s)
        displays[split].update(done)
        if done >= total:
            displays[split].close()

    return tick


def _complete(ctx: RunContext) -> bool:
    return (ctx.run_dir / "data" / "stats.json").is_file() and (ctx.run_dir / "data" / "synth.json").is_file()


def _headline(ctx: RunContext) -> str:
    meta = json_of(ctx.run_dir / "data" / "synth.json") or {}
    stats = meta.get("stats", {})
    train, held = stats.get("train", {}), stats.get("eval", {})
    return (f"{train.get('num_requests', '?')} training and {held.get('num_requests', '?')} held-out impressions; "
            f"logging policy: {train.get('mean_logging_expected_clicks', float('nan')):.3f} expected clicks per page")


ENTRY = register_stage(Stage(
    name="synth", summary="simulated logged impressions (train and held-out)",
    reads=("sim.*", "env.*"), writes="data",
    run=_run, complete=_complete, headline=_headline,
))
