"""The RL stage (driver side): PPO-family updates of the run's policy on mixed-grained rewards.

It starts the roles (:class:`~pagerl.rl.controller.RLController`), checks
before any update that rollout and trainer compute the same constrained
logprobs for the same pages, runs ``rl.steps`` steps with one progress
display, logs every step's figures under stage ``rl`` in ``metrics.jsonl``
and TensorBoard, and exports the trained policy as a plain Hugging Face
directory, ``<run_dir>/rl/final``, plus ``<run_dir>/rl/summary.json``.

Every ``rl.checkpoint_every`` steps the whole RL state is checkpointed
(:mod:`pagerl.rl.checkpoint`); a stage that did not finish resumes from the
newest complete checkpoint and runs exactly the steps an uninterrupted run
would have run after it. The steps between that checkpoint and the
interruption are run again and logged again (``metrics.jsonl`` readers keep
the last row of each step).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Sequence

from pagerl.data.types import Impression
from pagerl.errors import PageRLError
from pagerl.tracking.console import CONSOLE
from pagerl.rl import checkpoint as ckpt
from pagerl.tracking.metrics import MetricsLogger, read_metrics

STAGE = "rl"
SUMMARY_FILE = "summary.json"
PROMPTS_FILE = "prompts.jsonl"


def run_rl_stage(recipe: Any, run_dir: Path, impressions: Sequence[Impression], policy_dir: str) -> Dict[str, Any]:
    """Train the policy in ``policy_dir`` with RL; returns ``{"model_dir", "steps", "finished", ...}``."""
    from pagerl.rl.controller import RLController

    if policy_dir is None:
        raise PageRLError("the rl stage needs a policy to start from: put 'sft' before 'rl' in run.stages")
    cfg = recipe.rl
    stage_dir = Path(run_dir) / STAGE
    stage_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    resume = ckpt.latest(stage_dir)
    # Which requests each step trained on, one line per step (a resumed stage re-logs the steps after
    # its checkpoint; the last line of a step is the run that continued).
    prompts_file = stage_dir / PROMPTS_FILE
    if resume is None:
        prompts_file.unlink(missing_ok=True)
    controller = RLController(recipe, run_dir, policy_dir, [imp.request for imp in impressions], resume_dir=resume)
    start, total = controller.next_step, int(cfg.steps)
    stop_at = min(total, start + int(cfg.stop_after_steps)) if cfg.stop_after_steps > 0 else total
    try:
        if resume is not None:
            print(f"[rl] resumed from {resume} at step {start}/{total}", flush=True)
        initial_delta = controller.verify(start) if cfg.sync.verify else None
        print(f"[rl] rollout/trainer logprob parity before training: max |delta| {initial_delta}", flush=True)
        display = CONSOLE.progress(STAGE, total, recipe.tracking.progress_every_s)
        display.update(start)
        with MetricsLogger.from_config(run_dir, recipe.tracking) as metrics:
            if initial_delta is not None and resume is None:
                metrics.log(STAGE, 0, {"sync_delta_max": initial_delta})
            for step in range(start, stop_at):
                row = controller.step(step, prefetch=step + 1 < total)
                metrics.log(STAGE, step + 1, row)
                with prompts_file.open("a") as f:
                    f.write(json.dumps({"step": step + 1, "request_ids": controller.last_request_ids}) + "\n")
                display.update(step + 1, {"reward": row["reward_total"], "kl": row["kl"]})
                if cfg.checkpoint_every > 0 and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
                    controller.save_checkpoint(stage_dir)
        display.close()
        if stop_at < total:
            latest = ckpt.latest(stage_dir)
            return {"model_dir": str(latest) if latest else "", "checkpoint": str(latest), "step": stop_at,
                    "total_steps": total, "finished": False}
        controller.save_policy(stage_dir / "final")
    finally:
        controller.shutdown()
    rows = [r for r in read_metrics(run_dir, stage=STAGE) if "reward_total" in r]
    summary = {
        "steps": total, "algorithm": cfg.algorithm, "initial_sync_delta": initial_delta,
        "resumed_from_step": start,
        "first": rows[0] if rows else None, "last": rows[-1] if rows else None,
        "seconds": round(time.perf_counter() - started, 1), "policy_dir": str(policy_dir),
    }
    (stage_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return {"model_dir": str(stage_dir / "final"), "steps": total, "finished": True, **summary}
