"""How good are the reward models? Held-out pair accuracy and agreement with the simulator.

Two kinds of evidence, both on held-out (eval) impressions the models never saw:

1. **Pair accuracy per family**: pairs are built from the eval impressions
   with the run's pair rules; a model is right on a pair when it scores the
   chosen page above the rejected one (page model: page reward; item model:
   the sum of item rewards over the slots where the pages differ, the
   quantity it was trained on). The labels are implicit feedback and so noisy;
   on simulated data we also report how often the *label* agrees with the
   simulator's truth (``label_truth_agreement``, a ceiling of sorts) and how
   often the *model* orders the two pages as the truth does
   (``truth_accuracy``).
2. **Rank correlation with the simulator** (simulated data only): for each of
   ``rm.quality_requests`` held-out requests the logged page,
   ``rm.quality_random_pages`` random pages and ``rm.quality_perturbed_pages``
   perturbations of the logged page (a swap of two slots or an unshown
   candidate put into a slot) are scored, so the pages of a request differ
   both a lot and a little. Spearman correlations:

   - ``page_spearman``: page reward vs expected clicks (``sim.score_page``),
     within each request, averaged over requests -- the Bradley-Terry model
     only ever compares pages of one request, so its scale across requests is
     not identified; ``page_spearman_pooled`` pools all pages anyway;
   - ``item_sum_spearman``: the page's summed item rewards vs its expected
     clicks, within each request (what an item-only reward optimises; with a
     click-trained item head the sum is the model's expected clicks);
   - ``item_spearman``: item reward vs the slot's exact expected clicks
     (``sim.expected_slot_clicks``), across the pages of one request at one
     slot index, averaged over (request, slot). This is what the item model's
     Bradley-Terry loss identifies: a constant per slot (or per request) cancels
     in every pair, so absolute levels across slots and requests are not
     learned, and the pooled variants below mix in those arbitrary offsets;
     ``item_spearman_same_slot``: one slot index across all pages and
     requests, averaged over slots; ``item_spearman_pooled``: everything pooled.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from pagerl.data.types import Impression, Request
from pagerl.rewards.models import RewardModels
from pagerl.rewards.pairs import FAMILIES, PreferencePair


def rank_average(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and sorted_x[end + 1] == sorted_x[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0
        start = end + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation; NaN when either side is constant or has < 2 values."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} values against {len(b)}")
    if len(a) < 2:
        return float("nan")
    ra, rb = rank_average(a), rank_average(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def score_pairs(models: RewardModels, pairs: Sequence[PreferencePair]) -> Tuple[np.ndarray, np.ndarray]:
    """Per pair, ``(page delta, item delta)`` = chosen minus rejected (item: over the differing slots)."""
    if not pairs:
        return np.zeros(0), np.zeros(0)
    requests = [p.request for p in pairs] * 2
    pages = [list(p.chosen) for p in pairs] + [list(p.rejected) for p in pairs]
    page, item = models.score(requests, pages)
    b = len(pairs)
    mask = torch.zeros(b, item.shape[1])
    for i, p in enumerate(pairs):
        mask[i, list(p.slots)] = 1.0
    page_delta = (page[:b] - page[b:]).numpy()
    item_delta = ((item[:b] - item[b:]) * mask).sum(dim=1).numpy()
    return page_delta, item_delta


def pair_accuracy(models: RewardModels, pairs: Sequence[PreferencePair], sim: Any = None) -> Dict[str, Dict[str, float]]:
    """Accuracy of the page and item models per family (and ``all``) on ``pairs``."""
    page_delta, item_delta = score_pairs(models, pairs)
    truth = None
    if sim is not None and pairs:
        truth = np.array([
            sim.score_page(p.request, list(p.chosen)).expected_clicks
            - sim.score_page(p.request, list(p.rejected)).expected_clicks
            for p in pairs
        ])
    out: Dict[str, Dict[str, float]] = {}
    families = [f for f in FAMILIES if any(p.family == f for p in pairs)] + ["all"]
    for family in families:
        idx = np.array([i for i, p in enumerate(pairs) if family in ("all", p.family)], dtype=np.int64)
        if len(idx) == 0:
            continue
        row = {"pairs": int(len(idx)),
               "page_accuracy": float((page_delta[idx] > 0).mean()),
               "item_accuracy": float((item_delta[idx] > 0).mean())}
        if truth is not None:
            decided = idx[truth[idx] != 0]
            row["label_truth_agreement"] = float((truth[idx] > 0).mean())
            if len(decided):
                sign = np.sign(truth[decided])
                row["page_truth_accuracy"] = float((np.sign(page_delta[decided]) == sign).mean())
                row["item_truth_accuracy"] = float((np.sign(item_delta[decided]) == sign).mean())
        out[family] = row
    return out


def quality_pages(imp: Impression, rng: np.random.Generator, n_random: int, n_perturbed: int) -> List[List[str]]:
    """The logged page, random pages and perturbations of the logged page (all distinct)."""
    request, logged = imp.request, list(imp.page)
    ids = [c.item_id for c in request.candidates]
    k = len(logged)
    pages: List[List[str]] = [logged]
    seen = {tuple(logged)}

    def add(page: List[str]) -> None:
        if tuple(page) not in seen:
            seen.add(tuple(page))
            pages.append(page)

    for _ in range(n_random):
        add([ids[j] for j in rng.choice(len(ids), size=k, replace=False)])
    unshown = [i for i in ids if i not in set(logged)]
    for _ in range(n_perturbed):
        page = list(logged)
        if unshown and (k < 2 or rng.random() < 0.5):
            page[int(rng.integers(k))] = unshown[int(rng.integers(len(unshown)))]
        elif k >= 2:
            a, b = rng.choice(k, size=2, replace=False)
            page[a], page[b] = page[b], page[a]
        add(page)
    return pages


def simulator_correlation(models: RewardModels, impressions: Sequence[Impression], sim: Any, *,
                          n_random: int, n_perturbed: int, seed: int) -> Dict[str, float]:
    """Spearman correlations of page and item rewards with the simulator's truth (module doc)."""
    rng = np.random.default_rng([int(seed), 7])
    requests: List[Request] = []
    pages: List[List[str]] = []
    owner: List[int] = []
    for r, imp in enumerate(impressions):
        for page in quality_pages(imp, rng, n_random, n_perturbed):
            requests.append(imp.request)
            pages.append(page)
            owner.append(r)
    page_reward, item_reward = models.score(requests, pages)
    page_reward, item_reward = page_reward.numpy(), item_reward.numpy()
    true_page = np.array([sim.score_page(q, p).expected_clicks for q, p in zip(requests, pages)])
    by_request: Dict[int, List[int]] = defaultdict(list)
    for i, r in enumerate(owner):
        by_request[r].append(i)
    page_within = [spearman(page_reward[i], true_page[i]) for i in by_request.values()]
    item_sum = item_reward.sum(axis=1)
    item_sum_within = [spearman(item_sum[i], true_page[i]) for i in by_request.values()]

    item_pred, item_true, item_req, item_slot = [], [], [], []
    for i, (q, p) in enumerate(zip(requests, pages)):
        for k, value in enumerate(sim.expected_slot_clicks(q, p)):
            item_pred.append(item_reward[i, k])
            item_true.append(value)
            item_req.append(owner[i])
            item_slot.append(k)
    item_pred, item_true = np.array(item_pred), np.array(item_true)
    item_req, item_slot = np.array(item_req), np.array(item_slot)
    item_within = [
        spearman(item_pred[(item_req == r) & (item_slot == k)], item_true[(item_req == r) & (item_slot == k)])
        for r in by_request for k in np.unique(item_slot[item_req == r])
    ]
    same_slot = [spearman(item_pred[item_slot == k], item_true[item_slot == k]) for k in np.unique(item_slot)]
    return {
        "requests": len(by_request),
        "pages": len(pages),
        "page_spearman": _nanmean(page_within),
        "page_spearman_pooled": spearman(page_reward, true_page),
        "item_sum_spearman": _nanmean(item_sum_within),
        "item_spearman": _nanmean(item_within),
        "item_spearman_same_slot": _nanmean(same_slot),
        "item_spearman_pooled": spearman(item_pred, item_true),
    }


