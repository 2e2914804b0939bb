"""The ``rllib`` stage: a non-LLM baseline, PPO (RLlib) over a candidate-scoring MLP, online in the simulator.

Reads ``rllib.*`` and the recipe's environment; writes ``rllib/``
(``policy/``, the policy the eval stage scores beside the language models;
``checkpoints/iter_<n>`` while it trains; ``summary.json``); complete once
``rllib/policy/pagerl_policy.json`` and ``rllib/summary.json`` exist; its
report section is PPO's training curves. The baseline itself is
:mod:`pagerl.rllib_baseline.ppo`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from pagerl.distributed import ray_cluster
from pagerl.eval.policy_kinds import MANIFEST
from pagerl.rllib_baseline.ppo import (
    CHECKPOINTS,
    POLICY_DIR,
    STAGE_DIR,
    SUMMARY_FILE,
    export_policy,
    ppo_config,
    restore_newest,
    rllib_seed,
    save_checkpoint,
)
from pagerl.stages.base import RunContext, Stage, json_of, register_stage
from pagerl.tracking.console import CONSOLE
from pagerl.tracking.metrics import METRICS_FILE, MetricsLogger, read_metrics
from pagerl.tracking.records import write_json
from pagerl.tracking.report_parts import PLOTS_DIR, fmt, markdown_table, plot_panels

# Figures of an iteration's result logged per row: (RLlib's result path, metrics name).
_LOGGED = (
    (("env_runners", "episode_return_mean"), "reward_mean"),
    (("learners", "default_policy", "policy_loss"), "policy_loss"),
    (("learners", "default_policy", "vf_loss"), "vf_loss"),
    (("learners", "default_policy", "vf_explained_var"), "vf_explained_var"),
    (("learners", "default_policy", "entropy"), "entropy"),
    (("learners", "default_policy", "mean_kl_loss"), "kl"),
    (("env_runners", "num_env_steps_sampled_lifetime"), "pages_sampled"),
)


def run_rllib_stage(recipe: Any, run_dir: Path) -> Dict[str, Any]:
    """Train ``rllib.iterations`` PPO iterations (resuming from the newest checkpoint), export the policy."""
    c = recipe.rllib
    stage_dir = Path(run_dir) / STAGE_DIR
    stage_dir.mkdir(parents=True, exist_ok=True)
    started_ray = ray_cluster.connect(recipe.distributed.ray_address)
    algo = ppo_config(recipe).build_algo()
    try:
        start = restore_newest(algo, stage_dir / CHECKPOINTS)
        if start:
            CONSOLE.line(f"[rllib] resumed from iteration {start}")
        progress = CONSOLE.progress("rllib", int(c.iterations), recipe.tracking.progress_every_s)
        rows: List[Dict[str, float]] = []
        with MetricsLogger.from_config(run_dir, recipe.tracking) as metrics:
            for iteration in range(start + 1, int(c.iterations) + 1):
                t0 = time.perf_counter()
                result = algo.train()
                row = _row(result)
                row["seconds"] = time.perf_counter() - t0
                metrics.log("rllib", iteration, row)
                rows.append(row)
                progress.update(iteration)
                if c.checkpoint_every and iteration % int(c.checkpoint_every) == 0 and iteration < int(c.iterations):
                    save_checkpoint(algo, stage_dir / CHECKPOINTS, iteration)
        progress.close()
        policy_dir = export_policy(algo, recipe, Path(run_dir) / POLICY_DIR)
    finally:
        algo.stop()
        ray_cluster.shutdown(started_ray)
    summary = {"algorithm": "PPO (RLlib)", "iterations": int(c.iterations), "reward": str(c.reward),
               "seed": rllib_seed(recipe), "first": rows[0] if rows and start == 0 else None,
               "last": rows[-1] if rows else None}
    write_json(stage_dir / SUMMARY_FILE, summary, allow_nan=True)
    shutil.rmtree(stage_dir / CHECKPOINTS, ignore_errors=True)
    return {"policy_dir": str(policy_dir), "finished": True, **summary}


def _row(result: Dict[str, Any]) -> Dict[str, float]:
    row: Dict[str, float] = {}
    for path, name in _LOGGED:
        value: Any = result
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None and np.isfinite(float(value)):
            row[name] = float(value)
    return row


# ------------------------------------------------------------------ report and registry entry


# The RLlib baseline's training (stage "rllib", pagerl.rllib_baseline.ppo): what PPO logged per iteration.
RLLIB_PANELS = (
    ("mean page reward of the sampled pages", ("reward_mean",)),
    ("losses", ("policy_loss", "vf_loss")),
    ("entropy of the score distribution", ("entropy",)),
    ("KL between consecutive policies", ("kl",)),
)


RLLIB_TABLE = ("reward_mean", "policy_loss", "vf_loss", "vf_explained_var", "entropy", "kl", "pages_sampled",
               "seconds")


def _rllib_section(run_dir: Path, plots: Path) -> str:
    """Training curves of the RLlib baseline (stage ``rllib`` of ``metrics.jsonl``)."""
    title = "RLlib baseline training"
    rows = read_metrics(run_dir, stage="rllib") if (run_dir / METRICS_FILE).exists() else []
    if not rows:
        return ""  # the run has no rllib stage: nothing to say
    png = plot_panels(RLLIB_PANELS, "rllib", lambda key: rows, "PPO iteration", plots / "rllib_curves.png")
    first, last = rows[0], rows[-1]
    lines = [f"## {title}", "", f"![rllib curves]({PLOTS_DIR}/{png.name})", "",
             f"{len(rows)} PPO iterations of the candidate-scoring policy (stage `rllib` of `{METRICS_FILE}`, "
             "written by `pagerl.rllib_baseline.ppo`): the rewards are the environment's (`rllib.reward`) on "
             "the pages the policy sampled while it learned; its held-out figures are in the evaluation table.",
             ""]
    lines += markdown_table(["", *RLLIB_TABLE], [["first iteration", *[fmt(first.get(k)) for k in RLLIB_TABLE]],
                                          ["last iteration", *[fmt(last.get(k)) for k in RLLIB_TABLE]]])
    return "\n".join(lines)


def _complete(ctx: RunContext) -> bool:
    return (ctx.run_dir / POLICY_DIR / MANIFEST).is_file() and (ctx.run_dir / STAGE_DIR / SUMMARY_FILE).is_file()


def _headline(ctx: RunContext) -> str:
    summary = json_of(ctx.run_dir / STAGE_DIR / SUMMARY_FILE) or {}
    first, last = summary.get("first") or {}, summary.get("last") or {}
    if "reward_mean" not in last:
        return ""
    start = f"{first['reward_mean']:.3f} -> " if "reward_mean" in first else ""
    return (f"PPO for {summary['iterations']} iterations: training pages' {summary['reward']} "
            f"{start}{last['reward_mean']:.3f}")


# Before the language-model stages, so each of their policies is compared with it in eval.
ENTRY = register_stage(Stage(
    name="rllib", summary="a non-LLM baseline: PPO (RLlib) over a candidate-scoring MLP, online in the simulator",
    reads=("rllib.*", "the environment (sim.*, env.*)"), writes=STAGE_DIR,
    policy=POLICY_DIR, policy_kind="rllib_ppo", uses_ray=True,
    run=lambda ctx: run_rllib_stage(ctx.recipe, ctx.run_dir), complete=_complete, headline=_headline,
    report=lambda run_dir, plots: [_rllib_section(run_dir, plots)],
))
