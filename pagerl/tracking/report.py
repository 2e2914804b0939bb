"""The run report: one Markdown file with PNG plots, and the same sections as one self-contained
HTML page (:mod:`pagerl.tracking.html_report`), written from a run directory.

Why from files and not from objects in memory: the report must be
re-creatable after the fact (``write_report(run_dir)`` on a finished or a
crashed run, on a laptop after copying the run dir back from a cluster), so
it reads only what the stages wrote:

    <run_dir>/recipe.yaml          the resolved recipe            -> "Recipe"
    <run_dir>/data/stats.json      data statistics (a dict)       -> "Data"
    <run_dir>/metrics.jsonl        stage "sft", metric "loss"     -> "SFT learning curve"
    <run_dir>/eval/results.json    pagerl.eval.evaluate output    -> "Evaluation", and the IPS
                                   checks when on (pagerl.tracking.ips_report)

A missing input skips its section with a note saying which file was absent,
so a partial run still gets a report. A present but malformed input raises
ValueError naming the file: our own stages wrote it, so it is a bug to see.

Plots are drawn on :class:`matplotlib.figure.Figure` objects rendered by the
Agg canvas, never through ``pyplot``: no global backend switch, no window,
nothing left open in the caller's process.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pagerl.tracking.html_report import render_html
from pagerl.tracking.metrics import METRICS_FILE, metric_series, read_metrics
from pagerl.tracking.timings import TIMINGS_FILE, read_stage_times, total_seconds

REPORT_FILE = "report.md"
HTML_REPORT_FILE = "report.html"
PLOTS_DIR = "plots"

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


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``<run_dir>/report.md``, ``<run_dir>/report.html`` (the same sections as one
    self-contained page) and ``<run_dir>/plots/*.png``; return the Markdown's path."""
    from pagerl.tracking.ips_report import logs_ips_section, obd_section

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist; nothing to report")
    plots = run_dir / PLOTS_DIR
    recipe = _read_yaml(run_dir / "recipe.yaml")
    name = _dig(recipe, "run", "name") if recipe else None
    title = f"Run report: {name or run_dir.name}"
    from pagerl.eval.ablation import ABLATION_DIR, RESULTS_FILE

    ablation = read_json(run_dir / ABLATION_DIR / RESULTS_FILE)
    sections = {
        "title": f"# {title}",
        "written": f"Run directory `{run_dir}`, report written "
        f"{_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        "recipe": _recipe_section(recipe),
        "data": _data_section(read_json(run_dir / "data" / "stats.json")),
        "sft": _sft_section(run_dir, plots),
        "rm": _curve_section(run_dir, plots, "rm", "Reward-model learning curve"),
        "rm_quality": _rm_quality_section(read_json(run_dir / "rm" / "quality.json")),
        "rllib": _rllib_section(run_dir, plots),
        "rl": _rl_section(run_dir, plots),
        "eval": _eval_section(read_json(run_dir / "eval" / "results.json"), plots),
        "obd": obd_section(read_json(run_dir / "eval" / "results.json")),
        "logs_ips": logs_ips_section(read_json(run_dir / "eval" / "results.json")),
        "ablation": _ablation_section(ablation),
        "time": _time_section(run_dir, ablation),
    }
    # The page opens on the evaluation and folds the long recipe away; the Markdown keeps run order.
    page = render_html(title, sections, run_dir, lead=("title", "written", "eval"), folded=("recipe",))
    _replace(run_dir / REPORT_FILE, "\n\n".join(s for s in sections.values() if s).rstrip() + "\n")
    _replace(run_dir / HTML_REPORT_FILE, page)
    return run_dir / REPORT_FILE


def _replace(path: Path, text: str) -> None:
    """Write through a temporary file, so a reader never sees half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------- inputs


def read_json(path: Path) -> Optional[Any]:
    """A JSON file of the run directory, None when absent; bad JSON names the file and line."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None


def _read_yaml(path: Path) -> Optional[Dict[str, Any]]:
    if not path.exists():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of recipe sections, got {type(data).__name__}")
    return data


