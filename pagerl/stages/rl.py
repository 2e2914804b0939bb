"""The ``rl`` stage: PPO-family updates of the run's policy on mixed-grained rewards.

Reads ``rl.init_policy_dir`` or the policy of the stage before, the training
requests and the reward source; writes ``rl/`` (``checkpoint_*/``,
``final/``, ``summary.json``, ``prompts.jsonl``); complete once
``rl/final/model.safetensors`` and ``rl/summary.json`` exist; its report
section is the learning curves (rewards, KL, entropy, held-out figures,
seconds per phase), and it adds its seconds by phase to "Where the time went".

It starts the roles (:class:`~pagerl.rl.controller.RLController`), checks
before any update that rollout and trainer compute the same constrained
logprobs for the same pages, runs ``rl.steps`` steps with one progress
display, logs every step's figures under stage ``rl`` in ``metrics.jsonl``
and TensorBoard, and exports the trained policy as a plain Hugging Face
directory, ``<run_dir>/rl/final``, plus ``<run_dir>/rl/summary.json``.

Every ``rl.checkpoint_every`` steps the whole RL state is checkpointed
(:mod:`pagerl.rl.rl_checkpoint`); a stage that did not finish resumes from the
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
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from pagerl.data.types import Impression
from pagerl.errors import PageRLError
from pagerl.eval.pages import heldout_requests
from pagerl.rl import rl_checkpoint as ckpt
from pagerl.rl.controller import RLController
from pagerl.rl.roles.groups import RoleDiedError
from pagerl.stages.base import RunContext, Stage, json_of, register_stage
from pagerl.tracking.console import CONSOLE
from pagerl.tracking.metrics import METRICS_FILE, MetricsLogger, read_metrics
from pagerl.tracking.report_parts import PLOTS_DIR, fmt, markdown_table, mean_se, plot_panels, skipped

log = logging.getLogger(__name__)

STAGE = "rl"
SUMMARY_FILE = "summary.json"
PROMPTS_FILE = "prompts.jsonl"


def run_rl_stage(recipe: Any, run_dir: Path, impressions: Sequence[Impression], policy_dir: str) -> Dict[str, Any]:
    """Train the policy in ``policy_dir`` with RL; returns ``{"model_dir", "steps", "finished", ...}``.

    A trainer rank that dies breaks the collective every other rank is in, so
    the stage ends every role and starts them again from the newest complete
    checkpoint, up to ``rl.trainer.max_restarts`` times; the resumed steps are
    those an uninterrupted run takes (:mod:`pagerl.rl.rl_checkpoint`). Lost
    rollout and reward workers are replaced inside the step instead
    (:class:`~pagerl.rl.controller.RLController`, :mod:`pagerl.rl.roles.reward_workers`).
    """
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
            log.warning("[rl] trainer rank %s died (%s); restarting every role from %s (%d/%d, "
                        "rl.trainer.max_restarts)", exc.index, exc, resume or "the start", restarts,
                        cfg.trainer.max_restarts)
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
                log.info("[rl] resumed from %s at step %d/%d", resume, start, total)
            delta = controller.verify(start) if cfg.sync.verify else None
            self.initial_delta = delta if self.initial_delta is None else self.initial_delta
            log.info("[rl] rollout/trainer logprob parity before training: max |delta| %s", delta)
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


# ------------------------------------------------------------------ report and registry entry


# The RL step's phases as the controller times them (pagerl.rl.controller.PHASES), one metric each.
RL_PHASE_SECONDS = ("seconds_generate", "seconds_reward", "seconds_experience", "seconds_train", "seconds_sync",
                    "seconds_eval")


# The RL stage's curves: (panel title, metrics in it) from the rows of stage "rl".
RL_PANELS = (
    ("reward per page (raw)", ("reward_total", "reward_page", "reward_item")),
    ("KL to the reference, per token", ("kl",)),
    ("entropy of the constrained policy", ("entropy",)),
    ("seconds per phase", RL_PHASE_SECONDS),
)


# The held-out evaluation inside RL (rl.eval_every; pagerl.rl.controller.RLController.evaluate),
# drawn when the run has it: the same figures as the eval stage's table, every few steps.
RL_EVAL_PANELS = (
    ("held-out NDCG (simulator ground truth)", ("eval/ndcg",)),
    ("held-out expected clicks (simulator ground truth)", ("eval/expected_clicks",)),
)


RL_TABLE = ("reward_total", "reward_page", "reward_item", "kl", "entropy", "clip_fraction", "grad_norm",
            "sync_delta_max", "logprob_mismatch_max", "pages_per_s", "step_s")


RL_EVAL_TABLE = ("eval/ndcg", "eval/expected_clicks", "eval/expected_gmv", "eval/valid_rate", "eval/diversity",
                 "eval/redundancy", "seconds_eval")


def _rl_section(run_dir: Path, plots: Path) -> str:
    """Learning curves of the RL stage (rewards, KL, entropy, held-out NDCG and clicks, per-phase seconds)
    from ``metrics.jsonl``."""
    title = "RL learning curves"
    every = read_metrics(run_dir, stage="rl") if (run_dir / METRICS_FILE).exists() else []
    rows = [r for r in every if "reward_total" in r]
    if not rows:
        return skipped(title, "no RL steps in `metrics.jsonl`")
    evals = [r for r in every if "eval/ndcg" in r]
    png = plot_panels(RL_PANELS + (RL_EVAL_PANELS if evals else ()), "rl",
                       lambda key: evals if key.startswith("eval/") else rows, "RL step", plots / "rl_curves.png")
    first, last = rows[0], rows[-1]
    lines = [f"## {title}", "", f"![rl curves]({PLOTS_DIR}/{png.name})", "",
             f"{len(rows)} RL steps (stage `rl` of `{METRICS_FILE}`, written by `pagerl.rl.controller`); "
             "rewards are those of the reward source before normalisation, KL and entropy those of the "
             "constrained policy.", ""]
    lines += markdown_table(["", *RL_TABLE], [["first step", *[fmt(first.get(k)) for k in RL_TABLE]],
                                      ["last step", *[fmt(last.get(k)) for k in RL_TABLE]]])
    return "\n".join(lines + _rl_eval_lines(evals, rows))


def _rl_eval_lines(evals: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """The held-out evaluation inside RL (``eval/*`` of stage ``rl``): its points and what it cost."""
    if not evals:
        return []
    by_step = {int(r["step"]): r for r in evals}  # last row per step (a resumed stage re-logs steps)
    steps = {int(r["step"]): r for r in rows}
    spent = sum(float(r.get("seconds_eval") or 0.0) for r in by_step.values())
    # step_s includes a step's evaluation; step 0's (before the first step) is outside every step
    outside = sum(float(r.get("seconds_eval") or 0.0) for s, r in by_step.items() if s not in steps)
    total = sum(float(r.get("step_s") or 0.0) for r in steps.values()) + outside
    requests = fmt(evals[-1].get("eval/requests"))
    lines = ["", f"Held-out evaluation inside RL (`rl.eval_every`): at step 0 (the policy RL starts from), every "
             f"`rl.eval_every` steps and after the last, the rollout workers' synced policy laid out one page "
             f"for each of {requests} held-out requests (the eval stage's files, never trained on), decoded "
             "as the eval stage decodes (`eval.decoding`, `eval.constrained`) and scored by the eval stage's "
             "`score_method` on the simulator's ground truth; its last point is the eval stage's figure for "
             "the saved RL policy (greedy decoding). Mean ± standard error over requests.", ""]
    table = []
    for step in sorted(by_step):
        r = by_step[step]
        table.append([step, mean_se(r.get("eval/ndcg"), r.get("eval/ndcg_se")),
                      mean_se(r.get("eval/expected_clicks"), r.get("eval/expected_clicks_se")),
                      *[fmt(r.get(k)) for k in RL_EVAL_TABLE[2:]]])
    lines += markdown_table(["step", *RL_EVAL_TABLE], table)
    share = f" ({100 * spent / total:.1f}% of the RL steps' time)" if total > 0 else ""
    lines += ["", f"It took {spent:.1f} s in all{share}: phase `eval` of the seconds per phase."]
    return lines


def _rl_phase_lines(run_dir: Path) -> List[str]:
    """The RL steps' seconds by phase (pagerl.rl.controller.PHASES), summed over the last row of each step."""
    rows = read_metrics(run_dir, stage="rl") if (run_dir / METRICS_FILE).exists() else []
    steps = {int(r["step"]): r for r in rows if "reward_total" in r}
    if not steps:
        return []
    spent = {key: sum(float(r.get(key) or 0.0) for r in steps.values()) for key in RL_PHASE_SECONDS}
    total = sum(float(r.get("step_s") or 0.0) for r in steps.values())
    table = [[f"`{key.removeprefix('seconds_')}`", f"{value:.1f}", f"{100 * value / total:.1f}%" if total > 0 else "-"]
             for key, value in spent.items()]
    return ["", f"The {len(steps)} RL steps' {total:.1f} s by phase, as the controller timed them one after another "
            "(`seconds_*` and `step_s` of stage `rl` in `metrics.jsonl`, `pagerl.rl.controller`; with "
            "`rl.overlap`, `generate` is the wait for pages sampled while the step before trained):", "",
            *markdown_table(["phase", "seconds", "share of the steps"], table)]


def _complete(ctx: RunContext) -> bool:
    return (ctx.run_dir / STAGE / "final" / "model.safetensors").is_file() and (ctx.run_dir / STAGE / SUMMARY_FILE).is_file()


def _headline(ctx: RunContext) -> str:
    summary = json_of(ctx.run_dir / STAGE / SUMMARY_FILE) or {}
    first, last = summary.get("first") or {}, summary.get("last") or {}
    if not last:
        return ""
    return (f"{summary['algorithm']} for {summary['steps']} steps: reward {first['reward_total']:.3f} -> "
            f"{last['reward_total']:.3f}, KL {last['kl']:.4f}"
            + (f", sync max |delta| {last['sync_delta_max']:.2g}" if "sync_delta_max" in last else ""))


ENTRY = register_stage(Stage(
    name=STAGE, summary="RL of the policy on mixed-grained token rewards (rollout, reward and ZeRO trainer actors)",
    reads=("rl.init_policy_dir, or the policy of the stage before", "training requests",
           "the reward source (rewards.*)"),
    writes=STAGE, policy="rl/final", uses_ray=True,
    run=lambda ctx: run_rl_stage(ctx.recipe, ctx.run_dir, ctx.train_data().impressions,
                                 ctx.recipe.rl.init_policy_dir or ctx.policy_dir),
    complete=_complete, headline=_headline,
    report=lambda run_dir, plots: [_rl_section(run_dir, plots)], time_report=_rl_phase_lines,
))
