"""Scoring pages: each page's exact score by the environment, and the means, errors and paired
differences over the requests.

Every method (a learned policy, a baseline of :mod:`pagerl.eval.baseline_policies`)
lays out one page per held-out request (:mod:`pagerl.eval.pages`); each page is
scored by the environment's ``score_page`` (``pagesim``:
:meth:`pagerl.sim.simulator.Simulator.score_page`), which computes expectations
under the simulator's ground truth (no sampling noise in the metric itself). A
method's number is the mean over requests, with its standard error over requests
(sample standard deviation / sqrt(n)) and a percentile bootstrap interval over
requests (``eval.bootstrap_resamples`` at ``eval.ci_level``, :mod:`pagerl.eval.stats`),
so two methods can be compared with the spread the request sample implies.

Invalid pages (our convention, stated in the report):

- a page the simulator rejects (wrong length, a non-candidate, a repeat) or a
  missing page (``None``: the learned policy's output could not be parsed)
  counts as invalid in ``valid_rate`` and scores 0 on ``ndcg``,
  ``expected_clicks`` and ``expected_gmv`` -- a page that cannot be shown
  earns nothing, so those means are over all requests;
- ``diversity`` and ``redundancy`` describe what a page is made of, so they
  are averaged over the valid pages only (``valid_count`` of them). Scoring
  an invalid page as 0 there would make invalid output look non-redundant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from pagerl.data.types import Request
from pagerl.envs import PageEnv
from pagerl.errors import PageRLError
from pagerl.eval.stats import Bootstrap, mean_se
from pagerl.sim.simulator import PageScore

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


@dataclass
class MethodPages:
    """One method's pages, plus why the ones it could not produce are missing."""

    pages: List[Page]
    # Per request: the generation's parse result, for a learned policy only.
    generation: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


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


def format_table(table: Mapping[str, Mapping[str, Any]], k: Optional[int] = None) -> str:
    """The means as a fixed-width text table, for the console."""
    heads = [f"ndcg@{k}" if m == "ndcg" and k else m for m in METRICS]
    width = max(12, *(len(name) + 2 for name in table))
    lines = [f"{'method':<{width}}" + "".join(f"{h:>17}" for h in heads)]
    for name, row in table.items():
        cells = "".join(f"{row[m]:>17.4f}" if row[m] is not None else f"{'-':>17}" for m in METRICS)
        lines.append(f"{name:<{width}}" + cells)
    return "\n".join(lines)
