"""The ``eval`` stage: every policy of the run and the baselines, scored on held-out requests.

Reads the held-out requests (``data.eval_files`` or the synth stage's eval
split, :mod:`pagerl.eval.pages`) and every policy the run produced; writes
``eval/results.json`` (the table the report reads: means, standard errors,
intervals, paired comparisons, invalid reasons, the reward model's view and the
off-policy checks) and ``eval/pages.jsonl`` (one line per request: every
method's page, its validity and its scores), and the means in
``metrics.jsonl`` under stage ``eval``. It is complete once ``results.json``
lists exactly the run's current policies. Scoring is :mod:`pagerl.eval.scoring`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from matplotlib.figure import Figure

from pagerl.data.io import read_impressions
from pagerl.envs import PageEnv
from pagerl.eval.baseline_policies import BASELINE_ENVS, BASELINES
from pagerl.eval.logs_ips import tempered_logging_check
from pagerl.eval.obd_bts import bts_check, bts_check_figures
from pagerl.eval.pages import baseline_pages, eval_k, eval_simulator, heldout_files, heldout_requests
from pagerl.eval.policy_kinds import saved_policy_pages
from pagerl.eval.reward_view import reward_model_dir, reward_model_view
from pagerl.eval.scoring import (
    CEILINGS,
    METRICS,
    EvalError,
    MethodPages,
    Page,
    aggregate,
    format_table,
    paired_differences,
    score_method,
)
from pagerl.eval.stats import Bootstrap
from pagerl.sim.simulator import PageScore
from pagerl.stages.base import RunContext, Stage, json_of, register_stage
from pagerl.tracking.metrics import MetricsLogger
from pagerl.tracking.records import write_json
from pagerl.tracking.report_parts import PLOTS_DIR, fmt, markdown_table, mean_se, number, save_figure, skipped

log = logging.getLogger(__name__)


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


def obd_figures(recipe: Any) -> Dict[str, Any]:
    """``eval.obd_check``: BTS's click rate by IPS on the OBD sample's random campaign beside the
    rate BTS logged (:func:`pagerl.eval.obd_bts.bts_check`), at ``eval.ci_level``."""
    return bts_check_figures(bts_check(str(recipe.eval.obd_campaign), level=float(recipe.eval.ci_level)))


def logs_ips_figures(recipe: Any, run_dir: Path, sim: PageEnv) -> Dict[str, Any]:
    """``eval.ips_check``: a related policy's expected clicks by IPS on every held-out logged
    impression beside its exact value (:func:`pagerl.eval.logs_ips.tempered_logging_check`)."""
    files = heldout_files(recipe, run_dir)
    loaded = read_impressions(files, on_bad_row=recipe.data.on_bad_row, max_bad_fraction=recipe.data.max_bad_fraction)
    return {"files": files, **tempered_logging_check(loaded.impressions, sim, int(recipe.run.seed),
                                                     float(recipe.eval.ci_level))}


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
        # (pagerl.eval.scoring.paired_differences)
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
    write_json(out / "results.json", results)
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
    log.info("%s", format_table(table, results["k"]))
    return results

# ------------------------------------------------------------------ report


# Columns of the evaluation table, in this order; other metrics follow.
EVAL_COLUMNS = (
    "ndcg",
    "expected_clicks",
    "expected_gmv",
    "valid_rate",
    "diversity",
    "redundancy",
)


# How each evaluation number is computed (shown under the table).
EVAL_EXPLANATIONS = {
    "ndcg": "NDCG@k with the candidate's true relevance p(u, i) (click probability when "
    "examined, before page effects) as gain and 1/log2(slot + 2) as discount, against the "
    "ideal ordering of all the request's candidates (`PageScore.ndcg`)",
    "expected_clicks": "exact expected number of clicks on the page under the simulator's "
    "cascade click model with position bias and the page-level diversity bonus and "
    "redundancy penalty (`PageScore.expected_clicks`)",
    "expected_gmv": "exact expected gross merchandise value: per slot, the probability of "
    "reaching and clicking it times P(purchase | click) times the item's price "
    "(`PageScore.expected_gmv`)",
    "valid_rate": "share of requests whose page was valid: K distinct candidates of the "
    "request (`PageScore.valid`; a missing page counts as invalid)",
    "diversity": "distinct categories on the page / K (`PageScore.diversity`); "
    "over valid pages only",
    "redundancy": "share of the K - 1 lower slots holding an item with a near-duplicate "
    "above it (`PageScore.redundancy`); over valid pages only",
}


def _eval_section(results: Optional[Any], plots: Path) -> str:
    title = "Evaluation"
    if results is None:
        return skipped(title, "`eval/results.json` not found")
    methods = results.get("methods") if isinstance(results, dict) else None
    if not isinstance(methods, dict) or not all(isinstance(m, dict) for m in methods.values()):
        raise ValueError("eval/results.json: expected {'methods': {name: {metric: value}}, ...}")
    if not methods:
        return skipped(title, "`eval/results.json` lists no methods")
    k = results.get("k")
    metric_names = list(EVAL_COLUMNS) + sorted(
        {m for r in methods.values() for m in r if _is_metric(m)} - set(EVAL_COLUMNS)
    )
    metric_names = [m for m in metric_names if any(m in r for r in methods.values())]
    header = ["method"] + [f"ndcg@{k}" if m == "ndcg" and k else m for m in metric_names] + ["n"]
    rows = []
    for name, row in methods.items():
        cells = [f"`{name}`"]
        for m in metric_names:
            cells.append(mean_se(row.get(m), row.get(f"{m}_se"), row.get(f"{m}_ci")))
        cells.append(fmt(row.get("count", "")))
        rows.append(cells)
    context = ", ".join(
        f"{key}={fmt(results[key])}" for key in results
        if key != "methods" and results[key] is not None and not isinstance(results[key], (dict, list))
    )
    lines = [f"## {title}", "", f"Held-out requests scored by the simulator's ground truth ({context}).", ""]
    lines += markdown_table(header, rows)
    png = _plot_eval_bars(methods, plots / "eval_bars.png", k)
    if png is not None:
        lines += ["", f"![Expected clicks and NDCG per method]({PLOTS_DIR}/{png.name})"]
    lines += ["", "How the numbers were computed:", ""]
    lines += [
        f"- Every method's page for every request was scored by "
        f"`pagerl.sim.Simulator.score_page(request, page, k={k if k else 'K'})`; "
        "`pagerl.eval.scoring.aggregate` averages each score over the requests "
        "(`n` = number of requests) and gives `mean ± standard error [interval]`: the standard error is "
        "the sample standard deviation / sqrt(n), the interval a percentile bootstrap over requests "
        f"(`pagerl.eval.stats.Bootstrap`{_bootstrap_text(results)}).",
        "- An invalid page (rejected by the simulator, or none at all, e.g. unparseable "
        "unconstrained output) counts against `valid_rate` and scores 0 on ndcg, expected "
        "clicks and GMV; diversity and redundancy are averaged over the valid pages only.",
    ]
    for m in metric_names:
        if m in EVAL_EXPLANATIONS:
            lines.append(f"- `{m}`: {EVAL_EXPLANATIONS[m]}.")
    lines += _paired_lines(results)
    lines += _reward_view_lines(results)
    notes = results.get("notes")
    if isinstance(notes, list):
        lines += [f"- {n}" for n in notes if isinstance(n, str)]
    invalid = results.get("invalid_reasons")
    if isinstance(invalid, dict) and invalid:
        lines += ["", "Invalid pages by reason:", ""]
        rows = [[f"`{name}`", ", ".join(f"{reason}: {count}" for reason, count in counts.items())]
                for name, counts in invalid.items() if isinstance(counts, dict)]
        lines += markdown_table(["method", "reasons"], rows)
    return "\n".join(lines)


def _bootstrap_text(results: Mapping[str, Any]) -> str:
    boot = results.get("bootstrap")
    if not isinstance(boot, dict) or not boot.get("resamples"):
        return "; off in this run"
    return f"; {boot['resamples']} resamples, {100 * float(boot.get('level', 0.95)):.0f}% coverage"


def _paired_lines(results: Dict[str, Any]) -> List[str]:
    """Each learned policy minus each other method on the same requests (``results["paired"]``)."""
    paired = results.get("paired")
    if not isinstance(paired, dict) or not paired:
        return []
    k = results.get("k")
    lines: List[str] = []
    for learned, against in paired.items():
        if not isinstance(against, dict) or not against:
            continue
        lines += ["", f"Paired comparison: `{learned}` minus each other method, request by request "
                  "(`pagerl.eval.scoring.paired_differences`; mean ± standard error [bootstrap interval] of the "
                  "difference, and "
                  f"the share of requests where `{learned}`'s page scores higher):", ""]
        rows = []
        for name, diff in against.items():
            if not isinstance(diff, dict):
                continue
            rows.append([f"`{name}`"] + [
                f"{mean_se(diff.get(f'{m}_diff'), diff.get(f'{m}_diff_se'), diff.get(f'{m}_diff_ci'))} "
                f"(wins {fmt(diff.get(f'{m}_win_rate'))})"
                for m in ("expected_clicks", "ndcg")])
        lines += markdown_table(["against", "expected_clicks", f"ndcg@{k}" if k else "ndcg"], rows)
    return lines


def _reward_view_lines(results: Dict[str, Any]) -> List[str]:
    """The reward model's paired differences beside the simulator's (``results["reward_model_view"]``)."""
    view, paired = results.get("reward_model_view"), results.get("paired")
    if not isinstance(view, dict) or not isinstance(view.get("paired"), dict) or not isinstance(paired, dict):
        return []
    lines = ["", f"The reward model's view of the same pages (`pagerl.eval.reward_view`, model `{view.get('model_dir')}`, "
             f"page head as {view.get('page_output')}, item head as {view.get('item_output')}): each learned policy "
             "minus each other method by the reward model and by the simulator. A reward-model gain that the "
             "simulator does not share is over-optimisation of the reward model.", ""]
    rows = []
    for learned, against in view["paired"].items():
        for name, diff in (against or {}).items():
            truth = (paired.get(learned) or {}).get(name) or {}
            rows.append([f"`{learned}` − `{name}`",
                         mean_se(diff.get("rm_page_diff"), diff.get("rm_page_diff_se")),
                         mean_se(diff.get("rm_item_sum_diff"), diff.get("rm_item_sum_diff_se")),
                         mean_se(truth.get("expected_clicks_diff"), truth.get("expected_clicks_diff_se"))])
    return lines + markdown_table(["pair", "reward model: page", "reward model: summed items", "simulator: expected clicks"],
                          rows)


def _is_metric(key: str) -> bool:
    """Columns of the table: means, not their standard errors or bookkeeping."""
    return not key.endswith(("_se", "_ci")) and key not in {"count", "valid_count"}


def _plot_eval_bars(methods: Mapping[str, Mapping[str, Any]], path: Path, k: Any) -> Optional[Path]:
    panels = [(m, f"NDCG@{k}" if m == "ndcg" and k else m.replace("_", " ")) for m in ("expected_clicks", "ndcg")]
    panels = [(m, label) for m, label in panels if any(number(r.get(m)) is not None for r in methods.values())]
    if not panels:
        return None
    names = list(methods)
    fig = Figure(figsize=(4.0 * len(panels) + 0.6 * max(0, len(names) - 4), 3.8))
    for i, (metric, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        values = [number(methods[n].get(metric)) for n in names]
        errors = [number(methods[n].get(f"{metric}_se")) for n in names]
        heights = [v if v is not None else 0.0 for v in values]
        yerr = [e if e is not None else 0.0 for e in errors]
        ax.bar(range(len(names)), heights, yerr=yerr, capsize=3, color="#4C72B0")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_title(label)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


IPS_COLUMNS = ("estimate ± SE", "interval", "n", "effective n", "max weight")


def _ips_cells(estimate: Any, digits: int) -> List[str]:
    """The cells of :data:`IPS_COLUMNS` for one estimate of ``results.json`` (pagerl.eval.logs_ips.estimate_dict)."""
    if not isinstance(estimate, Mapping):
        return [""] * len(IPS_COLUMNS)
    value, se, ci = number(estimate.get("value")), number(estimate.get("se")), estimate.get("ci")
    text = "" if value is None else f"{value:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")
    interval = (f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
                if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(number(c) is not None for c in ci) else "")
    ess = number(estimate.get("effective_sample_size"))
    return [text, interval, fmt(estimate.get("n")), "" if ess is None else f"{ess:.0f}",
            fmt(estimate.get("max_weight"))]


def obd_section(results: Optional[Any]) -> str:
    """``results["obd_check"]`` (``eval.obd_check``): IPS of BTS on the OBD random log vs BTS's own clicks."""
    check = results.get("obd_check") if isinstance(results, dict) else None
    if not isinstance(check, dict):
        return ""
    level = number((check.get("bts_ips_on_random_log") or {}).get("level")) or 0.95
    lines = ["## Real logged clicks (Open Bandit Dataset)", "",
             f"The Open Bandit Dataset sample that obp ships (campaign `{check.get('campaign')}`, "
             "`pagerl.data.obd.load_obd`): ZOZOTOWN's real clicks under two logging policies run side by side, "
             "uniform random and Bernoulli Thompson sampling (BTS). BTS's click rate is estimated by "
             "inverse-propensity scoring on the random policy's log (`pagerl.eval.obd_bts.bts_check`: "
             f"obp's BTS with the production prior, {fmt(check.get('n_sim'))} Thompson draws, seed "
             f"{fmt(check.get('seed'))}) and set beside the rate BTS logged itself: a sanity check of the "
             f"estimator on real logs. Click rate per shown item, ± standard error, {100 * level:.0f}% normal "
             "interval (`pagerl.eval.ips.ips_estimate`).", ""]
    rows = [["random, on-policy (logged clicks)", *_ips_cells(check.get("random_on_policy"), 5)],
            ["BTS by IPS on the random log", *_ips_cells(check.get("bts_ips_on_random_log"), 5)],
            ["BTS, on-policy (logged clicks)", *_ips_cells(check.get("bts_on_policy"), 5)]]
    lines += markdown_table(["click rate", *IPS_COLUMNS], rows)
    diff, se = number(check.get("difference")), number(check.get("difference_se"))
    ratio = number(check.get("bts_ips_relative_to_random"))
    lines += [""]
    if ratio is not None:
        lines.append(f"- BTS by IPS is {ratio:.4f} times the random policy's click rate (obp's README: 1.198 on "
                     "the `all` sample).")
    if diff is not None:
        inside = "inside" if check.get("on_policy_inside_ci") else "**outside**"
        lines.append(f"- IPS minus BTS's on-policy rate: {diff:+.5f}" + ("" if se is None else f" ± {se:.5f}")
                     + f"; the on-policy rate is {inside} the IPS interval. The BTS that logged was updated "
                     "during the week, the one estimated keeps its prior, so the two are close, not equal.")
    return "\n".join(lines)