def _dig(data: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


# ---------------------------------------------------------------- sections


def _skipped(title: str, why: str) -> str:
    return f"## {title}\n\n_Skipped: {why}._"


def _recipe_section(recipe: Optional[Dict[str, Any]]) -> str:
    title = "Recipe"
    if recipe is None:
        return _skipped(title, "`recipe.yaml` not found in the run directory")
    lines = [f"## {title}", "", "The resolved recipe (full text in `recipe.yaml`):", ""]
    for section, values in recipe.items():
        if isinstance(values, Mapping):
            flat = _flatten(values)
            body = ", ".join(f"{k}={_fmt(v)}" for k, v in flat.items()) or "(empty)"
        else:
            body = _fmt(values)
        lines.append(f"- **{section}**: {body}")
    return "\n".join(lines)


def _data_section(stats: Optional[Any]) -> str:
    title = "Data"
    if stats is None:
        return _skipped(title, "`data/stats.json` not found")
    if not isinstance(stats, dict):
        raise ValueError(f"data/stats.json: expected a JSON object, got {type(stats).__name__}")
    if not stats:
        return _skipped(title, "`data/stats.json` is empty")
    lines = [f"## {title}", "", "From `data/stats.json`:"]
    if _is_per_part(stats):
        lines += ["", *_parts_table(stats)]
        return "\n".join(lines)
    # Per-part groups (e.g. "stats": {"train": {...}, "eval": {...}}) get a
    # column per part; everything else goes in one key/value table.
    rest = {}
    for key, value in stats.items():
        if _is_per_part(value):
            lines += ["", f"`{key}`:", "", *_parts_table(value)]
        else:
            rest[key] = value
    if rest:
        lines += ["", *markdown_table(["statistic", "value"], [[k, _fmt(v)] for k, v in _flatten(rest).items()])]
    return "\n".join(lines)


def _is_per_part(value: Any) -> bool:
    """A non-empty mapping whose values are all mappings: statistics per part."""
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, Mapping) for v in value.values())


