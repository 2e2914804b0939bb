"""The evaluation stage: pages for held-out requests, scored exactly by the simulator.

Every method (the learned policy and the reference policies of
:mod:`pagerl.eval.baselines`) lays out one page per held-out request; each
page is scored by the environment's ``score_page`` (``pagesim``:
:meth:`pagerl.sim.simulator.Simulator.score_page`), which
computes expectations under the simulator's ground truth (no sampling noise
in the metric itself). A method's number is the mean over requests, with its
standard error over requests (sample standard deviation / sqrt(n)) and a
percentile bootstrap interval over requests (``eval.bootstrap_resamples`` at
``eval.ci_level``, :mod:`pagerl.eval.stats`), so two methods can be compared
with the spread the request sample implies.

Invalid pages (our convention, stated in the report):

- a page the simulator rejects (wrong length, a non-candidate, a repeat) or a
  missing page (``None``: the learned policy's output could not be parsed)
  counts as invalid in ``valid_rate`` and scores 0 on ``ndcg``,
  ``expected_clicks`` and ``expected_gmv`` -- a page that cannot be shown
  earns nothing, so those means are over all requests;
- ``diversity`` and ``redundancy`` describe what a page is made of, so they
  are averaged over the valid pages only (``valid_count`` of them). Scoring
  an invalid page as 0 there would make invalid output look non-redundant.

Outputs: ``<run_dir>/eval/results.json`` (the table the report reads),
``<run_dir>/eval/pages.jsonl`` (one line per request: every method's page,
its validity and its scores, for inspection and paired comparisons), and the
means in ``metrics.jsonl`` / TensorBoard under stage ``eval``. When the run
has a trained reward model, ``results["reward_model_view"]`` holds its scores
of the same pages (:mod:`pagerl.eval.reward_view`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from pagerl.data.io import read_impressions
from pagerl.data.types import Request
from pagerl.errors import PageRLError
from pagerl.eval.baselines import BASELINE_ENVS, BASELINES, baseline_rng
from pagerl.eval.policy_kinds import saved_policy_pages
from pagerl.eval.reward_view import reward_model_dir, reward_model_view
from pagerl.eval.stats import Bootstrap, mean_se
from pagerl.envs import PageEnv, env_from_recipe
from pagerl.sim.simulator import PageScore
from pagerl.tracking.metrics import MetricsLogger
from pagerl.tracking.progress import Progress

METRICS = ("ndcg", "expected_clicks", "expected_gmv", "valid_rate", "diversity", "redundancy")
# Averaged over valid pages only (see the module doc).
COMPOSITION_METRICS = ("diversity", "redundancy")
# Reason of a page a method did not produce at all.
MISSING_PAGE = "no page"
# Reference policies that know the ground truth: listed after the learned policy.
CEILINGS = ("greedy", "taste_blind_oracle", "oracle")

Page = Optional[Sequence[str]]


class EvalError(PageRLError, ValueError):
    """The evaluation cannot run as configured (bad input, not a bug)."""


# ----------------------------------------------------------------- scoring


def score_method(
    pages: Sequence[Page], requests: Sequence[Request], sim: PageEnv, k: Optional[int] = None
) -> List[PageScore]:
    """The environment's exact score of each page (``None``: an invalid "no page")."""
    if len(pages) != len(requests):
        raise ValueError(f"{len(pages)} pages for {len(requests)} requests: expected one page per request")
    scores = []
    for request, page in zip(requests, pages):
        if page is None:
            scores.append(PageScore(0.0, 0.0, 0.0, 0.0, 0.0, valid=False, reason=MISSING_PAGE))
        else:
            scores.append(sim.score_page(request, list(page), k=k))
    return scores


def aggregate(scores: Sequence[PageScore], bootstrap: Optional[Bootstrap] = None) -> Dict[str, Any]:
    """Per metric of :data:`METRICS`: ``<metric>`` (mean), ``<metric>_se`` and,
    with ``bootstrap``, ``<metric>_ci`` (``[lo, hi]`` over requests), plus
    ``count`` (requests) and ``valid_count`` (valid pages).

    Undefined values are None (JSON null), never NaN: ``results.json`` must
    stay valid JSON for any reader.
    """
    valid = [s for s in scores if s.valid]
    out: Dict[str, Any] = {"count": len(scores), "valid_count": len(valid)}
    for name in METRICS:
        if name == "valid_rate":
            values = [float(s.valid) for s in scores]
        elif name in COMPOSITION_METRICS:
            values = [getattr(s, name) for s in valid]
        else:
            values = [getattr(s, name) for s in scores]
        if any(v is None for v in values):
            # The environment has no such quantity (pagerl.envs: no prices, say).
            out[name] = out[f"{name}_se"] = None
            if bootstrap is not None:
                out[f"{name}_ci"] = None
            continue
        out[name], out[f"{name}_se"] = mean_se(values)
        if bootstrap is not None:
            out[f"{name}_ci"] = bootstrap.ci(values)
    return out