def logs_ips_section(results: Optional[Any]) -> str:
    """``results["ips_check"]`` (``eval.ips_check``): IPS on the run's logs of a related policy vs its exact value."""
    check = results.get("ips_check") if isinstance(results, dict) else None
    if not isinstance(check, dict):
        return ""
    title = "IPS on the run's own logs"
    if "skipped" in check:
        return skipped(title, str(check["skipped"]))
    level = number((check.get("target_ips") or {}).get("level")) or 0.95
    lines = [f"## {title}", "",
             f"A check of the logged propensities (`pagerl.eval.logs_ips.tempered_logging_check`): the "
             f"{check.get('impressions')} held-out logged impressions "
             f"({', '.join(f'`{f}`' for f in check.get('files') or [])}), re-weighted by target / logged page "
             f"probability, estimate the expected clicks per page of {check.get('target')} (page-level IPS), "
             "and the mean weight should be 1. The simulator's exact value on the same requests is the mean "
             f"exact expected clicks of {fmt(check.get('pages_per_request'))} target pages per request (Monte "
             "Carlo SE beside it). (Not the uniform policy: against a softmax logger its page weights are "
             f"too uneven for any log of this size; see the module.) ± standard error, {100 * level:.0f}% "
             "normal interval.", ""]
    exact, mc = number(check.get("target_exact")), number(check.get("target_exact_mc_se"))
    logging_exact = number(check.get("logging_exact"))
    rows = [["target policy by IPS on the logs", *_ips_cells(check.get("target_ips"), 4)],
            ["target policy, exact (simulator)",
             "" if exact is None else f"{exact:.4f}" + ("" if mc is None else f" ± {mc:.4f}"), "", "", "", ""],
            ["mean importance weight (1 if the propensities are right)", *_ips_cells(check.get("mean_weight"), 4)],
            ["logging policy, on-policy (logged clicks)", *_ips_cells(check.get("logging_on_policy"), 4)],
            ["logging policy, exact (simulator, logged pages)",
             "" if logging_exact is None else f"{logging_exact:.4f}", "", "", "", ""]]
    lines += markdown_table(["expected clicks per page", *IPS_COLUMNS], rows)
    diff, z = number(check.get("difference")), number(check.get("z"))
    if diff is not None:
        inside = "inside" if check.get("exact_inside_ci") else "**outside**"
        lines += ["", f"- IPS minus exact: {diff:+.4f}" + ("" if z is None else f" ({z:+.2f} standard errors)")
                  + f"; the exact value is {inside} the IPS interval. The weights are skewed (rare large "
                  "ones), so their sample mean more often falls short of 1 than above it, and a normal interval "
                  "of it is rough; wrong propensities move it by a factor."]
    return "\n".join(lines)


def _complete(ctx: RunContext) -> bool:
    results = json_of(ctx.run_dir / "eval" / "results.json")
    return results is not None and results.get("policies", {}) == dict(ctx.policies)


def _headline(ctx: RunContext) -> str:
    results = json_of(ctx.run_dir / "eval" / "results.json") or {}
    methods = results.get("methods", {})
    cells = [f"{name} {row['expected_clicks']:.3f}" for name, row in methods.items()]
    return f"expected clicks on {results.get('num_requests', '?')} held-out requests: " + ", ".join(cells)


def _report(run_dir: Path, plots: Path) -> List[str]:
    results = json_of(run_dir / "eval" / "results.json")
    return [_eval_section(results, plots), obd_section(results), logs_ips_section(results)]


ENTRY = register_stage(Stage(
    name="eval", summary="every policy of the run and the baselines, scored by the simulator's ground truth",
    reads=("held-out requests", "every policy the run produced"), writes="eval",
    run=lambda ctx: run_eval_stage(ctx.recipe, ctx.run_dir, policies=dict(ctx.policies)),
    complete=_complete, headline=_headline, report=_report, report_leads=True,
))
