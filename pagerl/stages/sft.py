"""The ``sft`` stage: behaviour cloning of logged pages on Ray Train + DeepSpeed.

Reads the logged impressions; writes ``sft/`` (``init/``, ``checkpoint_*/``,
``final/``, the policy later stages build on); complete once
``sft/final/model.safetensors`` exists; its report section is the training
loss curve.

The driver tokenizes the logged impressions once, writes the initial policy
(model + tokenizer) into the run directory, and launches a TorchTrainer whose
workers run :func:`pagerl.train.sft_loop.sft_worker`. Checkpoints go through
Ray Train into ``<run_dir>/sft/checkpoint_*``; a stage started again on the
same run directory resumes from the latest complete one (or returns at once
when that one is final). The trained policy is exported as a plain Hugging
Face directory, ``<run_dir>/sft/final``.

The run directory must be on storage every node sees (a shared mount) when
the cluster has more than one node: workers read the initial policy from it.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import ray

from pagerl.config.schema import RecipeConfig
from pagerl.data.types import Impression
from pagerl.distributed import checkpoint_format as ckpt
from pagerl.distributed.launch import fit_stage
from pagerl.models.build import build_policy
from pagerl.stages.base import RunContext, Stage, register_stage
from pagerl.tokenization.serialize import encode_example
from pagerl.tokenization.tokenizer import build_tokenizer, load_policy_tokenizer
from pagerl.tracking.metrics import metric_series, read_metrics
from pagerl.tracking.report_parts import curve_section
from pagerl.train.batching import Schedule
from pagerl.train.sft_loop import sft_worker

log = logging.getLogger(__name__)

HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def engagement_weights(impressions: Sequence[Impression], mode: str, min_weight: float) -> List[float]:
    """Per-page weights for weighted behaviour cloning, normalised to mean 1.

    ``clicks`` weighs a page by its click count, ``gmv`` by log(1 + GMV); a page
    without engagement keeps ``min_weight`` so the policy still learns the
    logging policy's support from it.
    """
    if mode == "none":
        return [1.0] * len(impressions)
    raw = []
    for imp in impressions:
        clicks = float(sum(f.click for f in imp.feedback))
        value = clicks if mode == "clicks" else math.log1p(float(imp.page_outcome.get("gmv", 0.0)))
        raw.append(max(min_weight, value))
    mean = sum(raw) / max(1, len(raw))
    return [w / mean for w in raw]


def encode_examples(tokenizer: Any, impressions: Sequence[Impression], weights: Sequence[float]) -> List[Dict[str, Any]]:
    """Tokenized SFT examples: ``input_ids``, ``labels`` (-100 on the prompt), ``weight``, and the page's shape.

    ``num_candidates`` (N) and ``page_size`` (K) are what the constrained loss
    (``sft.constrained_loss``) needs to build the distribution the policy acts
    with: only unused candidates among the N, then EOS after K items.
    """
    out = []
    for imp, w in zip(impressions, weights):
        ex = encode_example(tokenizer, imp.request, imp.page)
        out.append({"input_ids": ex["input_ids"], "labels": ex["labels"], "weight": float(w),
                    "num_candidates": len(imp.request.candidates), "page_size": int(imp.request.page_size)})
    return out


def prepare_initial_policy(recipe: RecipeConfig, impressions: Sequence[Impression], init_dir: Path) -> Any:
    """Build (or reuse, when resuming) the initial policy and its tokenizer in ``init_dir``."""
    if (init_dir / "config.json").is_file():
        return load_policy_tokenizer(str(init_dir))
    if recipe.model.source == "tiny":
        tokenizer = build_tokenizer(recipe.model, impressions)
    else:
        tokenizer = load_policy_tokenizer(recipe.model)
    model = build_policy(recipe.model, tokenizer, seed=recipe.run.seed)
    tmp = init_dir.with_name(init_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(init_dir)
    return tokenizer


def run_sft_stage(recipe: RecipeConfig, run_dir: Path, impressions: Sequence[Impression]) -> Dict[str, Any]:
    """Train the SFT policy; returns ``{"model_dir", "step", "total_steps", "finished"}``."""
    stage_dir = run_dir / "sft"
    stage_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = prepare_initial_policy(recipe, impressions, stage_dir / "init")
    s = recipe.sft
    weights = engagement_weights(impressions, s.engagement_weighting, s.min_weight)
    examples = encode_examples(tokenizer, impressions, weights)
    schedule = Schedule(len(examples), s.micro_batch_size, s.grad_accum_steps,
                        recipe.distributed.num_workers, s.epochs, s.max_steps)
    schedule.check()

    latest = ckpt.latest_checkpoint(stage_dir) if recipe.run.resume else None
    if latest is None or int(ckpt.read_trainer_state(latest)["step"]) < schedule.total_steps:
        log.info("[sft] %d examples, %d steps of %d on %d workers, ZeRO-%d%s", len(examples),
                 schedule.total_steps, schedule.global_batch, recipe.distributed.num_workers,
                 recipe.distributed.zero_stage, f", resuming from {latest}" if latest else "")
        latest = fit_stage(recipe, run_dir, "sft", sft_worker, {
            "init_dir": str(stage_dir / "init"),
            "examples_ref": ray.put(examples),
        }, resume_from=latest, total_steps=schedule.total_steps,
           start_step=int(ckpt.read_trainer_state(latest)["step"]) if latest else 0)
    if latest is None:
        raise RuntimeError(f"{stage_dir}: the SFT stage ended without a complete checkpoint")
    state = ckpt.read_trainer_state(latest)
    finished = int(state["step"]) >= schedule.total_steps
    final_dir = stage_dir / "final"
    if finished:
        export_hf(latest, final_dir)
    return {"model_dir": str(final_dir if finished else latest), "checkpoint": str(latest),
            "step": int(state["step"]), "total_steps": schedule.total_steps, "finished": finished}


def export_hf(checkpoint_dir: Path, target: Path) -> None:
    """Publish the Hugging Face part of a checkpoint (config, safetensors, tokenizer) as ``target``."""
    ckpt.export_files(checkpoint_dir, target, HF_FILES)


def loss_headline(stage_name: str) -> Callable[[RunContext], str]:
    """The headline of a training stage: its loss at the first and the last logged step."""

    def headline(ctx: RunContext) -> str:
        steps, values = metric_series(read_metrics(ctx.run_dir, stage=stage_name), stage_name, "loss")
        if not steps or values[0] is None or values[-1] is None:
            return ""
        return f"loss {values[0]:.4f} at step {steps[0]} -> {values[-1]:.4f} at step {steps[-1]}"

    return headline


ENTRY = register_stage(Stage(
    name="sft", summary="behaviour cloning of the logged pages (Ray Train + DeepSpeed ZeRO)",
    reads=("logged impressions",), writes="sft", policy="sft/final", uses_ray=True,
    run=lambda ctx: run_sft_stage(ctx.recipe, ctx.run_dir, ctx.train_data().impressions),
    complete=lambda ctx: (ctx.run_dir / "sft" / "final" / "model.safetensors").is_file(),
    headline=loss_headline("sft"),
    report=lambda run_dir, plots: [curve_section(run_dir, plots, "sft", "SFT learning curve")],
))
