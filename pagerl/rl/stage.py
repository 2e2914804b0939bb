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

With ``rl.eval_every`` the policy being trained is scored on held-out requests
before the first step, every ``rl.eval_every`` steps and after the last
(:meth:`~pagerl.rl.controller.RLController.evaluate`): the first
``rl.eval_requests`` requests of the eval stage's files (the synth stage's
eval split, which RL never trains on), logged as ``eval/<metric>`` beside the
step's other figures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from pagerl.data.types import Impression
from pagerl.errors import PageRLError
from pagerl.rl import checkpoint as ckpt
from pagerl.tracking.console import CONSOLE
from pagerl.tracking.metrics import MetricsLogger, read_metrics

STAGE = "rl"
SUMMARY_FILE = "summary.json"
PROMPTS_FILE = "prompts.jsonl"


def run_rl_stage(recipe: Any, run_dir: Path, impressions: Sequence[Impression], policy_dir: str) -> Dict[str, Any]:
    """Train the policy in ``policy_dir`` with RL; returns ``{"model_dir", "steps", "finished", ...}``.

    A trainer rank that dies breaks the collective every other rank is in, so
    the stage ends every role and starts them again from the newest complete
    checkpoint, up to ``rl.trainer.max_restarts`` times; the resumed steps are
    those an uninterrupted run takes (:mod:`pagerl.rl.checkpoint`). Lost
    rollout and reward workers are replaced inside the step instead
    (:class:`~pagerl.rl.controller.RLController`, :mod:`pagerl.rewards.workers`).
    """
    from pagerl.rl.groups import RoleDiedError

    if policy_dir is None:
        raise PageRLError("the rl stage needs a policy to start from: put 'sft' before 'rl' in run.stages "
                           "or set rl.init_policy_dir")
    cfg = recipe.rl
    stage_dir = Path(run_dir) / STAGE
    stage_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    resume = ckpt.latest(stage_dir)
    # Which requests each step trained on, one line per step (a resumed stage re-logs the steps after
    # its checkpoint; the last line of a step is the run that continued).
    if resume is None:
        (stage_dir / PROMPTS_FILE).unlink(missing_ok=True)
    heldout = []
    if int(cfg.eval_every) > 0:
        from pagerl.eval.evaluate import heldout_requests

        heldout = heldout_requests(recipe, run_dir, limit=int(cfg.eval_requests))
    attempt = _Attempt(recipe, run_dir, [imp.request for imp in impressions], policy_dir, heldout)
    restarts = 0
    while True:
        try:
            attempt.run(resume)
            break
        except RoleDiedError as exc:
            if exc.role != "trainer" or restarts >= int(cfg.trainer.max_restarts):
                raise
            restarts += 1
            resume = ckpt.latest(stage_dir)
            print(f"[rl] trainer rank {exc.index} died ({exc}); restarting every role from "
                  f"{resume or 'the start'} ({restarts}/{cfg.trainer.max_restarts}, rl.trainer.max_restarts)",
                  flush=True)
    total = int(cfg.steps)
    if attempt.stop_at < total:
        latest = ckpt.latest(stage_dir)
        return {"model_dir": str(latest) if latest else "", "checkpoint": str(latest), "step": attempt.stop_at,
                "total_steps": total, "finished": False}
    rows = [r for r in read_metrics(run_dir, stage=STAGE) if "reward_total" in r]
    summary = {
        "steps": total, "algorithm": cfg.algorithm, "initial_sync_delta": attempt.initial_delta,
        "resumed_from_step": attempt.first_start, "trainer_restarts": restarts,
        "first": rows[0] if rows else None, "last": rows[-1] if rows else None,
        "seconds": round(time.perf_counter() - started, 1), "policy_dir": str(policy_dir),
    }
    (stage_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return {"model_dir": str(stage_dir / "final"), "steps": total, "finished": True, **summary}


class _Attempt:
    """One start of the roles: from a checkpoint (or the beginning) to ``stop_at`` or the end."""

    def __init__(self, recipe: Any, run_dir: Path, requests: Sequence[Any], policy_dir: str,
                 heldout: Sequence[Any] = ()) -> None:
        self.recipe, self.run_dir, self.requests, self.policy_dir = recipe, Path(run_dir), requests, policy_dir
        self.heldout = list(heldout)
        self.stage_dir = self.run_dir / STAGE
        self.first_start: Optional[int] = None
        self.stop_at = int(recipe.rl.steps)
        self.initial_delta: Optional[float] = None

    def run(self, resume: Optional[Path]) -> None:
        from pagerl.rl.controller import RLController

        cfg, total = self.recipe.rl, int(self.recipe.rl.steps)
        controller = RLController(self.recipe, self.run_dir, self.policy_dir, self.requests, resume_dir=resume,
                                  heldout=self.heldout)
        display = None
        try:
            start = controller.next_step
            if self.first_start is None:  # rl.stop_after_steps counts from where the stage was started
                self.first_start = start
                if cfg.stop_after_steps > 0:
                    self.stop_at = min(total, start + int(cfg.stop_after_steps))
            if resume is not None:
                print(f"[rl] resumed from {resume} at step {start}/{total}", flush=True)
            delta = controller.verify(start) if cfg.sync.verify else None
            self.initial_delta = delta if self.initial_delta is None else self.initial_delta
            print(f"[rl] rollout/trainer logprob parity before training: max |delta| {delta}", flush=True)
            display = CONSOLE.progress(STAGE, total, self.recipe.tracking.progress_every_s)
            display.update(start)
            with MetricsLogger.from_config(self.run_dir, self.recipe.tracking) as metrics:
                if resume is None:  # step 0: the policy RL starts from
                    initial = {} if delta is None else {"sync_delta_max": delta}
                    initial.update(controller.evaluate() if self.heldout else {})
                    if initial:
                        metrics.log(STAGE, 0, initial)
                for step in range(start, self.stop_at):
                    row = controller.step(step, prefetch=step + 1 < total, evaluate=controller.eval_due(step))
                    metrics.log(STAGE, step + 1, row)
                    with (self.stage_dir / PROMPTS_FILE).open("a") as f:
                        f.write(json.dumps({"step": step + 1, "request_ids": controller.last_request_ids}) + "\n")
                    display.update(step + 1, {"reward": row["reward_total"], "kl": row["kl"]})
                    if cfg.checkpoint_every > 0 and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
                        controller.save_checkpoint(self.stage_dir)
            if self.stop_at == total:
                controller.save_policy(self.stage_dir / "final")
        finally:
            if display is not None:
                display.close()
            controller.shutdown()
