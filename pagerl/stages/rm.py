"""The ``rm`` stage: preference pairs -> page/item reward models -> quality report.

Reads the logged impressions (and the policy's tokenizer and backbone, when a
policy stage ran before); writes ``rm/`` (``init/``, ``checkpoint_*/``,
``final/``, ``pairs.json``, ``quality.json``); complete once
``rm/final/reward_model.json`` and ``rm/quality.json`` exist; its report
sections are the training loss curve and the reward models' quality.

1. Build preference pairs from the logged training impressions
   (:mod:`pagerl.rewards.pairs`) and tokenize them once, with the logged
   pages and their click labels when click supervision is on
   (:mod:`pagerl.rewards.clicks`).
2. Write the initial reward model into ``<run_dir>/rm/init``: the backbone of
   the SFT policy (``policy_dir``, normally ``<run_dir>/sft/final``) with fresh
   heads, or, without a policy, the backbone of a freshly built policy of the
   recipe's model (``model.source``: tiny or a local Hugging Face dir), with
   its tokenizer.
3. Train on Ray Train + DeepSpeed ZeRO (:func:`pagerl.rewards.rm_loop.rm_worker`),
   checkpointing into ``<run_dir>/rm/checkpoint_*``; a stage started again on
   the same run directory resumes from the latest complete checkpoint.
4. Export the trained model to ``<run_dir>/rm/final`` (one directory: one
   shared backbone with a page head and an item head, see
   :mod:`pagerl.rewards.models`; load it with :func:`load_reward_models`).
   The pair counts per family and what was dropped and why are printed and
   kept in ``<run_dir>/rm/pairs.json``.
5. Score the held-out impressions (:mod:`pagerl.rewards.quality`) into
   ``<run_dir>/rm/quality.json`` and the run's metrics (stage ``rm``).

Held-out impressions come from ``eval_impressions`` when given, else from
``data.eval_files`` (or the synth stage's ``<run_dir>/data/eval.jsonl``). The
simulator correlations need the world the data came from; it is rebuilt from
``sim`` and ``run.seed`` when the data is the synth stage's (a
``synth.json`` in ``<run_dir>/data``), and the correlations are skipped,
with the reason in the report, otherwise.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import ray
import torch

from pagerl.config.schema import RecipeConfig
from pagerl.data.io import read_impressions
from pagerl.data.types import Impression
from pagerl.distributed import checkpoint_format as ckpt
from pagerl.distributed.launch import fit_stage
from pagerl.envs import env_from_recipe
from pagerl.envs.synth import load_synth_meta
from pagerl.errors import PageRLError
from pagerl.models.build import build_policy, load_policy
from pagerl.models.logprobs import backbone_of
from pagerl.rewards.clicks import encode_impressions, head_outputs, uses_clicks
from pagerl.rewards.models import HEADS_FILE, WEIGHTS_FILE, RewardModel, load_reward_models
from pagerl.rewards.pairs import FAMILIES, PairSet, PreferencePair, build_pairs
from pagerl.rewards.quality import flat_metrics, reward_quality
from pagerl.rewards.rm_loop import rm_worker
from pagerl.rl import credit_fidelity as fidelity
from pagerl.stages.base import RunContext, Stage, json_of, register_stage
from pagerl.tokenization.serialize import candidate_token_ids, encode_prompt, encode_response, response_marker_length
from pagerl.tokenization.tokenizer import build_tokenizer, load_policy_tokenizer
from pagerl.tracking.metrics import MetricsLogger
from pagerl.tracking.report_parts import curve_section, fmt, markdown_table, skipped
from pagerl.train.batching import Schedule

log = logging.getLogger(__name__)

STAGE = "rm"
QUALITY_FILE = "quality.json"
PAIRS_FILE = "pairs.json"
EXPORT_FILES = ("config.json", WEIGHTS_FILE, HEADS_FILE, "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "chat_template.jinja")
# Family codes of the tokenized examples (ints travel cheaper than strings).
FAMILY_CODE = {name: code for code, name in enumerate(FAMILIES)}


class RMStageError(PageRLError):
    """The reward-model stage cannot run on what it was given."""


def encode_pairs(tokenizer: Any, pairs: Sequence[PreferencePair]) -> List[Dict[str, Any]]:
    """Token ids of each pair: the shared prompt, both responses, the differing slots, weight, family."""
    prompts: Dict[str, List[int]] = {}
    out = []
    for pair in pairs:
        rid = pair.request.request_id
        if rid not in prompts:
            prompts[rid] = encode_prompt(tokenizer, pair.request)
        out.append({
            "prompt": prompts[rid],
            "chosen": encode_response(tokenizer, pair.request, list(pair.chosen)),
            "rejected": encode_response(tokenizer, pair.request, list(pair.rejected)),
            "slots": list(pair.slots),
            "weight": pair.weight,
            "family": FAMILY_CODE[pair.family],
        })
    return out


def prepare_initial_model(recipe: RecipeConfig, impressions: Sequence[Impression], init_dir: Path,
                          policy_dir: Optional[str | Path]) -> Any:
    """Write (or reuse, when resuming) the initial reward model and its tokenizer into ``init_dir``."""
    if (init_dir / HEADS_FILE).is_file():
        return load_policy_tokenizer(str(init_dir))
    if policy_dir is not None:
        policy_dir = Path(policy_dir)
        if not (policy_dir / "config.json").is_file():
            raise RMStageError(f"{policy_dir}: no policy there (expected the SFT stage's export, <run_dir>/sft/final)")
        tokenizer = load_policy_tokenizer(str(policy_dir))
        policy = load_policy(policy_dir, recipe.model)
    elif recipe.model.source == "tiny":
        tokenizer = build_tokenizer(recipe.model, impressions)
        policy = build_policy(recipe.model, tokenizer, seed=recipe.run.seed)
    else:
        tokenizer = load_policy_tokenizer(recipe.model)
        policy = build_policy(recipe.model, tokenizer, seed=recipe.run.seed)
    model = RewardModel(
        backbone_of(policy),
        index_token_ids=candidate_token_ids(tokenizer, int(recipe.model.max_candidates)),
        candidate_echo=recipe.rm.candidate_echo,
        page_pooling=recipe.rm.page_pooling,
        seed=recipe.run.seed,
        marker_len=response_marker_length(tokenizer),
        **head_outputs(recipe.rm),
    )
    tmp = init_dir.with_name(init_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(init_dir)
    return tokenizer


def load_eval_impressions(recipe: RecipeConfig, run_dir: Path) -> List[Impression]:
    files = list(recipe.data.eval_files) or [str(run_dir / "data" / "eval.jsonl")]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise RMStageError(
            f"rm quality report: held-out impressions {missing} not found; list them in data.eval_files "
            "or run the synth stage first"
        )
    return read_impressions(files, on_bad_row=recipe.data.on_bad_row,
                            max_bad_fraction=recipe.data.max_bad_fraction).impressions


def simulator_for(recipe: RecipeConfig, run_dir: Path) -> tuple:
    """``(environment, "")`` that made the synth stage's data (pagerl.envs), else ``(None, why not)``."""
    if recipe.data.train_files or recipe.data.eval_files:
        return None, "data comes from data.train_files / data.eval_files, not from the simulator"
    meta = load_synth_meta(run_dir / "data")
    if meta is None:
        return None, f"no {run_dir / 'data' / 'synth.json'}: the data was not made by the synth stage"
    made_by = (str(meta.get("env", "pagesim")), int(meta.get("seed", recipe.run.seed)))
    if made_by != (str(recipe.env.name), int(recipe.run.seed)):
        return None, (f"the data was made by environment {made_by[0]!r} under seed {made_by[1]}, "
                      f"not the recipe's env.name={recipe.env.name!r}, run.seed={recipe.run.seed}")
    return env_from_recipe(recipe), ""