# Metrics of the paired comparison of the learned policy with each baseline.
PAIRED_METRICS = ("expected_clicks", "ndcg", "expected_gmv")


def paired_differences(learned: Sequence[PageScore], baseline: Sequence[PageScore],
                       bootstrap: Optional[Bootstrap] = None) -> Dict[str, Any]:
    """Per metric of :data:`PAIRED_METRICS`: mean and standard error of ``learned - baseline``
    over the same requests (with ``bootstrap``, its interval ``<metric>_diff_ci``), and the
    share of requests where the learned page scores higher.

    Both methods face the same requests, so the per-request difference has a
    much smaller spread than either method alone: its standard error, not the
    two separate ones, says whether one is ahead of the other.
    """
    if len(learned) != len(baseline):
        raise ValueError(f"paired comparison of {len(learned)} and {len(baseline)} scores: expected one per request")
    out: Dict[str, Any] = {}
    for name in PAIRED_METRICS:
        pairs = [(getattr(a, name), getattr(b, name)) for a, b in zip(learned, baseline)]
        if any(x is None or y is None for x, y in pairs):
            out.update({f"{name}_diff": None, f"{name}_diff_se": None, f"{name}_win_rate": None})
            if bootstrap is not None:
                out[f"{name}_diff_ci"] = None
            continue
        diff = [x - y for x, y in pairs]
        out[f"{name}_diff"], out[f"{name}_diff_se"] = mean_se(diff)
        if bootstrap is not None:
            out[f"{name}_diff_ci"] = bootstrap.ci(diff)
        out[f"{name}_win_rate"] = float(np.mean([d > 0 for d in diff])) if diff else None
    return out


def evaluate(
    policies: Mapping[str, Sequence[Page]],
    requests: Sequence[Request],
    sim: PageEnv,
    k: Optional[int] = None,
) -> Dict[str, Dict[str, Any]]:
    """``{method: aggregate(...)}`` for each method's pages (one per request, None = no page).

    ``k`` is the NDCG cut-off passed to ``score_page`` (None: the page size).
    """
    table: Dict[str, Dict[str, Any]] = {}
    for method, pages in policies.items():
        if len(pages) != len(requests):
            raise ValueError(f"method {method!r} has {len(pages)} pages for {len(requests)} requests")
        table[method] = aggregate(score_method(pages, requests, sim, k=k))
    return table


# ------------------------------------------------------------------- stage


@dataclass
class MethodPages:
    """One method's pages, plus why the ones it could not produce are missing."""

    pages: List[Page]
    # Per request: the generation's parse result, for a learned policy only.
    generation: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def heldout_requests(recipe: Any, run_dir: Path, limit: Optional[int] = None) -> List[Request]:
    """The first ``eval.num_requests`` requests (0: all) of the eval data files, or the first
    ``limit`` (0: ``eval.num_requests``) when given (the RL stage's ``rl.eval_requests``).

    Files: ``data.eval_files``, or ``<run_dir>/data/eval.jsonl`` (what the
    synth stage writes) when that list is empty.
    """
    files = heldout_files(recipe, run_dir)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        key = "data.eval_files" if recipe.data.eval_files else "the synth stage's output"
        raise EvalError(f"{key}: held-out data file(s) not found: {', '.join(missing)}")
    loaded = read_impressions(files, on_bad_row=recipe.data.on_bad_row,
                              max_bad_fraction=recipe.data.max_bad_fraction)
    print(f"[eval] {loaded.summary}", flush=True)
    key = "eval.num_requests" if not limit else "rl.eval_requests"
    limit = int(limit or recipe.eval.num_requests)
    if limit < 0:
        raise EvalError(f"{key}: expected 0 (all) or a positive count, got {limit}")
    requests = [imp.request for imp in loaded.impressions]
    if limit:
        requests = requests[:limit]
    if not requests:
        raise EvalError(f"{', '.join(files)}: no held-out requests to evaluate")
    return requests


def heldout_files(recipe: Any, run_dir: Path) -> List[str]:
    """``data.eval_files``, or ``<run_dir>/data/eval.jsonl`` (the synth stage's eval split)."""
    return list(recipe.data.eval_files) or [str(Path(run_dir) / "data" / "eval.jsonl")]