def _parts_table(parts: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """One column per part (e.g. train / eval), one row per statistic."""
    names = list(parts)
    flats = {p: _flatten(parts[p]) for p in names}
    keys = _union_keys(flats[p] for p in names)
    rows = [[k] + [_fmt(flats[p].get(k, "")) for p in names] for k in keys]
    return markdown_table(["statistic"] + names, rows)


def _sft_section(run_dir: Path, plots: Path) -> str:
    return _curve_section(run_dir, plots, "sft", "SFT learning curve")


def _curve_section(run_dir: Path, plots: Path, stage: str, title: str) -> str:
    """The training-loss curve of one stage, plotted and summarised."""
    if not (run_dir / METRICS_FILE).exists():
        return _skipped(title, f"`{METRICS_FILE}` not found")
    steps, values = metric_series(read_metrics(run_dir, stage=stage), stage, "loss")
    points = [(s, v) for s, v in zip(steps, values) if v is not None]
    if not points:
        return _skipped(title, f"no `loss` of stage `{stage}` in `{METRICS_FILE}`")
    nonfinite = len(steps) - len(points)
    png = _plot_curve(points, plots / f"{stage}_loss.png", f"{stage.upper()} training loss", "loss")
    losses = [v for _, v in points]
    lines = [
        f"## {title}",
        "",
        f"![{stage} loss]({PLOTS_DIR}/{png.name})",
        "",
        f"Training loss of stage `{stage}` per optimizer step, from `{METRICS_FILE}` "
        "(last value per step, so a resumed stage shows the run that went on).",
        "",
    ]
    lines += markdown_table(
        ["points", "first step", "last step", "first loss", "last loss", "min loss"],
        [[len(points), points[0][0], points[-1][0], _fmt(losses[0]), _fmt(losses[-1]), _fmt(min(losses))]],
    )
    if nonfinite:
        lines += ["", f"**{nonfinite} step(s) logged a non-finite loss** (null in `{METRICS_FILE}`)."]
    return "\n".join(lines)


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
        return _skipped(title, "no RL steps in `metrics.jsonl`")
    evals = [r for r in every if "eval/ndcg" in r]
    png = _plot_panels(RL_PANELS + (RL_EVAL_PANELS if evals else ()), "rl",
                       lambda key: evals if key.startswith("eval/") else rows, "RL step", plots / "rl_curves.png")
    first, last = rows[0], rows[-1]
    lines = [f"## {title}", "", f"![rl curves]({PLOTS_DIR}/{png.name})", "",
             f"{len(rows)} RL steps (stage `rl` of `{METRICS_FILE}`, written by `pagerl.rl.controller`); "
             "rewards are those of the reward source before normalisation, KL and entropy those of the "
             "constrained policy.", ""]
    lines += markdown_table(["", *RL_TABLE], [["first step", *[_fmt(first.get(k)) for k in RL_TABLE]],
                                      ["last step", *[_fmt(last.get(k)) for k in RL_TABLE]]])
    return "\n".join(lines + _rl_eval_lines(evals, rows))


def _plot_panels(panels: Sequence[Tuple[str, Sequence[str]]], stage: str,
                 rows_of: Callable[[str], Sequence[Mapping[str, Any]]], xlabel: str, path: Path) -> Path:
    """Two rows of panels, one curve per metric key; keys named ``eval/*`` are sparse (marked points)."""
    columns = (len(panels) + 1) // 2
    fig = Figure(figsize=(6.0 * columns, 6.4))
    for i, (name, keys) in enumerate(panels):
        ax = fig.add_subplot(2, columns, i + 1)
        for key in keys:
            sparse = key.startswith("eval/")
            steps, values = metric_series(rows_of(key), stage, key)
            ax.plot(steps, [v if v is not None else math.nan for v in values], label=key, linewidth=1.3,
                    marker="o" if sparse else None, markersize=3)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


# The RLlib baseline's training (stage "rllib", pagerl.eval.rllib_baseline): what PPO logged per iteration.
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
    png = _plot_panels(RLLIB_PANELS, "rllib", lambda key: rows, "PPO iteration", plots / "rllib_curves.png")
    first, last = rows[0], rows[-1]
    lines = [f"## {title}", "", f"![rllib curves]({PLOTS_DIR}/{png.name})", "",
             f"{len(rows)} PPO iterations of the candidate-scoring policy (stage `rllib` of `{METRICS_FILE}`, "
             "written by `pagerl.eval.rllib_baseline`): the rewards are the environment's (`rllib.reward`) on "
             "the pages the policy sampled while it learned; its held-out figures are in the evaluation table.",
             ""]
    lines += markdown_table(["", *RLLIB_TABLE], [["first iteration", *[_fmt(first.get(k)) for k in RLLIB_TABLE]],
                                          ["last iteration", *[_fmt(last.get(k)) for k in RLLIB_TABLE]]])
    return "\n".join(lines)


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
    requests = _fmt(evals[-1].get("eval/requests"))
    lines = ["", f"Held-out evaluation inside RL (`rl.eval_every`): at step 0 (the policy RL starts from), every "
             f"`rl.eval_every` steps and after the last, the rollout workers' synced policy laid out one page "
             f"for each of {requests} held-out requests (the eval stage's files, never trained on), decoded "
             "as the eval stage decodes (`eval.decoding`, `eval.constrained`) and scored by the eval stage's "
             "`score_method` on the simulator's ground truth; its last point is the eval stage's figure for "
             "the saved RL policy (greedy decoding). Mean ± standard error over requests.", ""]
    table = []
    for step in sorted(by_step):
        r = by_step[step]
        table.append([step, _mean_se(r.get("eval/ndcg"), r.get("eval/ndcg_se")),
                      _mean_se(r.get("eval/expected_clicks"), r.get("eval/expected_clicks_se")),
                      *[_fmt(r.get(k)) for k in RL_EVAL_TABLE[2:]]])
    lines += markdown_table(["step", *RL_EVAL_TABLE], table)
    share = f" ({100 * spent / total:.1f}% of the RL steps' time)" if total > 0 else ""
    lines += ["", f"It took {spent:.1f} s in all{share}: phase `eval` of the seconds per phase."]
    return lines


def _rm_quality_section(quality: Optional[Any]) -> str:
    """Held-out pair accuracy per family and Spearman against the simulator (``rm/quality.json``)."""
    title = "Reward-model quality"
    if not quality:
        return _skipped(title, "`rm/quality.json` not found")
    lines = [f"## {title}", "",
             "Held-out pair accuracy: share of preference pairs built from the held-out impressions "
             "whose chosen page the model scores higher (`pagerl.rewards.quality.pair_accuracy`); "
             "`label vs truth` is how often the pair's label itself agrees with the simulator.", ""]
    rows = [[family, acc.get("pairs"), _fmt(acc.get("page_accuracy")), _fmt(acc.get("item_accuracy")),
             _fmt(acc.get("label_truth_agreement"))]
            for family, acc in (quality.get("pair_accuracy") or {}).items()]
    lines += markdown_table(["family", "pairs", "page RM", "item RM", "label vs truth"], rows)
    sim = quality.get("simulator") or {}
    if sim:
        lines += ["", "Spearman correlation with the simulator's ground truth on held-out requests "
                  "(`pagerl.rewards.quality.simulator_correlation`): page reward vs expected clicks of "
                  "the page, item reward vs the slot's expected clicks; within-request unless pooled.", ""]
        lines += markdown_table(["metric", "value"], [[k, _fmt(v)] for k, v in sim.items()])
    lines += credit_fidelity_lines(quality.get("credit_fidelity"), quality.get("credit_fidelity_skipped"))
    return "\n".join(lines)


def credit_fidelity_lines(report: Optional[Mapping[str, Any]], skipped: Optional[str] = None) -> List[str]:
    """The credit-fidelity table (:mod:`pagerl.rewards.fidelity`): one row per reward setting."""
    if not report:
        return ["", f"Credit fidelity: not measured ({skipped})."] if skipped else []
    lines = ["", f"Credit fidelity (`pagerl.rewards.fidelity`): on {report['requests']} training requests, "
             f"{report['samples']} pages each sampled by the policy RL starts from, the Pearson correlation "
             f"of each setting's token credit ({report['estimator']}, learned rewards) with the credit of "
             "the exact rewards (each slot's expected clicks and those of the slots below it), over every "
             "item token, and per slot.", ""]
    rows = []
    for name, row in report["settings"].items():
        rows.append([name, _fmt(row["w_page"]), _fmt(row["w_item"]), row["normalize"], row["page_reward"],
                     row["slot_credit"], _fmt(row["pooled"]), " / ".join(_fmt(v) for v in row["per_slot"])])
    lines += markdown_table(["setting", "w_page", "w_item", "normalize", "page reward", "slot credit",
                             "fidelity", "per slot"], rows)
    return lines


def _eval_section(results: Optional[Any], plots: Path) -> str:
    title = "Evaluation"
    if results is None:
        return _skipped(title, "`eval/results.json` not found")
    methods = results.get("methods") if isinstance(results, dict) else None
    if not isinstance(methods, dict) or not all(isinstance(m, dict) for m in methods.values()):
        raise ValueError("eval/results.json: expected {'methods': {name: {metric: value}}, ...}")
    if not methods:
        return _skipped(title, "`eval/results.json` lists no methods")
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
            cells.append(_mean_se(row.get(m), row.get(f"{m}_se"), row.get(f"{m}_ci")))
        cells.append(_fmt(row.get("count", "")))
        rows.append(cells)
    context = ", ".join(
        f"{key}={_fmt(results[key])}" for key in results
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
        "`pagerl.eval.evaluate.evaluate` averages each score over the requests "
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


def _ablation_section(table: Optional[Any]) -> str:
    """The reward ablation's table (``ablation/ablation.json``) when ``pagerl ablate`` ran on this run
    directory (else nothing)."""
    from pagerl.eval.ablation import format_markdown

    if table is None:
        return ""
    return "\n".join(["## Reward ablation", "", *format_markdown(table)])


def _time_section(run_dir: Path, ablation: Optional[Any]) -> str:
    """Where the run's wall time went: per stage (``timings.json``, written by the pipeline), per RL
    phase (``seconds_*`` of the RL rows), and the ablation's variant runs (their own ``timings.json``)."""
    title = "Where the time went"
    times = read_stage_times(run_dir)
    if not times:
        return _skipped(title, f"`{TIMINGS_FILE}` not found")
    total = total_seconds(times)
    rows = []
    for stage, attempts in times.items():
        seconds = total_seconds({stage: attempts})
        outcomes = ", ".join(str(a["outcome"]) for a in attempts)
        rows.append([f"`{stage}`", len(attempts), outcomes, f"{seconds:.1f}", f"{100 * seconds / total:.1f}%"
                     if total > 0 else "-"])
    lines = [f"## {title}", "",
             f"Wall-clock seconds of each stage this run directory ran (`{TIMINGS_FILE}`, written by "
             "`pagerl.pipeline.run` around each stage: start-up, loading, checkpoints and end-of-stage "
             "evaluation included; a stage resumed after a stop or a failure has one attempt per run).", ""]
    lines += markdown_table(["stage", "attempts", "outcomes", "seconds", "share"], rows)
    lines += _rl_phase_lines(run_dir)
    lines += _ablation_time_lines(ablation)
    return "\n".join(lines)


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


def _ablation_time_lines(ablation: Optional[Any]) -> List[str]:
    """The variant runs of ``pagerl ablate`` (each its own run directory and record), summed per variant."""
    runs = ablation.get("runs") if isinstance(ablation, dict) else None
    if not isinstance(runs, dict) or not runs:
        return []
    rows = []
    for variant, by_seed in runs.items():
        seconds = [total_seconds(read_stage_times(path)) for path in by_seed.values()]
        rows.append([f"`{variant}`", len(seconds), f"{sum(seconds):.1f}"])
    return ["", "The reward ablation's variant runs (RL and eval of each variant and seed, in their own run "
            "directories under `ablation/`, each with its own record):", "",
            *markdown_table(["variant", "runs", "seconds"], rows)]


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
                  "(`pagerl.eval.evaluate.paired_differences`; mean ± standard error [bootstrap interval] of the "
                  "difference, and "
                  f"the share of requests where `{learned}`'s page scores higher):", ""]
        rows = []
        for name, diff in against.items():
            if not isinstance(diff, dict):
                continue
            rows.append([f"`{name}`"] + [
                f"{_mean_se(diff.get(f'{m}_diff'), diff.get(f'{m}_diff_se'), diff.get(f'{m}_diff_ci'))} "
                f"(wins {_fmt(diff.get(f'{m}_win_rate'))})"
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
                         _mean_se(diff.get("rm_page_diff"), diff.get("rm_page_diff_se")),
                         _mean_se(diff.get("rm_item_sum_diff"), diff.get("rm_item_sum_diff_se")),
                         _mean_se(truth.get("expected_clicks_diff"), truth.get("expected_clicks_diff_se"))])
    return lines + markdown_table(["pair", "reward model: page", "reward model: summed items", "simulator: expected clicks"],
                          rows)


def _is_metric(key: str) -> bool:
    """Columns of the table: means, not their standard errors or bookkeeping."""
    return not key.endswith(("_se", "_ci")) and key not in {"count", "valid_count"}


# ---------------------------------------------------------------- plots


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _plot_curve(points: Sequence[Tuple[int, float]], path: Path, title: str, ylabel: str) -> Path:
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    ax.plot(steps, values, marker="." if len(points) < 60 else None, linewidth=1.5)
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def _plot_eval_bars(methods: Mapping[str, Mapping[str, Any]], path: Path, k: Any) -> Optional[Path]:
    panels = [(m, f"NDCG@{k}" if m == "ndcg" and k else m.replace("_", " ")) for m in ("expected_clicks", "ndcg")]
    panels = [(m, label) for m, label in panels if any(_number(r.get(m)) is not None for r in methods.values())]
    if not panels:
        return None
    names = list(methods)
    fig = Figure(figsize=(4.0 * len(panels) + 0.6 * max(0, len(names) - 4), 3.8))
    for i, (metric, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        values = [_number(methods[n].get(metric)) for n in names]
        errors = [_number(methods[n].get(f"{metric}_se")) for n in names]
        heights = [v if v is not None else 0.0 for v in values]
        yerr = [e if e is not None else 0.0 for e in errors]
        ax.bar(range(len(names)), heights, yerr=yerr, capsize=3, color="#4C72B0")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_title(label)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------- formatting


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _mean_se(mean: Any, se: Any, ci: Any = None) -> str:
    """``0.512 ± 0.010 [0.492, 0.531]``: mean ± standard error [bootstrap interval], fixed decimals
    so a column of means lines up."""
    value = _number(mean)
    if value is None:
        return "" if mean is None else _fmt(mean)
    text = f"{value:.3f}"
    if _number(se) is not None:
        text += f" ± {_number(se):.3f}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_number(c) is not None for c in ci):
        text += f" [{_number(ci[0]):.3f}, {_number(ci[1]):.3f}]"
    return text


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        if len(value) > 8:
            return f"[{len(value)} values]"
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _union_keys(dicts: Any) -> List[str]:
    keys: List[str] = []
    for d in dicts:
        keys += [k for k in d if k not in keys]
    return keys


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> List[str]:
    """A GitHub Markdown table, columns padded so it also reads in a terminal."""
    cells = [[_cell(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = []
    for n, row in enumerate(cells):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return out


def _cell(value: Any) -> str:
    return (value if isinstance(value, str) else _fmt(value)).replace("|", "\\|").replace("\n", " ")
