"""``pagerl run``: the stages of one recipe, in order, in one run directory.

synth (simulated logged data) -> sft (behaviour cloning on Ray + DeepSpeed)
-> eval (simulator ground truth) -> report. Each stage is skipped when its
output is already complete in the run directory, and SFT resumes from its
latest checkpoint, so running the same command again after an interruption
continues where it stopped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from pagerl.config.load import recipe_to_yaml
from pagerl.config.schema import RecipeConfig
from pagerl.data.io import LoadResult, read_impressions
from pagerl.distributed import ray_cluster
from pagerl.errors import PageRLError

# Sections whose change makes an existing run directory meaningless to resume.
_FROZEN_SECTIONS = ("sim", "data", "model", "distributed")
_FROZEN_SFT_KEYS = ("epochs", "max_steps", "micro_batch_size", "grad_accum_steps", "lr", "engagement_weighting")


def run_dir_of(recipe: RecipeConfig) -> Path:
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


def data_files(recipe: RecipeConfig, run_dir: Path) -> Dict[str, List[str]]:
    synth_dir = run_dir / "data"
    return {
        "train": list(recipe.data.train_files) or [str(synth_dir / "train.jsonl")],
        "eval": list(recipe.data.eval_files) or [str(synth_dir / "eval.jsonl")],
    }


def stage_synth(recipe: RecipeConfig, run_dir: Path) -> Dict[str, Any]:
    from pagerl.sim.synth import synthesize

    out = run_dir / "data"
    stats_file = out / "stats.json"
    if stats_file.is_file():
        print(f"[synth] using the data already in {out}", flush=True)
        return json.loads(stats_file.read_text())
    stats = synthesize(recipe.sim, recipe.run.seed, out)
    stats_file.write_text(json.dumps(_jsonable(stats), indent=2))
    return stats


def load_training_data(recipe: RecipeConfig, files: List[str]) -> LoadResult:
    result = read_impressions(files, on_bad_row=recipe.data.on_bad_row,
                              max_bad_fraction=recipe.data.max_bad_fraction)
    print(f"[data] {result.summary}", flush=True)
    return result


def run(recipe: RecipeConfig, stages: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run ``stages`` (default: the recipe's ``run.stages``); returns what each produced."""
    stages = stages or list(recipe.run.stages)
    run_dir = prepare_run_dir(recipe)
    started = time.perf_counter()
    outputs: Dict[str, Any] = {"run_dir": str(run_dir)}
    files = data_files(recipe, run_dir)

    if "synth" in stages:
        outputs["synth"] = stage_synth(recipe, run_dir)
    trained = [stage for stage in ("sft", "rm") if stage in stages]
    if trained:
        data = load_training_data(recipe, files["train"])
        _record_data_stats(run_dir, data)
        owns_ray = ray_cluster.connect(recipe.distributed.ray_address)
        try:
            if "sft" in stages:
                from pagerl.train.sft import run_sft_stage

                outputs["sft"] = run_sft_stage(recipe, run_dir, data.impressions)
                if not outputs["sft"]["finished"]:
                    return _stopped(outputs, "sft")
            if "rm" in stages:
                from pagerl.rewards.rm_stage import run_rm_stage

                outputs["rm"] = run_rm_stage(recipe, run_dir, data.impressions, policy_dir=_final_policy(run_dir))
                if not outputs["rm"]["finished"]:
                    return _stopped(outputs, "rm")
        finally:
            ray_cluster.shutdown(owns_ray)
    model_dir = _final_policy(run_dir)

    if "eval" in stages:
        from pagerl.eval.evaluate import run_eval_stage

        outputs["eval"] = run_eval_stage(recipe, run_dir, model_dir=model_dir)

    if recipe.tracking.report:
        from pagerl.tracking.report import write_report

        outputs["report"] = str(write_report(run_dir))
    outputs["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\nrun directory: {run_dir}", flush=True)
    if "report" in outputs:
        print(f"report:        {outputs['report']}", flush=True)
    return outputs


def _final_policy(run_dir: Path) -> Optional[str]:
    final = run_dir / "sft" / "final"
    return str(final) if (final / "config.json").is_file() else None


def _stopped(outputs: Dict[str, Any], stage: str) -> Dict[str, Any]:
    out = outputs[stage]
    print(f"[{stage}] stopped at step {out['step']}/{out['total_steps']} (checkpoint {out['checkpoint']}); "
          "run the same command again to resume", flush=True)
    return outputs


def _record_data_stats(run_dir: Path, data: LoadResult) -> None:
    path = run_dir / "data" / "stats.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    stats = json.loads(path.read_text()) if path.is_file() else {}
    stats["loaded_rows"] = data.num_rows
    stats["skipped_bad_rows"] = len(data.bad_rows)
    stats["bad_row_examples"] = [str(e) for e in data.bad_rows[:10]]
    path.write_text(json.dumps(_jsonable(stats), indent=2))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return obj


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