def obd_figures(recipe: Any) -> Dict[str, Any]:
    """``eval.obd_check``: BTS's click rate by IPS on the OBD sample's random campaign beside the
    rate BTS logged (:func:`pagerl.eval.obd_bts.bts_check`), at ``eval.ci_level``."""
    from pagerl.eval.obd_bts import bts_check, bts_check_figures

    return bts_check_figures(bts_check(str(recipe.eval.obd_campaign), level=float(recipe.eval.ci_level)))


def logs_ips_figures(recipe: Any, run_dir: Path, sim: PageEnv) -> Dict[str, Any]:
    """``eval.ips_check``: a related policy's expected clicks by IPS on every held-out logged
    impression beside its exact value (:func:`pagerl.eval.logs_ips.tempered_logging_check`)."""
    from pagerl.eval.logs_ips import tempered_logging_check

    files = heldout_files(recipe, run_dir)
    loaded = read_impressions(files, on_bad_row=recipe.data.on_bad_row, max_bad_fraction=recipe.data.max_bad_fraction)
    return {"files": files, **tempered_logging_check(loaded.impressions, sim, int(recipe.run.seed),
                                                     float(recipe.eval.ci_level))}


def policy_pages(recipe: Any, model_dir: str, requests: Sequence[Request]) -> MethodPages:
    """Pages of a saved policy for ``requests``, decoded as ``eval.*`` says.

    The checkpoint directory holds the model (safetensors) and the tokenizer
    it was trained with, whose stored serialization settings make the prompts
    exactly those of training. An invalid generated page (possible only with
    ``eval.constrained: false``) becomes None for scoring; its parsed prefix
    and the parser's reason are kept for ``pages.jsonl``.
    """
    from pagerl.models.build import load_policy
    from pagerl.models.generate import generate_pages
    from pagerl.tokenization.tokenizer import load_policy_tokenizer

    model = load_policy(model_dir, recipe.model)
    tokenizer = load_policy_tokenizer(model_dir)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise EvalError(
            f"{model_dir}: the tokenizer has {len(tokenizer)} tokens but the model only {rows} embeddings; "
            "was the tokenizer saved with this checkpoint?"
        )
    progress = Progress("eval", total=len(requests), every_s=recipe.tracking.progress_every_s)
    generated: List[Any] = []
    for chunk, seed in decoding_chunks(recipe, requests):
        generated.extend(generate_pages(model, tokenizer, chunk, seed=seed, **decoding_options(recipe)))
        progress.update(len(generated))
    return learned_pages(generated)


# The RL stage's periodic evaluation (pagerl.rl.controller) decodes and scores with these too, on
# the rollout workers' synced weights, so its last point is this stage's number for the RL policy.


def decoding_options(recipe: Any) -> Dict[str, Any]:
    """The keyword arguments of :func:`pagerl.models.generate.generate_pages` that ``eval.*`` sets."""
    e = recipe.eval
    return {"greedy": e.decoding == "greedy", "temperature": float(e.temperature),
            "constrained": bool(e.constrained), "batch_size": int(e.batch_size)}


def decoding_chunks(recipe: Any, requests: Sequence[Request]) -> List[Tuple[List[Request], int]]:
    """``requests`` in chunks of ``eval.batch_size``, each with its own seed (``run.seed`` + its
    offset), so a chunk's pages depend neither on how far another chunk sampled nor on which
    process decodes it. (A chunk is one call of ``generate_pages``, which batches by prompt length.)"""
    size = int(recipe.eval.batch_size)
    return [(list(requests[start:start + size]), int(recipe.run.seed) + start)
            for start in range(0, len(requests), size)]


def learned_pages(generated: Sequence[Any]) -> MethodPages:
    """A learned policy's generated pages for scoring: an invalid one (possible only with
    ``eval.constrained: false``) becomes None, its parsed prefix and reason kept."""
    return MethodPages(
        pages=[list(g.item_ids) if g.valid else None for g in generated],
        generation=[{"items": list(g.item_ids), "valid": g.valid, "reason": g.reason, "detail": g.detail}
                    for g in generated],
    )


def eval_simulator(recipe: Any) -> PageEnv:
    """The environment whose ground truth scores every page: ``env.name`` of the recipe,
    its world fixed by ``run.seed`` (:func:`pagerl.envs.env_from_recipe`)."""
    return env_from_recipe(recipe)


