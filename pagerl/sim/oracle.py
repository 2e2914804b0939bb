"""The oracle page: the best page under the simulator's ground truth.

Why not sort by relevance: the page value is not a sum over items. The
diversity bonus depends on the set of categories of the whole page, the
redundancy penalty on which near-duplicate sits above which, and the cascade
makes an item's worth depend on everything above it. A relevance-sorted page
is often not the best one (the tests show requests where it loses).

Method (exact): exhaustive evaluation of all N!/(N-K)! ordered pages,
vectorised -- the pages are an index array and the expected value of every
page comes out of one pass of :func:`pagerl.sim.click_model.expected_outcomes`.
For the quickstart sizes (N=12, K=5: 95,040 pages) that is a few
milliseconds. Larger problems are cut into blocks that share a fixed prefix
of the first L slots, so memory stays bounded; the permutation tables are
cached per (N, K). Exhaustive search runs while N!/(N-K)! is at most
``sim.oracle_exhaustive_limit``.

Method (approximate, beyond that limit): beam search over slot prefixes,
ranking a prefix by its exact value so far plus an optimistic bound for the
remaining slots (the best unused items at the remaining slots with the full
diversity bonus and no redundancy penalty), followed by local search (best
improving slot swap or replacement by an unused candidate, until none
improves). The result is flagged ``exact=False`` with ``method`` saying so.

Ties are broken towards the lexicographically first page (candidate order),
so the oracle is deterministic.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Dict, List, Tuple

import numpy as np

from pagerl.sim.click_model import (
    CandidateModel,
    cascade_columns,
    expected_outcomes,
    expected_outcomes_columns,
    to_columns,
)

# Pages evaluated per vectorised block: bounds memory (about 100 bytes per page).
BLOCK_PAGES = 200_000

Objective = Callable[[np.ndarray, np.ndarray], np.ndarray]
OBJECTIVES: Dict[str, Objective] = {
    "clicks": lambda clicks, gmv: clicks,
    "gmv": lambda clicks, gmv: gmv,
}


class OraclePage(list):
    """The oracle's page (a list of item ids), carrying how it was found.

    ``exact`` is False when beam search was used; ``value`` is the page's
    expected objective; ``method`` names the search.
    """

    def __init__(self, items: List[str], value: float, exact: bool, method: str, objective: str) -> None:
        super().__init__(items)
        self.value = value
        self.exact = exact
        self.method = method
        self.objective = objective


def num_ordered_pages(n: int, k: int) -> int:
    return math.perm(n, k)


_PERMUTATION_CACHE: Dict[Tuple[int, int], np.ndarray] = {}


def k_permutations(n: int, k: int) -> np.ndarray:
    """All ordered selections of k out of range(n), lexicographic, (n!/(n-k)!, k).

    Built slot by slot without Python loops over pages: each row of the
    (k-1)-table is extended by each of its n-k+1 unused indices."""
    key = (n, k)
    if key not in _PERMUTATION_CACHE:
        table = np.zeros((1, 0), dtype=np.intp)
        for width in range(k):
            rows = table.shape[0]
            unused = np.ones((rows, n), dtype=bool)
            np.put_along_axis(unused, table, False, axis=1)
            choices = np.nonzero(unused)[1].reshape(rows, n - width)
            table = np.concatenate(
                [np.repeat(table, n - width, axis=0), choices.reshape(-1, 1)], axis=1
            )
        table.setflags(write=False)
        _PERMUTATION_CACHE[key] = table
    return _PERMUTATION_CACHE[key]


_COLUMN_CACHE: Dict[Tuple[int, int], List[np.ndarray]] = {}


def k_permutation_columns(n: int, k: int) -> List[np.ndarray]:
    """:func:`k_permutations` as K contiguous slot columns (cached)."""
    key = (n, k)
    if key not in _COLUMN_CACHE:
        _COLUMN_CACHE[key] = to_columns(k_permutations(n, k))
    return _COLUMN_CACHE[key]


def _page_values(model: CandidateModel, pages: np.ndarray, objective: str) -> np.ndarray:
    clicks, gmv = expected_outcomes(model, pages)
    return OBJECTIVES[objective](clicks, gmv)


def _column_values(model: CandidateModel, cols: List[np.ndarray], objective: str) -> np.ndarray:
    clicks, gmv = expected_outcomes_columns(model, cols)
    return OBJECTIVES[objective](clicks, gmv)


def exhaustive_search(
    model: CandidateModel, objective: str = "clicks", block_pages: int = BLOCK_PAGES
) -> Tuple[np.ndarray, float]:
    """The exactly best page (candidate indices) and its value."""
    n, k = model.num_candidates, model.page_size
    block_pages = max(1, block_pages)
    if num_ordered_pages(n, k) <= block_pages:
        cols = k_permutation_columns(n, k)
        values = _column_values(model, cols, objective)
        best = int(np.argmax(values))
        return np.array([col[best] for col in cols], dtype=np.intp), float(values[best])
    # Blocks sharing a fixed prefix of the first `fixed` slots.
    fixed = next(f for f in range(1, k + 1) if num_ordered_pages(n - f, k - f) <= block_pages)
    suffixes = k_permutation_columns(n - fixed, k - fixed)
    rows = len(suffixes[0]) if suffixes else 1
    best_page, best_value = None, -np.inf
    for prefix in itertools.permutations(range(n), fixed):
        remaining = np.array([i for i in range(n) if i not in prefix], dtype=np.intp)
        cols = [np.full(rows, p, dtype=np.intp) for p in prefix] + [remaining[col] for col in suffixes]
        values = _column_values(model, cols, objective)
        j = int(np.argmax(values))
        if values[j] > best_value:
            best_page, best_value = np.array([col[j] for col in cols], dtype=np.intp), float(values[j])
    return best_page, best_value


def _prefix_scores(model: CandidateModel, prefixes: np.ndarray, objective: str) -> np.ndarray:
    """Exact value of each prefix plus an optimistic bound for the slots left."""
    k, width = model.page_size, prefixes.shape[1]
    clicks, gmv, alive = cascade_columns(model, to_columns(prefixes))
    value = OBJECTIVES[objective](clicks, gmv)
    left = k - width
    if left == 0:
        return value
    best_click = np.minimum(1.0, model.click * (1.0 + model.diversity_bonus))
    per_item = best_click if objective == "clicks" else best_click * model.purchase * model.price
    per_item = np.broadcast_to(per_item, (len(prefixes), model.num_candidates)).copy()
    np.put_along_axis(per_item, prefixes, -np.inf, axis=1)
    top = -np.sort(-per_item, axis=1)[:, :left]
    return value + alive * (top * model.exam[width:]).sum(axis=1)


def _local_search(model: CandidateModel, page: np.ndarray, objective: str, max_rounds: int = 100):
    n, k = model.num_candidates, model.page_size
    value = float(_page_values(model, page[None, :], objective)[0])
    for _ in range(max_rounds):
        neighbours = []
        for i, j in itertools.combinations(range(k), 2):
            swapped = page.copy()
            swapped[i], swapped[j] = page[j], page[i]
            neighbours.append(swapped)
        for slot in range(k):
            for item in np.setdiff1d(np.arange(n), page):
                replaced = page.copy()
                replaced[slot] = item
                neighbours.append(replaced)
        if not neighbours:
            break
        neighbours = np.stack(neighbours)
        values = _page_values(model, neighbours, objective)
        best = int(np.argmax(values))
        if values[best] <= value + 1e-12:
            break
        page, value = neighbours[best], float(values[best])
    return page, value


def beam_search(model: CandidateModel, beam_width: int, objective: str = "clicks") -> Tuple[np.ndarray, float]:
    """An approximately best page: beam search over prefixes, then local search."""
    n, k = model.num_candidates, model.page_size
    beams = np.zeros((1, 0), dtype=np.intp)
    for width in range(k):
        rows = beams.shape[0]
        unused = np.ones((rows, n), dtype=bool)
        np.put_along_axis(unused, beams, False, axis=1)
        choices = np.nonzero(unused)[1].reshape(rows, n - width)
        expanded = np.concatenate([np.repeat(beams, n - width, axis=0), choices.reshape(-1, 1)], axis=1)
        scores = _prefix_scores(model, expanded, objective)
        keep = np.argsort(-scores, kind="stable")[:beam_width]
        beams = expanded[keep]
    values = _page_values(model, beams, objective)
    best = int(np.argmax(values))
    return _local_search(model, beams[best].copy(), objective)


def search(model: CandidateModel, exhaustive_limit: int, beam_width: int, objective: str = "clicks"):
    """(page indices, value, exact, method) by the method the problem size allows."""
    if objective not in OBJECTIVES:
        raise ValueError(f"oracle objective: expected one of {sorted(OBJECTIVES)}, got {objective!r}")
    if num_ordered_pages(model.num_candidates, model.page_size) <= exhaustive_limit:
        page, value = exhaustive_search(model, objective)
        return page, value, True, "exhaustive"
    page, value = beam_search(model, beam_width, objective)
    return page, value, False, f"beam{beam_width}+local_search (approximate)"