def run_rm_stage(recipe: RecipeConfig, run_dir: Path, impressions: Sequence[Impression],
                 policy_dir: Optional[str | Path] = None,
                 eval_impressions: Optional[Sequence[Impression]] = None) -> Dict[str, Any]:
    """Train the page/item reward models; returns paths, pair stats and (when finished) the quality report.

    Returns ``{"model_dir", "checkpoint", "step", "total_steps", "finished",
    "pairs": {...}, "quality": {...} | None, "quality_path"}``. ``model_dir``
    is ``<run_dir>/rm/final`` once finished (the latest checkpoint otherwise).
    Needs a Ray connection (``pagerl.distributed.ray_cluster.connect``).
    """
    run_dir = Path(run_dir)
    stage_dir = run_dir / STAGE
    stage_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    pairs = build_pairs(impressions, recipe.pairs, recipe.run.seed)
    log.info("[rm] train %s", pairs.summary())
    trainable = [p for p in pairs.pairs if p.weight > 0]
    if not trainable:
        raise RMStageError(
            f"rm: no training pairs with a positive weight from {len(impressions)} impressions "
            "(check pairs.<family>.enabled / .weight and that the data has clicks)"
        )
    tokenizer = prepare_initial_model(recipe, impressions, stage_dir / "init", policy_dir)
    examples = encode_pairs(tokenizer, trainable)
    s = recipe.rm
    schedule = Schedule(len(examples), s.micro_batch_size, s.grad_accum_steps,
                        recipe.distributed.num_workers, s.epochs, s.max_steps)
    if schedule.steps_per_epoch < 1:
        raise RMStageError(
            f"rm: {len(examples)} training pairs cannot fill one global batch of {schedule.global_batch} "
            "(rm.micro_batch_size x rm.grad_accum_steps x distributed.num_workers): lower those or add data"
        )
    logged = encode_impressions(tokenizer, impressions, recipe.pairs) if uses_clicks(s) else []
    if logged and len(logged) < schedule.global_batch:
        raise RMStageError(
            f"rm.click_loss_weight / rm.page_click_loss_weight: {len(logged)} training impressions cannot fill "
            f"one global batch of {schedule.global_batch}: lower rm.micro_batch_size or add data"
        )
    pair_stats = {"train": pairs.to_dict()}
    (stage_dir / PAIRS_FILE).write_text(json.dumps(pair_stats, indent=2))

    latest = ckpt.latest_checkpoint(stage_dir) if recipe.run.resume else None
    if latest is None or int(ckpt.read_trainer_state(latest)["step"]) < schedule.total_steps:
        log.info("[rm] %d pairs, %d steps of %d pairs on %d workers, ZeRO-%d%s", len(examples),
                 schedule.total_steps, schedule.global_batch, recipe.distributed.num_workers,
                 recipe.distributed.zero_stage, f", resuming from {latest}" if latest else "")
        latest = fit_stage(recipe, run_dir, STAGE, rm_worker, {
            "init_dir": str(stage_dir / "init"),
            "examples_ref": ray.put(examples),
            "impressions_ref": ray.put(logged),
        }, resume_from=latest, total_steps=schedule.total_steps,
           start_step=int(ckpt.read_trainer_state(latest)["step"]) if latest else 0)
    if latest is None:
        raise RuntimeError(f"{stage_dir}: the reward-model stage ended without a complete checkpoint")
    state = ckpt.read_trainer_state(latest)
    step = int(state["step"])
    finished = step >= schedule.total_steps
    final_dir = stage_dir / "final"
    result: Dict[str, Any] = {
        "model_dir": str(final_dir if finished else latest), "checkpoint": str(latest), "step": step,
        "total_steps": schedule.total_steps, "finished": finished, "pairs": pair_stats,
        "quality": None, "quality_path": None,
    }
    if not finished:
        return result
    path = stage_dir / QUALITY_FILE
    if path.is_file() and (final_dir / HEADS_FILE).is_file():
        saved = json.loads(path.read_text())
        if saved.get("step") == step and saved.get("checkpoint") == str(latest):
            log.info("[rm] already finished: %s (quality in %s)", final_dir, path)
            result.update(quality=saved, quality_path=str(path), pairs=saved.get("pairs", pair_stats))
            return result
    export_reward_model(latest, final_dir)

    if eval_impressions is None:
        eval_impressions = load_eval_impressions(recipe, run_dir)
    quality = evaluate_reward_models(recipe, run_dir, final_dir, eval_impressions,
                                     train_impressions=impressions, policy_dir=policy_dir)
    pair_stats["eval"] = quality.pop("eval_pairs")
    quality["pairs"] = pair_stats
    quality["step"] = step
    quality["checkpoint"] = str(latest)
    quality["seconds"] = round(time.perf_counter() - started, 1)
    path.write_text(json.dumps(quality, indent=2, allow_nan=True))
    with MetricsLogger.from_config(run_dir, recipe.tracking) as metrics:
        numbers = flat_metrics(quality)
        numbers.update({f"pairs_{f}": float(n) for f, n in pair_stats["train"]["counts"].items()})
        numbers["pairs_total"] = float(pair_stats["train"]["total"])
        metrics.log(STAGE, step, numbers)
    _log_quality(quality)
    result.update(quality=quality, quality_path=str(path))
    return result