def eval_k(recipe: Any) -> Optional[int]:
    """The NDCG cut-off passed to ``score_page`` (None: the page size)."""
    return int(recipe.eval.ndcg_k) or None


def baseline_pages(name: str, sim: PageEnv, requests: Sequence[Request], seed: int,
                   every_s: float = 10.0) -> MethodPages:
    """Pages of one registered baseline, from its own random stream."""
    fn, rng = BASELINES[name], baseline_rng(seed, name)
    progress = Progress(f"eval {name}", total=len(requests), every_s=every_s)
    pages: List[Page] = []
    inexact = 0
    for request in requests:
        page = fn(sim, request, rng)
        inexact += getattr(page, "exact", True) is False
        pages.append(list(page))
        progress.update(len(pages))
    notes = []
    if inexact:
        notes.append(f"`{name}`: {inexact} of {len(requests)} pages came from beam search, "
                     "not an exhaustive search (not proven optimal).")
    return MethodPages(pages=pages, notes=notes)


def _check_methods(recipe: Any, policies: Mapping[str, str]) -> List[str]:
    """The baselines to run, checked before any expensive work."""
    names = [str(b) for b in recipe.eval.baselines]
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise EvalError(f"eval.baselines: unknown baseline(s) {unknown}; known: {', '.join(sorted(BASELINES))}")
    if len(set(names)) != len(names):
        raise EvalError(f"eval.baselines: a baseline is listed twice: {names}")
    elsewhere = [b for b in names if b in BASELINE_ENVS and str(recipe.env.name) not in BASELINE_ENVS[b]]
    if elsewhere:
        raise EvalError(f"eval.baselines: {elsewhere} read hidden quantities of another environment "
                        f"({', '.join(f'{b}: {BASELINE_ENVS[b]}' for b in elsewhere)}), "
                        f"not of env.name={recipe.env.name!r}; drop them from eval.baselines")
    clash = sorted(set(policies) & set(names))
    if clash:
        raise EvalError(f"policy name {clash[0]!r} is also a baseline name in eval.baselines")
    if not policies and not names:
        raise EvalError("nothing to evaluate: no policy checkpoint and eval.baselines is empty")
    return names


