"""The reward ablation's table: variants against each other and against the policy they start from.

Computed request by request on the same held-out requests (the eval stage's
``pages.jsonl`` of every run of :mod:`pagerl.app.ablation`): a variant's score
of a request is the mean over its seeds; each comparison is the mean of the
per-request difference, with a percentile bootstrap interval over requests
(:class:`pagerl.eval.stats.Bootstrap`, the same resamples for every
comparison). A relative change is ``mean(variant - other) / mean(other)``, its
interval the same ratio on each resample. Outputs:
``<run_dir>/ablation/ablation.json`` and ``ablation.md``; the run's report
shows the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from pagerl.errors import PageRLError
from pagerl.eval.stats import Bootstrap
from pagerl.tracking.records import read_json
from pagerl.tracking.report_parts import markdown_table

ABLATION_DIR = "ablation"


RESULTS_FILE = "ablation.json"


TABLE_FILE = "ablation.md"


FIDELITY_FILE = "credit_fidelity.json"


# What the table compares (the paper's: NDCG@K and expected clicks).
TABLE_METRICS = ("expected_clicks", "ndcg")


class AblationError(PageRLError, ValueError):
    """The ablation cannot run as configured."""


def read_scores(run_dir: Path, method: str) -> Tuple[List[str], Dict[str, np.ndarray]]:
    """Request ids and per-request scores (:data:`TABLE_METRICS`) of ``method`` in ``<run_dir>/eval/pages.jsonl``."""
    path = Path(run_dir) / "eval" / "pages.jsonl"
    if not path.is_file():
        raise AblationError(f"{path}: not found; the eval stage of that run did not complete")
    ids: List[str] = []
    values: Dict[str, List[float]] = {m: [] for m in TABLE_METRICS}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        row = json.loads(line)
        page = row["pages"].get(method)
        if page is None:
            raise AblationError(f"{path}:{number}: no page of {method!r} (methods: {', '.join(row['pages'])})")
        ids.append(row["request_id"])
        for m in TABLE_METRICS:
            values[m].append(float(page[m]))
    return ids, {m: np.asarray(v, dtype=np.float64) for m, v in values.items()}


def compare(a: np.ndarray, b: np.ndarray, boot: Bootstrap) -> Dict[str, Any]:
    """``a - b`` request by request: mean and interval of the difference, and of it relative to ``mean(b)``."""
    diff = a - b
    out: Dict[str, Any] = {"diff": float(diff.mean()), "diff_ci": boot.ci(diff)}
    denominator = float(b.mean())
    out["relative"] = float(diff.mean() / denominator) if denominator else None
    out["relative_ci"] = boot.ratio_ci(diff, b) if denominator else None
    return out


def summarise(seeds: Mapping[int, Mapping[str, np.ndarray]], start: Mapping[str, np.ndarray],
              reference: Optional[Mapping[str, np.ndarray]], boot: Bootstrap) -> Dict[str, Any]:
    """One variant's row: per metric its seed-averaged score against the starting policy and the reference."""
    row: Dict[str, Any] = {}
    for m in TABLE_METRICS:
        per_request = np.mean([scores[m] for scores in seeds.values()], axis=0)
        seed_means = [float(scores[m].mean()) for scores in seeds.values()]
        row[m] = {
            "mean": float(per_request.mean()), "ci": boot.ci(per_request),
            "seed_means": seed_means, "seed_sd": float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else None,
            "vs_start": compare(per_request, start[m], boot),
            "vs_reference": None if reference is None else compare(per_request, reference[m], boot),
        }
    return row


