"""Exact expectations of the whole-page click model, for many pages at once.

The model itself (examination, cascade, diversity bonus, redundancy penalty,
purchases) is documented in :mod:`pagerl.sim.simulator`; this module is its
arithmetic. Everything is vectorised over a batch of pages because the same
code serves callers with very different batch sizes: ``score_page`` (one
page), the exhaustive oracle (N!/(N-K)! pages, ~10^5) and beam search
(partial pages of L < K slots).

Layout: internally a batch of pages is a list of slot columns -- column k
holds the candidate index at slot k of every page, as one contiguous array.
The model is a short recursion over slots, and numpy is several times
faster on K long contiguous vectors than on reductions along a short axis of
an (M, K) array; that is what keeps the exhaustive oracle within a few
milliseconds. Public functions take the natural (M, L) arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np

# numpy >= 2.0; older numpy takes the pairwise-comparison path.
_HAS_POPCOUNT = hasattr(np, "bitwise_count")

Columns = Sequence[np.ndarray]


def examination(num_slots: int, position_bias: float) -> np.ndarray:
    """P(examine slot k | the user is still on the page) = 1 / (1 + k) ** position_bias."""
    return 1.0 / (1.0 + np.arange(num_slots, dtype=np.float64)) ** position_bias


@dataclass
class CandidateModel:
    """The ground truth of one request, as arrays over its N candidates."""

    click: np.ndarray  # (N,) P(click | examined), before page effects
    purchase: np.ndarray  # (N,) P(purchase | click)
    price: np.ndarray  # (N,)
    category: np.ndarray  # (N,) int
    group: np.ndarray  # (N,) int, equal for near-duplicates
    exam: np.ndarray  # (K,)
    page_size: int
    diversity_bonus: float
    redundancy_penalty: float
    continue_after_click: float

    def __post_init__(self) -> None:
        self.value_if_click = self.purchase * self.price
        # Category bit masks make "distinct categories of a page" a few ORs
        # and a popcount (categories are relabelled densely per request, so
        # this works whenever a request spans < 63 categories).
        _, dense = np.unique(self.category, return_inverse=True)
        self.category_bits = None
        if _HAS_POPCOUNT and dense.max(initial=0) < 63:
            self.category_bits = np.int64(1) << dense.astype(np.int64)
        # Near-duplicate pairs among the candidates (usually none or a few):
        # the redundancy penalty only needs to look at these.
        same = (self.group[:, None] == self.group[None, :]) & ~np.eye(len(self.group), dtype=bool)
        self.dup_pairs = [(int(a), int(b)) for a, b in np.argwhere(np.triu(same))]
        # Plain-Python copies for the one-page path (numpy call overhead
        # dominates when there is a single page of five slots).
        self._lists = (
            self.click.tolist(),
            self.value_if_click.tolist(),
            self.category.tolist(),
            self.group.tolist(),
            self.exam.tolist(),
        )

    @property
    def num_candidates(self) -> int:
        return len(self.click)


def to_columns(pages: np.ndarray) -> List[np.ndarray]:
    pages = np.asarray(pages, dtype=np.intp)
    if pages.ndim != 2:
        raise ValueError(f"pages: expected an (M, L) array of candidate indices, got shape {pages.shape}")
    return [np.ascontiguousarray(pages[:, k]) for k in range(pages.shape[1])]


def _distinct_categories(model: CandidateModel, cols: Columns) -> np.ndarray:
    if model.category_bits is not None:
        bits = model.category_bits[cols[0]]
        for col in cols[1:]:
            bits = bits | model.category_bits[col]
        return np.bitwise_count(bits).astype(np.int64)
    cats = [model.category[col] for col in cols]
    distinct = np.zeros(len(cols[0]), dtype=np.int64)
    for k, cat in enumerate(cats):
        seen = np.zeros(len(cat), dtype=bool)
        for j in range(k):
            seen |= cats[j] == cat
        distinct += ~seen
    return distinct


def _dups_above(model: CandidateModel, cols: Columns) -> List[np.ndarray]:
    """Per slot: how many near-duplicates of its item are shown above it."""
    m = len(cols[0])
    counts = [np.zeros(m, dtype=np.int64) for _ in cols]
    if not len(model.dup_pairs):
        return counts
    slot_of = {}
    for c in sorted({c for pair in model.dup_pairs for c in pair}):
        where = np.full(m, -1, dtype=np.int64)
        for k, col in enumerate(cols):
            where[col == c] = k
        slot_of[c] = where
    for a, b in model.dup_pairs:
        sa, sb = slot_of[a], slot_of[b]
        later = np.where((sa >= 0) & (sb >= 0), np.maximum(sa, sb), -1)
        for k in range(1, len(cols)):
            counts[k] += later == k
    return counts


def _slot_click(model: CandidateModel, cols: Columns) -> Tuple[List[np.ndarray], np.ndarray, List[np.ndarray]]:
    distinct = _distinct_categories(model, cols)
    dups = _dups_above(model, cols)
    k = model.page_size
    mult = 1.0 + model.diversity_bonus * (distinct - 1) / (k - 1) if k > 1 else np.ones(len(distinct))
    keep = 1.0 - model.redundancy_penalty
    probs = []
    for col, dup in zip(cols, dups):
        factor = mult * keep**dup if dup.any() else mult
        probs.append(np.minimum(1.0, model.click[col] * factor))
    return probs, distinct, dups


def _cascade(
    model: CandidateModel, cols: Columns, probs: Columns
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = len(cols[0]) if cols else 0
    alive = np.ones(m)
    clicks = np.zeros(m)
    gmv = np.zeros(m)
    stop_after_click = 1.0 - model.continue_after_click
    for k, (col, c) in enumerate(zip(cols, probs)):
        expected_click = alive * (model.exam[k] * c)
        clicks += expected_click
        gmv += expected_click * model.value_if_click[col]
        alive = alive - stop_after_click * expected_click
    return clicks, gmv, alive


def page_structure(model: CandidateModel, pages: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per page: the number of distinct categories (M,), and per slot the
    number of near-duplicates of its item shown above it (M, L)."""
    cols = to_columns(pages)
    return _distinct_categories(model, cols), np.stack(_dups_above(model, cols), axis=1)