def _method_order(baselines: Sequence[str], learned: Sequence[str]) -> List[str]:
    """Floors first, then the learned policies (in the order the run made them), then the ceilings."""
    floors = [b for b in baselines if b not in CEILINGS]
    ceilings = [b for b in baselines if b in CEILINGS]
    return floors + list(learned) + ceilings


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _page_record(page: Page, score: PageScore, generation: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    record: Dict[str, Any] = {
        "items": list(page) if page is not None else None,
        "valid": score.valid,
        "reason": score.reason,
        "ndcg": score.ndcg,
        "expected_clicks": score.expected_clicks,
        "expected_gmv": score.expected_gmv,
    }
    if generation is not None:
        # What the model produced, even when it was no valid page.
        record.update(items=generation["items"], generation_reason=generation["reason"],
                      generation_detail=generation["detail"])
    return record


def run_eval_stage(
    recipe: Any,
    run_dir: str | os.PathLike,
    policies: Optional[Mapping[str, str]] = None,
    step: int = 0,
) -> Dict[str, Any]:
    """Evaluate each policy of ``policies`` (name -> saved policy dir) and ``eval.baselines``.

    The environment is rebuilt from the recipe (``env.name``, its section and
    ``run.seed``: :func:`pagerl.envs.env_from_recipe`), the world the held-out
    data must come from (a request from another world is refused with a
    message saying so). ``step`` is the
    metrics step of the logged aggregates. Every learned policy is compared
    request by request with every baseline and with each policy made before
    it (``results["paired"][policy][other]``: policy minus other), so an RL
    policy is measured against the SFT policy it started from.
    """
    run_dir = Path(run_dir)
    policies = dict(policies or {})
    learned = list(policies)
    baselines = _check_methods(recipe, policies)
    requests = heldout_requests(recipe, run_dir)
    sim = eval_simulator(recipe)
    for i, request in enumerate(requests):
        # Fails fast, before any generation, on data from another world.
        try:
            sim.check_request(request)
        except ValueError as err:
            raise EvalError(f"held-out request {i} ({request.request_id!r}) is not one of the recipe's "
                            f"environment (env.name={recipe.env.name!r}, run.seed={recipe.run.seed}): {err}") from err
    k = eval_k(recipe)

    produced: Dict[str, MethodPages] = {}
    for name, model_dir in policies.items():
        # By the kind of policy the directory holds (pagerl.eval.policy_kinds): a language model, an RLlib module.
        produced[name] = saved_policy_pages(recipe, str(model_dir), requests, sim)
    for name in baselines:
        produced[name] = baseline_pages(name, sim, requests, recipe.run.seed, recipe.tracking.progress_every_s)
    order = _method_order(baselines, learned)
    scores = {name: score_method(produced[name].pages, requests, sim, k=k) for name in order}
    for name in learned:
        if not produced[name].generation:
            continue  # a policy that is not generated text (an RLlib scorer) has no parser's reasons
        # A missing learned page is invalid for the parser's reason (duplicate, no_eos, ...).
        scores[name] = [
            dataclasses.replace(s, reason=g["reason"]) if page is None else s
            for s, g, page in zip(scores[name], produced[name].generation, produced[name].pages)
        ]
    boot = Bootstrap(recipe.eval.bootstrap_resamples, recipe.eval.ci_level, recipe.run.seed)
    table = {name: aggregate(scores[name], boot) for name in order}

    page_sizes = {r.page_size for r in requests}
    invalid = {name: dict(Counter(s.reason for s in scores[name] if not s.valid)) for name in order}
    results: Dict[str, Any] = {
        "methods": table,
        "k": k or (page_sizes.pop() if len(page_sizes) == 1 else None),
        "num_requests": len(requests),
        "policies": {name: str(d) for name, d in policies.items()},
        "decoding": str(recipe.eval.decoding),
        "temperature": float(recipe.eval.temperature),
        "constrained": bool(recipe.eval.constrained),
        "seed": int(recipe.run.seed),
        "bootstrap": {"resamples": boot.resamples, "level": boot.level},
        "invalid_reasons": {name: counts for name, counts in invalid.items() if counts},
        # each learned policy minus each baseline and each earlier policy, request by request
        # (pagerl.eval.evaluate.paired_differences)
        "paired": {name: {other: paired_differences(scores[name], scores[other], boot)
                          for other in learned[:i] + baselines}
                   for i, name in enumerate(learned)},
        "notes": [note for name in order for note in produced[name].notes],
    }

    # The reward model's view of the same pages (pagerl.eval.reward_view), when the run has one.
    rm_dir = reward_model_dir(recipe, run_dir)
    results["reward_model_view"] = None if rm_dir is None else reward_model_view(
        rm_dir, requests,
        {name: [p if s.valid else None for p, s in zip(produced[name].pages, scores[name])] for name in order},
        learned, {name: learned[:i] + baselines for i, name in enumerate(learned)},
        batch_size=recipe.rm.score_batch_size, dtype=recipe.model.dtype,
        attn_implementation=recipe.model.attn_implementation)
    # Off-policy sanity checks: IPS estimates beside click rates known another way (report section
    # "Real logged clicks (Open Bandit Dataset)" and "IPS on the run's own logs").
    results["obd_check"] = obd_figures(recipe) if recipe.eval.obd_check else None
    results["ips_check"] = logs_ips_figures(recipe, run_dir, sim) if recipe.eval.ips_check else None

    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "results.json", results)
    tmp = out / "pages.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        for i, request in enumerate(requests):
            row = {"request_id": request.request_id, "pages": {}}
            for name in order:
                generation = produced[name].generation[i] if produced[name].generation else None
                row["pages"][name] = _page_record(produced[name].pages[i], scores[name][i], generation)
            handle.write(json.dumps(row, allow_nan=False) + "\n")
    tmp.replace(out / "pages.jsonl")

    with MetricsLogger.from_config(run_dir, recipe.tracking) as logger:
        logger.log("eval", step, {f"{name}/{metric}": row[metric]
                                  for name, row in table.items() for metric in METRICS
                                  if row[metric] is not None})
    print(format_table(table, results["k"]), flush=True)
    return results


def format_table(table: Mapping[str, Mapping[str, Any]], k: Optional[int] = None) -> str:
    """The means as a fixed-width text table, for the console."""
    heads = [f"ndcg@{k}" if m == "ndcg" and k else m for m in METRICS]
    width = max(12, *(len(name) + 2 for name in table))
    lines = [f"{'method':<{width}}" + "".join(f"{h:>17}" for h in heads)]
    for name, row in table.items():
        cells = "".join(f"{row[m]:>17.4f}" if row[m] is not None else f"{'-':>17}" for m in METRICS)
        lines.append(f"{name:<{width}}" + cells)
    return "\n".join(lines)


__all__ = [
    "METRICS",
    "EvalError",
    "aggregate",
    "evaluate",
    "format_table",
    "heldout_requests",
    "run_eval_stage",
    "score_method",
]
