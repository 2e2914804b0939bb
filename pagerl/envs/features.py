"""A request as fixed-shape numeric arrays: what its prompt shows, for policies that are not LLMs.

Why only what the prompt shows: the language-model policy sees a request
through its prompt (:mod:`pagerl.tokenization.serialize`: the most recent
history categories, the query, each candidate's title, category and price
bucket), and a policy trained on these arrays must be comparable with it and
with the visible-feature heuristics of :mod:`pagerl.eval.baseline_policies`. So the
arrays are computed from the :class:`~pagerl.data.types.Request` alone, never
from a simulator: the hidden latent taste, true relevance, item quality and
popularity, near-duplicate groups and user features cannot leak (user
features and item ids are not in the prompt either).

Every array is float32, so a policy can flatten and concatenate them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
from gymnasium import spaces

from pagerl.config.schema import ModelConfig
from pagerl.data.types import Request

_PROMPT = ModelConfig()
# The prompt's defaults (model.price_bucket_edges, model.max_history_items).
DEFAULT_PRICE_BUCKET_EDGES: List[float] = list(_PROMPT.price_bucket_edges)
DEFAULT_MAX_HISTORY_ITEMS: int = _PROMPT.max_history_items

# The observation's fields (N candidates, C categories, Q quality words, B price buckets).
FIELDS: Dict[str, str] = {
    "category": "(N, C) one-hot of each candidate's category among the environment's categories",
    "quality": "(N, Q) one-hot of the quality word the candidate's title opens with (all zero if none)",
    "price_bucket": "(N, B) one-hot of the prompt's price_<b>: b is how many price_bucket_edges the price reaches",
    "history_count": "(N,) how many of the shown history items (the last max_history_items) share its category",
    "query_match": "(N,) share of the query's words that its title and category hold (0 without a query)",
    "title_similarity": "(N, N) Jaccard overlap of two candidates' title words, 0 on the diagonal",
    "has_query": "(1,) 1.0 when the request has a query",
}
# The fields with one row per candidate (all but has_query).
CANDIDATE_FIELDS = tuple(key for key in FIELDS if key != "has_query")


@dataclass(frozen=True)
class VisibleFeatures:
    """Encodes requests of one environment (its candidate count and category
    names fix the shapes) as the arrays of :data:`FIELDS`. The price edges and
    history window default to the prompt's (``model.price_bucket_edges``,
    ``model.max_history_items``) so the arrays show what the prompt shows."""

    num_candidates: int
    categories: Sequence[str]
    quality_words: Sequence[str] = ()
    price_bucket_edges: Sequence[float] = field(default_factory=lambda: list(DEFAULT_PRICE_BUCKET_EDGES))
    max_history_items: int = DEFAULT_MAX_HISTORY_ITEMS

    def space(self) -> spaces.Dict:
        """The observation space: a Box per field, bounded by what the field can hold."""
        n = self.num_candidates
        shapes = {
            "category": ((n, len(self.categories)), 1.0),
            "quality": ((n, len(self.quality_words)), 1.0),
            "price_bucket": ((n, len(self.price_bucket_edges) + 1), 1.0),
            "history_count": ((n,), float(max(1, self.max_history_items))),
            "query_match": ((n,), 1.0),
            "title_similarity": ((n, n), 1.0),
            "has_query": ((1,), 1.0),
        }
        return spaces.Dict(
            {key: spaces.Box(0.0, high, shape=shape, dtype=np.float32) for key, (shape, high) in shapes.items()}
        )

    def encode(self, request: Request) -> Dict[str, np.ndarray]:
        """The arrays of :data:`FIELDS` for ``request`` (its candidates in prompt order)."""
        items = request.candidates
        if len(items) != self.num_candidates:
            raise ValueError(
                f"request {request.request_id!r} has {len(items)} candidates, "
                f"the observation is for {self.num_candidates}"
            )
        category_index = {name: c for c, name in enumerate(self.categories)}
        unknown = sorted({item.category for item in items} - set(category_index))
        if unknown:
            raise ValueError(
                f"request {request.request_id!r}: categories {unknown} are not among {list(self.categories)}"
            )
        cats = np.array([category_index[item.category] for item in items], dtype=np.intp)
        titles = [item.title.split() for item in items]
        quality_index = {word: q for q, word in enumerate(self.quality_words)}
        buckets = np.searchsorted(np.asarray(self.price_bucket_edges, dtype=np.float64),
                                  [item.price for item in items], side="right")
        history = Counter(self._shown_history(request))
        return {
            "category": _one_hot(cats.tolist(), len(self.categories)),
            "quality": _one_hot([quality_index.get(t[0] if t else "", -1) for t in titles], len(self.quality_words)),
            "price_bucket": _one_hot(buckets.tolist(), len(self.price_bucket_edges) + 1),
            "history_count": np.array([history[item.category] for item in items], dtype=np.float32),
            "query_match": _query_match(request.query, titles, [item.category for item in items]),
            "title_similarity": _jaccard([set(t) for t in titles]),
            "has_query": np.array([1.0 if request.query else 0.0], dtype=np.float32),
        }

    def _shown_history(self, request: Request) -> List[str]:
        """The history categories the prompt shows: the most recent ``max_history_items``."""
        history = list(request.user.history_categories)
        return history[len(history) - self.max_history_items :] if self.max_history_items < len(history) else history


def _one_hot(indices: Sequence[int], width: int) -> np.ndarray:
    """Rows of zeros with a 1 at each index; an index of -1 leaves its row zero."""
    out = np.zeros((len(indices), width), dtype=np.float32)
    for row, j in enumerate(indices):
        if j >= 0:
            out[row, j] = 1.0
    return out


def _query_match(query: Optional[str], titles: Sequence[List[str]], categories: Sequence[str]) -> np.ndarray:
    """Per candidate, the share of the query's words its title words and category hold."""
    words = set((query or "").split())
    if not words:
        return np.zeros(len(titles), dtype=np.float32)
    return np.array([len(words & (set(t) | {c})) / len(words) for t, c in zip(titles, categories)], dtype=np.float32)


def _jaccard(word_sets: Sequence[set]) -> np.ndarray:
    n = len(word_sets)
    out = np.zeros((n, n), dtype=np.float32)
    for a in range(n):
        for b in range(a + 1, n):
            union = len(word_sets[a] | word_sets[b])
            out[a, b] = out[b, a] = len(word_sets[a] & word_sets[b]) / union if union else 0.0
    return out