def ablation_table(recipe: Any, base_dir: Path, start: str, runs: Mapping[str, Mapping[int, Path]]) -> Dict[str, Any]:
    """The ablation's figures (module doc) from the eval pages of the shared run and of every variant run."""
    cfg = recipe.ablation
    ids, start_scores = read_scores(base_dir, start)
    scores: Dict[str, Dict[int, Dict[str, np.ndarray]]] = {}
    for variant, by_seed in runs.items():
        scores[variant] = {}
        for seed, run_dir in by_seed.items():
            run_ids, values = read_scores(run_dir, "rl")
            if run_ids != ids:
                raise AblationError(f"{run_dir}/eval/pages.jsonl: its requests are not those of "
                                    f"{base_dir}/eval/pages.jsonl; every run must score the same held-out requests")
            scores[variant][seed] = values
    boot = Bootstrap(recipe.eval.bootstrap_resamples, recipe.eval.ci_level, recipe.run.seed)
    reference = {m: np.mean([s[m] for s in scores[cfg.reference].values()], axis=0) for m in TABLE_METRICS}
    variants = {v: summarise(scores[v], start_scores, None if v == cfg.reference else reference, boot)
                for v in scores}
    results = read_json(base_dir / "eval" / "results.json") or {}
    table: Dict[str, Any] = {
        "metrics": list(TABLE_METRICS),
        "k": results.get("k"),
        "num_requests": len(ids),
        "seeds": [int(s) for s in cfg.seeds],
        "reference": cfg.reference,
        "start": start,
        "steps": int(recipe.rl.steps),
        "bootstrap": {"resamples": boot.resamples, "level": boot.level},
        "variant_overrides": {v.name: list(v.overrides) for v in cfg.variants},
        "start_scores": {m: {"mean": float(start_scores[m].mean()), "ci": boot.ci(start_scores[m])}
                         for m in TABLE_METRICS},
        "baselines": {name: {m: row.get(m) for m in TABLE_METRICS}
                      for name, row in (results.get("methods") or {}).items() if name != start},
        "variants": variants,
        "runs": {v: {str(s): str(d) for s, d in by_seed.items()} for v, by_seed in runs.items()},
        "rl_summaries": {v: {str(s): _rl_summary(d) for s, d in by_seed.items()} for v, by_seed in runs.items()},
        "rm_quality": ((read_json(base_dir / "rm" / "quality.json") or {}).get("pair_accuracy")),
        "credit_fidelity": read_json(base_dir / ABLATION_DIR / FIDELITY_FILE),
    }
    table["claims"] = claims(table)
    return table