def evaluate_reward_models(recipe: RecipeConfig, run_dir: Path, model_dir: Path,
                           eval_impressions: Sequence[Impression],
                           train_impressions: Sequence[Impression] = (),
                           policy_dir: Optional[str | Path] = None) -> Dict[str, Any]:
    """The quality report (:func:`pagerl.rewards.quality.reward_quality`) of the model in ``model_dir``,
    with the credit fidelity of the recipe's reward setting (:func:`credit_fidelity_report`) when
    ``train_impressions`` and the starting policy ``policy_dir`` are given.

    Also used on ``<run_dir>/rm/init`` to show what an untrained model scores.
    """
    eval_pairs: PairSet = build_pairs(eval_impressions, recipe.pairs, recipe.run.seed)
    models = load_reward_models(model_dir, batch_size=recipe.rm.score_batch_size, dtype=recipe.model.dtype,
                                attn_implementation=recipe.model.attn_implementation)
    sim, why = simulator_for(recipe, run_dir)
    with torch_threads(max(1, int(recipe.distributed.cpus_per_worker))):
        report = reward_quality(models, eval_pairs.pairs, eval_impressions, recipe.rm, recipe.run.seed, sim)
        report["credit_fidelity"], skipped = credit_fidelity_report(recipe, models, sim, why, train_impressions,
                                                                    policy_dir)
    if skipped:
        report["credit_fidelity_skipped"] = skipped
    if sim is None:
        report["simulator_skipped"] = why
    report["eval_pairs"] = eval_pairs.to_dict()
    return report


