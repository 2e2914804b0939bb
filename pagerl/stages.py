"""The stages of a run, one registry entry each.

A stage declares what it reads, what it writes (its directory in the run
directory, and the policy it produces for the stages after it), how it knows
that it is complete, whether it needs Ray, and how to run it. The pipeline
(:mod:`pagerl.pipeline`) walks ``run.stages`` through this registry and knows
no stage by name, so a new stage is a new entry, not a new branch.

Completeness is read from the run directory, never from memory: a rerun of a
finished run skips every stage (no work repeated, no metrics rows appended),
and a run interrupted inside a stage resumes that stage from its last
checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from pagerl.config.schema import RecipeConfig
from pagerl.tracking.console import CONSOLE


@dataclass
class RunContext:
    """What the stages of one run share: the recipe, the run directory, and what earlier stages made."""

    recipe: RecipeConfig
    run_dir: Path
    # Name -> directory of every policy the run's stages produced so far, in
    # stage order (the last language-model one is "the policy" for later stages).
    policies: Dict[str, str] = field(default_factory=dict)
    outputs: Dict[str, Any] = field(default_factory=dict)
    _train_data: Any = None

    @property
    def policy_dir(self) -> Optional[str]:
        """The last language-model policy: what rm and rl build on (an RLlib baseline's is none)."""
        lm = [d for name, d in self.policies.items() if name not in STAGES or STAGES[name].policy_kind == "lm"]
        return lm[-1] if lm else None

    def data_files(self, split: str) -> List[str]:
        """``data.<split>_files``, or what the synth stage writes into the run directory."""
        listed = list(getattr(self.recipe.data, f"{split}_files"))
        return listed or [str(self.run_dir / "data" / f"{split}.jsonl")]

    def train_data(self) -> Any:
        """The training impressions, read and validated once per run (bad rows counted in data/stats.json)."""
        if self._train_data is None:
            from pagerl.data.io import read_impressions

            d = self.recipe.data
            self._train_data = read_impressions(self.data_files("train"), on_bad_row=d.on_bad_row,
                                                max_bad_fraction=d.max_bad_fraction)
            CONSOLE.line(f"[data] {self._train_data.summary}")
            _record_data_stats(self.run_dir, self._train_data)
        return self._train_data


@dataclass(frozen=True)
class Stage:
    """One stage of a run (see the module docstring)."""

    name: str
    summary: str
    reads: Tuple[str, ...]
    writes: str
    run: Callable[[RunContext], Dict[str, Any]]
    complete: Callable[[RunContext], bool]
    # The policy directory (relative to the run directory) this stage produces.
    policy: Optional[str] = None
    # What that policy is: "lm" (a language model; the last one is what later stages build on)
    # or another kind of pagerl.eval.policy_kinds.POLICY_KINDS, which the eval stage scores too.
    policy_kind: str = "lm"
    uses_ray: bool = False
    # The line shown when the stage finished (or was already complete).
    headline: Callable[[RunContext], str] = lambda ctx: ""


STAGES: Dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    if stage.name in STAGES:
        raise ValueError(f"stage {stage.name!r} is registered twice")
    STAGES[stage.name] = stage
    return stage


def stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}") from None