def diversity_multiplier(model: CandidateModel, distinct: np.ndarray) -> np.ndarray:
    """1 + diversity_bonus * (D - 1) / (K - 1): 1 for a one-category page, 1 + bonus for K categories."""
    k = model.page_size
    if k <= 1:
        return np.ones_like(distinct, dtype=np.float64)
    return 1.0 + model.diversity_bonus * (distinct - 1) / (k - 1)


def slot_click_probabilities(model: CandidateModel, pages: np.ndarray) -> np.ndarray:
    """(M, L) P(click | examined) at each slot, page-level effects applied:
    c_k = min(1, p_k * m_div * (1 - redundancy_penalty) ** r_k)."""
    probs, _, _ = _slot_click(model, to_columns(pages))
    return np.stack(probs, axis=1)


def cascade_columns(model: CandidateModel, cols: Columns) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward recursion over slots: expected clicks, expected GMV and the
    probability that the user is still on the page after the last slot.

    alive_0 = 1; at slot k a user still on the page examines it with e_k and
    clicks with c_k, so E[click_k] = alive_k e_k c_k, and E[gmv_k] adds
    P(purchase | click) * price; a click ends the visit with probability
    1 - continue_after_click: alive_{k+1} = alive_k - (1 - continue_after_click) E[click_k].
    """
    if not cols:
        raise ValueError("a page needs at least one slot")
    probs, _, _ = _slot_click(model, cols)
    return _cascade(model, cols, probs)


def expected_outcomes_columns(model: CandidateModel, cols: Columns) -> Tuple[np.ndarray, np.ndarray]:
    clicks, gmv, _ = cascade_columns(model, cols)
    return clicks, gmv


def expected_outcomes(model: CandidateModel, pages: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(expected clicks, expected GMV) of each full page in ``pages`` (M, K)."""
    return expected_outcomes_columns(model, to_columns(pages))


def slot_click_one_page(model: CandidateModel, positions: Sequence[int]) -> Tuple[List[float], int, List[int]]:
    """One page in plain Python: P(click | examined) at each slot with the
    page effects applied, the number of distinct categories, and the
    near-duplicates above each slot."""
    click, _, category, group, _ = model._lists
    k = model.page_size
    distinct = len({category[j] for j in positions})
    mult = 1.0 + model.diversity_bonus * (distinct - 1) / (k - 1) if k > 1 else 1.0
    keep = 1.0 - model.redundancy_penalty
    shown: dict = {}
    probs, dups = [], []
    for j in positions:
        r = shown.get(group[j], 0)
        shown[group[j]] = r + 1
        dups.append(r)
        probs.append(min(1.0, click[j] * mult * keep**r))
    return probs, distinct, dups


class OnePage(NamedTuple):
    expected_clicks: float
    expected_gmv: float
    distinct_categories: int
    dups_above: List[int]  # near-duplicates shown above each slot
    slot_clicks: List[float]  # expected clicks of each slot (sums to expected_clicks)


def score_one_page(model: CandidateModel, positions: Sequence[int]) -> OnePage:
    """The same model for one page in plain Python.

    A second, independent implementation on purpose: it is what
    ``score_page`` and ``sample_feedback`` use (numpy call overhead would
    dominate a single five-slot page), and the tests check the vectorised
    path, which the oracle uses, against it page by page."""
    _, value_if_click, _, _, exam = model._lists
    probs, distinct, dups = slot_click_one_page(model, positions)
    stop_after_click = 1.0 - model.continue_after_click
    alive, clicks, gmv = 1.0, 0.0, 0.0
    slot_clicks = []
    for slot, (j, c) in enumerate(zip(positions, probs)):
        expected_click = alive * exam[slot] * c
        slot_clicks.append(expected_click)
        clicks += expected_click
        gmv += expected_click * value_if_click[j]
        alive -= stop_after_click * expected_click
    return OnePage(clicks, gmv, distinct, dups, slot_clicks)