def credit_fidelity_report(recipe: RecipeConfig, models: Any, env: Any, no_env_why: str,
                           train_impressions: Sequence[Impression], policy_dir: Optional[str | Path],
                           settings: Optional[Dict[str, Any]] = None) -> tuple:
    """``(report, "")`` of :func:`pagerl.rl.credit_fidelity.credit_fidelity` for ``settings`` (default: the
    recipe's setting and its w_page sweep) on ``rm.fidelity_requests`` training requests, sampled by the
    policy in ``policy_dir`` as the rollout samples; ``(None, why not)`` when it cannot be measured."""
    count = int(recipe.rm.fidelity_requests)
    if count <= 0:
        return None, "rm.fidelity_requests is 0"
    if env is None:
        return None, f"no exact scorer: {no_env_why}"
    if policy_dir is None or not (Path(policy_dir) / "config.json").is_file():
        return None, "no policy for RL to start from (the credit is measured on its own pages)"
    if not train_impressions:
        return None, "no training requests"
    rollout = recipe.rl.rollout
    if rollout.samples_per_request < 2:
        return None, "rl.rollout.samples_per_request is 1: a group estimator needs two pages per request"
    policy = load_policy(Path(policy_dir), recipe.model).eval()
    sampled = fidelity.sample_pages(
        policy, load_policy_tokenizer(str(policy_dir)),
        fidelity.training_requests(train_impressions, count, recipe.run.seed),
        samples=int(rollout.samples_per_request), temperature=float(rollout.temperature),
        top_p=float(rollout.top_p), seed=int(recipe.run.seed), batch_size=int(rollout.batch_size))
    if settings is None:
        settings = fidelity.recipe_settings(recipe.rewards, recipe.rl.slot_credit)
    return fidelity.credit_fidelity(models.score, env, sampled, settings, recipe.rl.algorithm), ""


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the driver's scoring on one worker's CPU share, then restore the thread count.

    Measured on a busy 2-core machine: scoring 600 pages took 0.5 s on one
    thread and 6 s on two (the threads wait on each other while other
    processes hold the cores).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def export_reward_model(checkpoint_dir: Path, target: Path) -> None:
    """Publish the model part of a checkpoint (config, weights, heads, tokenizer) as ``target``."""
    ckpt.export_files(checkpoint_dir, target, EXPORT_FILES)


def _log_quality(quality: Dict[str, Any]) -> None:
    acc = quality["pair_accuracy"]
    parts = [f"{f} page {row['page_accuracy']:.3f} item {row['item_accuracy']:.3f} (n={row['pairs']})"
             for f, row in acc.items()]
    log.info("[rm] held-out pair accuracy: %s", "; ".join(parts))
    sim = quality.get("simulator")
    if sim:
        log.info(f"[rm] Spearman vs simulator: page {sim['page_spearman']:.3f} "
                 f"(pooled {sim['page_spearman_pooled']:.3f}), summed items {sim['item_sum_spearman']:.3f}, "
                 f"item {sim['item_spearman']:.3f} (same slot {sim['item_spearman_same_slot']:.3f}, "
                 f"pooled {sim['item_spearman_pooled']:.3f})")
    credit = (quality.get("credit_fidelity") or {}).get("settings") or {}
    if credit:
        log.info("[rm] credit fidelity on the starting policy's pages: %s",
                 ", ".join(f"{name} {row['pooled']:.3f}" for name, row in credit.items() if row["pooled"] is not None))