def reward_quality(models: RewardModels, eval_pairs: Sequence[PreferencePair],
                   eval_impressions: Sequence[Impression], rm_cfg: Any, seed: int,
                   sim: Optional[Any] = None) -> Dict[str, Any]:
    """The whole report: pair accuracy per family, and the simulator correlations when ``sim`` is given."""
    report: Dict[str, Any] = {"pair_accuracy": pair_accuracy(models, eval_pairs, sim)}
    if sim is None:
        report["simulator"] = None
        return report
    chosen = list(eval_impressions)
    if rm_cfg.quality_requests > 0:
        chosen = chosen[: rm_cfg.quality_requests]
    report["simulator"] = simulator_correlation(
        models, chosen, sim, n_random=rm_cfg.quality_random_pages,
        n_perturbed=rm_cfg.quality_perturbed_pages, seed=seed,
    )
    return report


def flat_metrics(report: Dict[str, Any]) -> Dict[str, float]:
    """The report's numbers as ``name -> float`` for :class:`MetricsLogger` (stage ``rm``)."""
    out: Dict[str, float] = {}
    for family, row in report.get("pair_accuracy", {}).items():
        for key, value in row.items():
            out[f"eval_{family}_{key}"] = float(value)
    for key, value in (report.get("simulator") or {}).items():
        out[f"eval_{key}"] = float(value)
    recipe_credit = ((report.get("credit_fidelity") or {}).get("settings") or {}).get("recipe") or {}
    if recipe_credit.get("pooled") is not None:
        out["eval_credit_fidelity"] = float(recipe_credit["pooled"])
    return out
