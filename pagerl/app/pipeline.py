"""``pagerl run``: the recipe's ``run.stages``, in order, in one run directory.

Each stage is an entry of :data:`pagerl.stages.STAGES`; the pipeline only
walks the list. A stage whose output is already complete in the run
directory is skipped (and says so); an unfinished one resumes from its last
checkpoint. So the same command run again after an interruption continues
where it stopped, and run again after it finished does nothing but rewrite
the report from what the run directory holds.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from pagerl.app.report import HTML_REPORT_FILE, write_report
from pagerl.config.load import recipe_to_yaml
from pagerl.config.schema import RecipeConfig
from pagerl.distributed import ray_cluster
from pagerl.errors import PageRLError
from pagerl.stages import STAGES, RunContext, stage
from pagerl.tracking.console import CONSOLE
from pagerl.tracking.timings import record_stage_time

# Sections whose change makes an existing run directory meaningless to resume.
_FROZEN_SECTIONS = ("sim", "data", "model", "distributed")
_FROZEN_SFT_KEYS = ("epochs", "max_steps", "micro_batch_size", "grad_accum_steps", "lr", "engagement_weighting")


def run_dir_of(recipe: RecipeConfig) -> Path:
    """``<run.output_dir>/<run.name>``; absolute, since the loader resolved ``run.output_dir``."""
    return Path(recipe.run.output_dir) / recipe.run.name


def prepare_run_dir(recipe: RecipeConfig) -> Path:
    """Create the run directory and keep its resolved recipe; refuse an incompatible resume."""
    run_dir = run_dir_of(recipe)
    saved = run_dir / "recipe.yaml"
    text = recipe_to_yaml(recipe)
    if saved.is_file():
        if not recipe.run.resume:
            raise PageRLError(f"{run_dir} already exists; set run.resume=true to continue it or pick another run.name")
        old = OmegaConf.to_container(OmegaConf.create(saved.read_text()))
        new = OmegaConf.to_container(OmegaConf.create(text))
        changed = [f"{sec}" for sec in _FROZEN_SECTIONS if old.get(sec) != new.get(sec)]
        changed += [f"sft.{k}" for k in _FROZEN_SFT_KEYS if old["sft"].get(k) != new["sft"].get(k)]
        if changed:
            raise PageRLError(
                f"{saved}: the run directory was made by a recipe that differs in {', '.join(changed)}; "
                "resuming would mix two experiments. Use a new run.name."
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(text)
    return run_dir


def run(recipe: RecipeConfig, stages: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run ``stages`` (default: the recipe's ``run.stages``); returns what each produced.

    ``outputs[name]`` is the stage's result, or ``{"skipped": True}`` for a
    stage that was already complete; ``outputs["stopped"]`` names a stage
    that stopped before its end (``sft.stop_after_steps`` and the like).
    """
    names = list(stages or recipe.run.stages)
    for name in names:
        stage(name)  # an unknown name fails before any work
    run_dir = prepare_run_dir(recipe)
    started = time.perf_counter()
    ctx = RunContext(recipe, run_dir)
    ctx.outputs["run_dir"] = str(run_dir)
    owns_ray: Optional[bool] = None
    try:
        # Registry order (the validator keeps run.stages in it). A policy stage
        # that is not asked for but complete in the run directory still
        # provides its policy: `pagerl rm` after `pagerl sft` reads sft's.
        for entry in STAGES.values():
            name = entry.name
            if name not in names:
                if entry.policy is not None and entry.complete(ctx):
                    ctx.policies[name] = str(run_dir / entry.policy)
                continue
            if entry.complete(ctx):
                ctx.outputs[name] = {"skipped": True}
                CONSOLE.line(f"[{name}] already complete in {run_dir / entry.writes}: skipped")
            else:
                CONSOLE.line(f"[{name}] {entry.summary}")
                if entry.uses_ray and owns_ray is None:
                    owns_ray = ray_cluster.connect(recipe.distributed.ray_address)
                t0 = time.perf_counter()
                try:
                    out = entry.run(ctx)
                except BaseException:
                    _record_failed_attempt(run_dir, name, time.perf_counter() - t0)
                    raise
                outcome = "finished" if out.get("finished", True) else "stopped"
                record_stage_time(run_dir, name, time.perf_counter() - t0, outcome)
                ctx.outputs[name] = out
                if outcome == "stopped":
                    ctx.outputs["stopped"] = name
                    CONSOLE.line(f"[{name}] stopped at step {out['step']}/{out['total_steps']} "
                                 f"(checkpoint {out['checkpoint']}); run the same command again to resume")
                    return ctx.outputs
                headline = entry.headline(ctx)
                CONSOLE.line(f"[{name}] done in {time.perf_counter() - t0:.0f} s" + (f": {headline}" if headline else ""))
            if entry.policy is not None:
                ctx.policies[name] = str(run_dir / entry.policy)
    finally:
        if owns_ray is not None:
            ray_cluster.shutdown(owns_ray)

    if recipe.tracking.report:
        ctx.outputs["report"] = str(write_report(run_dir))
    ctx.outputs["seconds"] = round(time.perf_counter() - started, 1)
    CONSOLE.line(f"\nrun directory: {run_dir}")
    if "report" in ctx.outputs:
        CONSOLE.line(f"report:        {ctx.outputs['report']} (and {HTML_REPORT_FILE}, one self-contained page)")
    return ctx.outputs


def _record_failed_attempt(run_dir: Path, name: str, seconds: float) -> None:
    """Put a stage attempt that raised on the record (pagerl.tracking.timings) without hiding its error:
    a record that cannot be written is warned about, and the stage's own exception goes on."""
    try:
        record_stage_time(run_dir, name, seconds, "failed")
    except Exception as err:  # noqa: BLE001 - the stage's error is the one to raise
        warnings.warn(f"[{name}] the failed attempt is not in the timing record: {err}", RuntimeWarning, stacklevel=2)
