"""The RL stage (driver side): PPO-family updates of the run's policy on mixed-grained rewards.

It starts the roles (:class:`~pagerl.rl.controller.RLController`), checks
before any update that rollout and trainer compute the same constrained
logprobs for the same pages, runs ``rl.steps`` steps with one progress
display, logs every step's figures under stage ``rl`` in ``metrics.jsonl``
and TensorBoard, and exports the trained policy as a plain Hugging Face
directory, ``<run_dir>/rl/final``, plus ``<run_dir>/rl/summary.json``.

Resuming an interrupted RL stage from a checkpoint is not built yet: a
stage that did not finish starts again from the SFT policy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Sequence

from pagerl.data.types import Impression
from pagerl.errors import PageRLError
from pagerl.tracking.console import CONSOLE
from pagerl.tracking.metrics import MetricsLogger

STAGE = "rl"
SUMMARY_FILE = "summary.json"


def run_rl_stage(recipe: Any, run_dir: Path, impressions: Sequence[Impression], policy_dir: str) -> Dict[str, Any]:
    """Train the policy in ``policy_dir`` with RL; returns ``{"model_dir", "steps", "finished", ...}``."""
    from pagerl.rl.controller import RLController

    if policy_dir is None:
        raise PageRLError("the rl stage needs a policy to start from: put 'sft' before 'rl' in run.stages")
    cfg = recipe.rl
    stage_dir = Path(run_dir) / STAGE
    stage_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    controller = RLController(recipe, run_dir, policy_dir, [imp.request for imp in impressions])
    try:
        initial_delta = controller.verify(0) if cfg.sync.verify else None
        print(f"[rl] rollout/trainer logprob parity before training: max |delta| {initial_delta}", flush=True)
        display = CONSOLE.progress(STAGE, int(cfg.steps), recipe.tracking.progress_every_s)
        display.update(0)
        rows = []
        with MetricsLogger.from_config(run_dir, recipe.tracking) as metrics:
            if initial_delta is not None:
                metrics.log(STAGE, 0, {"sync_delta_max": initial_delta})
            for step in range(int(cfg.steps)):
                row = controller.step(step)
                metrics.log(STAGE, step + 1, row)
                rows.append(row)
                display.update(step + 1, {"reward": row["reward_total"], "kl": row["kl"]})
        display.close()
        controller.save_policy(stage_dir / "final")
    finally:
        controller.shutdown()
    summary = {
        "steps": int(cfg.steps), "algorithm": cfg.algorithm, "initial_sync_delta": initial_delta,
        "first": rows[0] if rows else None, "last": rows[-1] if rows else None,
        "seconds": round(time.perf_counter() - started, 1), "policy_dir": str(policy_dir),
    }
    (stage_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return {"model_dir": str(stage_dir / "final"), "steps": int(cfg.steps), "finished": True, **summary}