def _json(path: Path) -> Optional[Dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else None


def _record_data_stats(run_dir: Path, data: Any) -> None:
    from pagerl.pipeline import jsonable

    path = run_dir / "data" / "stats.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    stats = json.loads(path.read_text()) if path.is_file() else {}
    stats["loaded_rows"] = data.num_rows
    stats["skipped_bad_rows"] = len(data.bad_rows)
    stats["bad_row_examples"] = [str(e) for e in data.bad_rows[:10]]
    path.write_text(json.dumps(jsonable(stats), indent=2))


# ------------------------------------------------------------------ synth


def _synth_run(ctx: RunContext) -> Dict[str, Any]:
    from pagerl.pipeline import jsonable
    from pagerl.sim.synth import synthesize_recipe

    out = ctx.run_dir / "data"
    stats = synthesize_recipe(ctx.recipe, out, progress=_synth_progress(ctx))
    (out / "stats.json").write_text(json.dumps(jsonable(stats), indent=2))
    return stats


def _synth_progress(ctx: RunContext) -> Callable[[str, int, int], None]:
    displays: Dict[str, Any] = {}

    def tick(split: str, done: int, total: int) -> None:
        if split not in displays:
            displays[split] = CONSOLE.progress(f"synth {split}", total, ctx.recipe.tracking.progress_every_s)
        displays[split].update(done)
        if done >= total:
            displays[split].close()

    return tick


def _synth_headline(ctx: RunContext) -> str:
    meta = _json(ctx.run_dir / "data" / "synth.json") or {}
    stats = meta.get("stats", {})
    train, held = stats.get("train", {}), stats.get("eval", {})
    return (f"{train.get('num_requests', '?')} training and {held.get('num_requests', '?')} held-out impressions; "
            f"logging policy: {train.get('mean_logging_expected_clicks', float('nan')):.3f} expected clicks per page")


register_stage(Stage(
    name="synth", summary="simulated logged impressions (train and held-out)",
    reads=("sim.*", "env.*"), writes="data",
    run=_synth_run, complete=lambda ctx: (ctx.run_dir / "data" / "stats.json").is_file()
    and (ctx.run_dir / "data" / "synth.json").is_file(),
    headline=_synth_headline,
))


# ------------------------------------------------------------------ rllib


def _rllib_run(ctx: RunContext) -> Dict[str, Any]:
    from pagerl.eval.rllib_baseline import run_rllib_stage

    return run_rllib_stage(ctx.recipe, ctx.run_dir)


def _rllib_complete(ctx: RunContext) -> bool:
    from pagerl.eval.policy_kinds import MANIFEST

    return (ctx.run_dir / "rllib" / "policy" / MANIFEST).is_file() and (ctx.run_dir / "rllib" / "summary.json").is_file()


def _rllib_headline(ctx: RunContext) -> str:
    summary = _json(ctx.run_dir / "rllib" / "summary.json") or {}
    first, last = summary.get("first") or {}, summary.get("last") or {}
    if "reward_mean" not in last:
        return ""
    start = f"{first['reward_mean']:.3f} -> " if "reward_mean" in first else ""
    return (f"PPO for {summary['iterations']} iterations: training pages' {summary['reward']} "
            f"{start}{last['reward_mean']:.3f}")


# Before the language-model stages, so each of their policies is compared with it in eval.
register_stage(Stage(
    name="rllib", summary="a non-LLM baseline: PPO (RLlib) over a candidate-scoring MLP, online in the simulator",
    reads=("rllib.*", "the environment (sim.*, env.*)"), writes="rllib",
    policy="rllib/policy", policy_kind="rllib_ppo", uses_ray=True,
    run=_rllib_run, complete=_rllib_complete, headline=_rllib_headline,
))


# -------------------------------------------------------------------- sft


def _sft_run(ctx: RunContext) -> Dict[str, Any]:
    from pagerl.train.sft import run_sft_stage

    return run_sft_stage(ctx.recipe, ctx.run_dir, ctx.train_data().impressions)


def _loss_headline(stage_name: str) -> Callable[[RunContext], str]:
    def headline(ctx: RunContext) -> str:
        from pagerl.tracking.metrics import metric_series, read_metrics

        steps, values = metric_series(read_metrics(ctx.run_dir, stage=stage_name), stage_name, "loss")
        if not steps or values[0] is None or values[-1] is None:
            return ""
        return f"loss {values[0]:.4f} at step {steps[0]} -> {values[-1]:.4f} at step {steps[-1]}"

    return headline


register_stage(Stage(
    name="sft", summary="behaviour cloning of the logged pages (Ray Train + DeepSpeed ZeRO)",
    reads=("logged impressions",), writes="sft", policy="sft/final", uses_ray=True,
    run=_sft_run, complete=lambda ctx: (ctx.run_dir / "sft" / "final" / "model.safetensors").is_file(),
    headline=_loss_headline("sft"),
))


# --------------------------------------------------------------------- rm


def _rm_run(ctx: RunContext) -> Dict[str, Any]:
    from pagerl.rewards.rm_stage import run_rm_stage

    return run_rm_stage(ctx.recipe, ctx.run_dir, ctx.train_data().impressions, policy_dir=ctx.policy_dir)


def _rm_complete(ctx: RunContext) -> bool:
    from pagerl.rewards.models import HEADS_FILE

    return (ctx.run_dir / "rm" / "final" / HEADS_FILE).is_file() and (ctx.run_dir / "rm" / "quality.json").is_file()


def _rm_headline(ctx: RunContext) -> str:
    quality = _json(ctx.run_dir / "rm" / "quality.json") or {}
    acc = quality.get("pair_accuracy", {}).get("all", {})
    sim = quality.get("simulator") or {}
    parts = []
    if acc.get("page_accuracy") is not None:
        parts.append(f"held-out pair accuracy: page {acc['page_accuracy']:.3f}, item {acc['item_accuracy']:.3f} "
                     f"on {acc.get('pairs', 0)} pairs")
    if sim.get("page_spearman") is not None:
        parts.append(f"page-reward Spearman vs simulator {sim['page_spearman']:.3f}")
    return "; ".join(parts)


register_stage(Stage(
    name="rm", summary="page- and item-level reward models on four preference-pair families",
    reads=("logged impressions", "the policy's tokenizer and backbone, if a policy stage ran before"),
    writes="rm", uses_ray=True, run=_rm_run, complete=_rm_complete, headline=_rm_headline,
))


# --------------------------------------------------------------------- rl


def _rl_run(ctx: RunContext) -> Dict[str, Any]:
    from pagerl.rl.stage import run_rl_stage

    return run_rl_stage(ctx.recipe, ctx.run_dir, ctx.train_data().impressions,
                        ctx.recipe.rl.init_policy_dir or ctx.policy_dir)


def _rl_headline(ctx: RunContext) -> str:
    summary = _json(ctx.run_dir / "rl" / "summary.json") or {}
    first, last = summary.get("first") or {}, summary.get("last") or {}
    if not last:
        return ""
    return (f"{summary['algorithm']} for {summary['steps']} steps: reward {first['reward_total']:.3f} -> "
            f"{last['reward_total']:.3f}, KL {last['kl']:.4f}"
            + (f", sync max |delta| {last['sync_delta_max']:.2g}" if "sync_delta_max" in last else ""))


register_stage(Stage(
    name="rl", summary="RL of the policy on mixed-grained token rewards (rollout, reward and ZeRO trainer actors)",
    reads=("rl.init_policy_dir, or the policy of the stage before", "training requests",
           "the reward source (rewards.*)"),
    writes="rl", policy="rl/final", uses_ray=True, run=_rl_run,
    complete=lambda ctx: (ctx.run_dir / "rl" / "final" / "model.safetensors").is_file()
    and (ctx.run_dir / "rl" / "summary.json").is_file(),
    headline=_rl_headline,
))


# ------------------------------------------------------------------- eval


def _eval_run(ctx: RunContext) -> Dict[str, Any]:
    from pagerl.eval.evaluate import run_eval_stage

    return run_eval_stage(ctx.recipe, ctx.run_dir, policies=dict(ctx.policies))


def _eval_complete(ctx: RunContext) -> bool:
    results = _json(ctx.run_dir / "eval" / "results.json")
    return results is not None and results.get("policies", {}) == dict(ctx.policies)


def _eval_headline(ctx: RunContext) -> str:
    results = _json(ctx.run_dir / "eval" / "results.json") or {}
    methods = results.get("methods", {})
    cells = [f"{name} {row['expected_clicks']:.3f}" for name, row in methods.items()]
    return f"expected clicks on {results.get('num_requests', '?')} held-out requests: " + ", ".join(cells)


register_stage(Stage(
    name="eval", summary="every policy of the run and the baselines, scored by the simulator's ground truth",
    reads=("held-out requests", "every policy the run produced"), writes="eval",
    run=_eval_run, complete=_eval_complete, headline=_eval_headline,
))