# ------------------------------------------------------------------ report and registry entry


def _rm_quality_section(quality: Optional[Any]) -> str:
    """Held-out pair accuracy per family and Spearman against the simulator (``rm/quality.json``)."""
    title = "Reward-model quality"
    if not quality:
        return skipped(title, "`rm/quality.json` not found")
    lines = [f"## {title}", "",
             "Held-out pair accuracy: share of preference pairs built from the held-out impressions "
             "whose chosen page the model scores higher (`pagerl.rewards.quality.pair_accuracy`); "
             "`label vs truth` is how often the pair's label itself agrees with the simulator.", ""]
    rows = [[family, acc.get("pairs"), fmt(acc.get("page_accuracy")), fmt(acc.get("item_accuracy")),
             fmt(acc.get("label_truth_agreement"))]
            for family, acc in (quality.get("pair_accuracy") or {}).items()]
    lines += markdown_table(["family", "pairs", "page RM", "item RM", "label vs truth"], rows)
    sim = quality.get("simulator") or {}
    if sim:
        lines += ["", "Spearman correlation with the simulator's ground truth on held-out requests "
                  "(`pagerl.rewards.quality.simulator_correlation`): page reward vs expected clicks of "
                  "the page, item reward vs the slot's expected clicks; within-request unless pooled.", ""]
        lines += markdown_table(["metric", "value"], [[k, fmt(v)] for k, v in sim.items()])
    lines += credit_fidelity_lines(quality.get("credit_fidelity"), quality.get("credit_fidelity_skipped"))
    return "\n".join(lines)


def credit_fidelity_lines(report: Optional[Mapping[str, Any]], skipped: Optional[str] = None) -> List[str]:
    """The credit-fidelity table (:mod:`pagerl.rl.credit_fidelity`): one row per reward setting."""
    if not report:
        return ["", f"Credit fidelity: not measured ({skipped})."] if skipped else []
    lines = ["", f"Credit fidelity (`pagerl.rl.credit_fidelity`): on {report['requests']} training requests, "
             f"{report['samples']} pages each sampled by the policy RL starts from, the Pearson correlation "
             f"of each setting's token credit ({report['estimator']}, learned rewards) with the credit of "
             "the exact rewards (each slot's expected clicks and those of the slots below it), over every "
             "item token, and per slot.", ""]
    rows = []
    for name, row in report["settings"].items():
        rows.append([name, fmt(row["w_page"]), fmt(row["w_item"]), row["normalize"], row["page_reward"],
                     row["slot_credit"], fmt(row["pooled"]), " / ".join(fmt(v) for v in row["per_slot"])])
    lines += markdown_table(["setting", "w_page", "w_item", "normalize", "page reward", "slot credit",
                             "fidelity", "per slot"], rows)
    return lines


def _complete(ctx: RunContext) -> bool:
    return (ctx.run_dir / "rm" / "final" / HEADS_FILE).is_file() and (ctx.run_dir / "rm" / QUALITY_FILE).is_file()


def _headline(ctx: RunContext) -> str:
    quality = json_of(ctx.run_dir / "rm" / QUALITY_FILE) or {}
    acc = quality.get("pair_accuracy", {}).get("all", {})
    sim = quality.get("simulator") or {}
    parts = []
    if acc.get("page_accuracy") is not None:
        parts.append(f"held-out pair accuracy: page {acc['page_accuracy']:.3f}, item {acc['item_accuracy']:.3f} "
                     f"on {acc.get('pairs', 0)} pairs")
    if sim.get("page_spearman") is not None:
        parts.append(f"page-reward Spearman vs simulator {sim['page_spearman']:.3f}")
    return "; ".join(parts)


def _report(run_dir: Path, plots: Path) -> List[str]:
    return [curve_section(run_dir, plots, "rm", "Reward-model learning curve"),
            _rm_quality_section(json_of(run_dir / "rm" / QUALITY_FILE))]


ENTRY = register_stage(Stage(
    name="rm", summary="page- and item-level reward models on four preference-pair families",
    reads=("logged impressions", "the policy's tokenizer and backbone, if a policy stage ran before"),
    writes="rm", uses_ray=True,
    run=lambda ctx: run_rm_stage(ctx.recipe, ctx.run_dir, ctx.train_data().impressions, policy_dir=ctx.policy_dir),
    complete=_complete, headline=_headline, report=_report,
))