def claims(table: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The paper's claim, comparison by comparison: the reference ahead of every other variant, and
    every variant ahead of the starting policy. ``holds``: the interval of the difference lies above 0."""
    out = []
    ref = table["reference"]
    for m in table["metrics"]:
        for v, row in table["variants"].items():
            if v != ref:
                c = row[m]["vs_reference"]
                out.append(_claim(f"{ref} ahead of {v}", m, -c["diff"], _negated(c["diff_ci"])))
        for v, row in table["variants"].items():
            c = row[m]["vs_start"]
            out.append(_claim(f"{v} ahead of {table['start']}", m, c["diff"], c["diff_ci"]))
    return out


def _claim(text: str, metric: str, diff: float, ci: Optional[List[float]]) -> Dict[str, Any]:
    return {"claim": text, "metric": metric, "diff": diff, "ci": ci,
            "holds": bool(ci is not None and ci[0] > 0), "ahead": bool(diff > 0)}


def _negated(ci: Optional[List[float]]) -> Optional[List[float]]:
    return None if ci is None else [-ci[1], -ci[0]]


def _rl_summary(run_dir: Path) -> Dict[str, Any]:
    summary = read_json(Path(run_dir) / "rl" / "summary.json") or {}
    last = summary.get("last") or {}
    return {key: last.get(key) for key in ("reward_total", "reward_page", "reward_item", "kl") if key in last}


def _interval(ci: Any, scale: float = 1.0, digits: int = 3, suffix: str = "") -> str:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return ""
    return f" [{scale * ci[0]:+.{digits}f}, {scale * ci[1]:+.{digits}f}]{suffix}"


def format_markdown(table: Mapping[str, Any]) -> List[str]:
    """The ablation table as Markdown lines (``ablation.md`` and the run's report)."""
    k = table.get("k")
    label = {"expected_clicks": "expected clicks", "ndcg": f"NDCG@{k}" if k else "NDCG"}
    ref, start = table["reference"], table["start"]
    level = 100 * float(table["bootstrap"]["level"])
    lines = [
        f"Reward ablation: {len(table['variants'])} variants × {len(table['seeds'])} seeds "
        f"(rl.seed {', '.join(map(str, table['seeds']))}), {table['steps']} RL steps each from the same "
        f"`{start}` policy and reward model, scored on the same {table['num_requests']} held-out requests "
        f"(`pagerl.app.ablation`). A variant's score of a request is its mean over seeds; "
        f"[…] is a {level:.0f}% bootstrap interval over requests "
        f"({table['bootstrap']['resamples']} resamples).",
        "",
    ]
    head = ["variant", "overrides"]
    for m in table["metrics"]:
        head += [label[m], f"vs `{start}`", f"vs `{ref}`"]
    rows = [[f"`{start}`", "(the starting policy)"] + sum(
        ([f"{table['start_scores'][m]['mean']:.4f}", "", ""] for m in table["metrics"]), [])]
    for v, row in table["variants"].items():
        cells = [f"`{v}`", ", ".join(f"`{o}`" for o in table["variant_overrides"].get(v, [])) or "(the recipe's)"]
        for m in table["metrics"]:
            r = row[m]
            sd = f" (seed sd {r['seed_sd']:.4f})" if r.get("seed_sd") is not None else ""
            cells.append(f"{r['mean']:.4f}{sd}")
            s = r["vs_start"]
            cells.append(f"{s['diff']:+.4f}{_interval(s['diff_ci'], digits=4)}")
            c = r["vs_reference"]
            cells.append("" if c is None or c["relative"] is None else
                         f"{100 * c['relative']:+.1f}%{_interval(c['relative_ci'], 100, 1, '%')}")
        rows.append(cells)
    lines += markdown_table(head, rows)
    lines += ["", "The claim, comparison by comparison (holds: the interval of the difference is above 0):", ""]
    lines += markdown_table(["claim", "metric", "difference", "holds"],
                             [[c["claim"], label[c["metric"]], f"{c['diff']:+.4f}{_interval(c['ci'], digits=4)}",
                               "yes" if c["holds"] else ("ahead, not significant" if c["ahead"] else "no")]
                              for c in table["claims"]])
    lines += _why_lines(table)
    quality = table.get("rm_quality")
    if isinstance(quality, dict) and quality:
        lines += ["", "The shared reward model's held-out pair accuracy per family (`rm/quality.json`):", ""]
        lines += markdown_table(["family", "pairs", "page head", "item head"],
                                 [[f, str(q.get("pairs", "")), f"{q.get('page_accuracy', float('nan')):.3f}",
                                   f"{q.get('item_accuracy', float('nan')):.3f}"] for f, q in quality.items()])
    return lines


def _why_lines(table: Mapping[str, Any]) -> List[str]:
    """Per variant: its credit fidelity before training, and its rewards and KL at the last RL step."""
    fidelity = (table.get("credit_fidelity") or {})
    settings = fidelity.get("settings") or {}
    summaries = table.get("rl_summaries") or {}
    if not settings and not summaries:
        return []
    lines = ["", "Why, per variant: the credit fidelity of its reward setting on the starting policy's own "
             "pages of training requests (`pagerl.rl.credit_fidelity`: correlation of its token credit with the "
             "exact rewards' credit; measured before training"
             + (f", {fidelity['requests']} requests × {fidelity['samples']} pages" if settings else
                f"; {fidelity.get('skipped', 'not measured')}")
             + "), and the mean over seeds of its total reward and its KL to the starting policy at the last "
             "RL step:", ""]
    rows = []
    for v in table["variants"]:
        last = list((summaries.get(v) or {}).values())
        mean = {key: float(np.mean([s[key] for s in last])) if last and all(key in s for s in last) else None
                for key in ("reward_total", "kl")}
        row = settings.get(v) or {}
        rows.append([f"`{v}`", "" if row.get("pooled") is None else f"{row['pooled']:.3f}",
                     " / ".join(f"{x:.2f}" for x in row.get("per_slot") or [] if x is not None),
                     "" if mean["reward_total"] is None else f"{mean['reward_total']:.4f}",
                     "" if mean["kl"] is None else f"{mean['kl']:.4f}"])
    lines += markdown_table(["variant", "credit fidelity", "per slot", "reward at the end", "KL at the end"], rows)
    return lines


__all__ = ["ABLATION_DIR", "AblationError", "RESULTS_FILE", "TABLE_FILE", "ablation_table", "claims", "compare",
           "format_markdown", "read_scores"]
