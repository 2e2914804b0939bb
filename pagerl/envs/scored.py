"""A page environment as a fixed-shape scoring task: the form a generic RL library trains on.

:class:`~pagerl.envs.base.PageEnv` speaks in pages (K distinct candidate
indices, a ``MultiDiscrete`` that must not repeat) and dict observations.
Generic RL libraries (RLlib's default models among them) want one flat
observation vector and an action any distribution can produce. So
:class:`ScoredPageEnv` wraps a ``PageEnv`` as

- **observation**: ``Box(0, 1, (D,))``, the environment's own observation
  (for ``pagesim``, :class:`~pagerl.envs.features.VisibleFeatures`: only what
  the prompt shows) flattened by :func:`flatten_observation`: every bounded
  field divided by its upper bound (an unbounded one, such as obp's context
  vector, kept as it is, and the Box then unbounded), candidate-major (all of candidate 0's
  per-candidate fields, then candidate 1's, ...), then the request-level
  fields. Nothing else reaches the policy: no item ids, no hidden simulator
  state;
- **action**: ``Box(-inf, inf, (N,))``, one score per candidate. Unbounded,
  so RLlib neither squashes nor clips it (a clipped score would tie with
  others and hand the page to the tie-break);
- **page**: the K candidates with the highest scores, in score order
  (:func:`top_k_page`). Ties go to the lower candidate index (a stable sort),
  and NaN scores are refused rather than ranked;
- **reward**: the wrapped environment's (``reward="clicks"``: the clicks the
  simulated user made on the page; ``"expected_clicks"``: their exact
  expectation), and ``info`` is the wrapped environment's plus ``"action"``
  (the page as candidate indices).

Seeding: ``reset(seed=s)`` seeds the wrapped environment with a seed derived
from ``(stream_seed, TRAIN_STREAM, s)``, so a caller that seeds with small
integers (RLlib gives its environments ``seed + index``) still draws requests
from a stream of its own under ``stream_seed``, apart from the run's other
streams under the same seed (world 0-3, synth 10-11, eval 20-21).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import gymnasium
import numpy as np
from gymnasium import spaces

from pagerl.envs.base import PageEnv

# Spawn-key prefix of the wrapped environment's seeds under ``stream_seed``.
TRAIN_STREAM = 30


def top_k_page(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices of the ``k`` highest ``scores``, highest first; ties go to the lower index.

    Raises ValueError for scores that are not a 1-D finite-or-infinite array (NaN has no rank)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores: expected one score per candidate (1-D), got shape {scores.shape}")
    if not 1 <= k <= len(scores):
        raise ValueError(f"k: expected 1..{len(scores)} (the number of scores), got {k}")
    if np.isnan(scores).any():
        raise ValueError(f"scores: NaN at candidate(s) {np.flatnonzero(np.isnan(scores)).tolist()}; a NaN has no rank")
    # A stable sort of the negated scores keeps equal scores in index order.
    return np.argsort(-scores, kind="stable")[:k].astype(np.int64)


def flatten_observation(space: spaces.Dict, observation: Dict[str, np.ndarray], num_candidates: int,
                        candidate_fields: Sequence[str]) -> np.ndarray:
    """``observation`` (a member of ``space``) as one float32 vector in [0, 1] (module doc for the layout).

    The ``candidate_fields`` (the environment's :attr:`~pagerl.envs.base.PageEnv.candidate_fields`)
    have one row per candidate; the others (``has_query``, obp's context vector) describe the
    request and come last, in the space's key order."""
    per_candidate, per_request = [], []
    for key, box in space.spaces.items():
        value = np.asarray(observation[key], dtype=np.float32)
        scaled = value if _unbounded(box) else np.divide(
            value, (high := np.broadcast_to(np.asarray(box.high, dtype=np.float32), box.shape)),
            out=np.zeros_like(value), where=high > 0)
        if key in candidate_fields:
            if not box.shape or box.shape[0] != num_candidates:
                raise ValueError(f"observation field {key!r} is per candidate but has shape {box.shape}, "
                                 f"not ({num_candidates}, ...)")
            per_candidate.append(scaled.reshape(num_candidates, -1))
        else:
            per_request.append(scaled.ravel())
    rows = np.concatenate(per_candidate, axis=1) if per_candidate else np.zeros((num_candidates, 0), np.float32)
    return np.concatenate([rows.ravel(), *per_request]).astype(np.float32)


# A field bounded above by more than this is taken as unbounded (obp's N(0, I) context declares
# the float32 range) and is passed on as it is: divided by its bound it would be all zeros.
MAX_SCALED_BOUND = 1e6


def _unbounded(box: spaces.Box) -> bool:
    return bool(np.any(np.asarray(box.high) > MAX_SCALED_BOUND) or np.any(np.asarray(box.low) < 0))


def flat_space(space: spaces.Dict) -> spaces.Box:
    """The flat observation's space: [0, 1] when every field is bounded, else unbounded."""
    low = -np.inf if any(_unbounded(box) for box in space.spaces.values()) else 0.0
    high = np.inf if low == -np.inf else 1.0
    return spaces.Box(low, high, shape=(flat_size(space),), dtype=np.float32)


def flat_size(space: spaces.Dict) -> int:
    return int(sum(int(np.prod(box.shape)) for box in space.spaces.values()))


def request_width(space: spaces.Dict, candidate_fields: Sequence[str]) -> int:
    """How many features of the flat observation describe the request, not a candidate (they come last)."""
    return int(sum(int(np.prod(box.shape)) for key, box in space.spaces.items() if key not in candidate_fields))


class ScoredPageEnv(gymnasium.Env):
    """A :class:`PageEnv` with flat observations and per-candidate score actions (module doc)."""

    metadata: Dict[str, Any] = {"render_modes": []}

    def __init__(self, env: PageEnv, stream_seed: int = 0) -> None:
        self.env = env
        self.stream_seed = int(stream_seed)
        self.num_candidates, self.page_size = env.num_candidates, env.page_size
        self.observation_space = flat_space(env.observation_space)
        # The flat layout: num_candidates rows of candidate_width features, then request_width.
        self.request_width = request_width(env.observation_space, env.candidate_fields)
        self.candidate_width = (flat_size(env.observation_space) - self.request_width) // self.num_candidates
        self.action_space = spaces.Box(-np.inf, np.inf, shape=(self.num_candidates,), dtype=np.float32)

    def flatten(self, observation: Dict[str, np.ndarray]) -> np.ndarray:
        return flatten_observation(self.env.observation_space, observation, self.num_candidates,
                                   self.env.candidate_fields)

    def page_action(self, scores: np.ndarray) -> np.ndarray:
        """The wrapped environment's action (K candidate indices) for per-candidate ``scores``."""
        return top_k_page(scores, self.page_size)

    def reset(self, *, seed: Optional[int] = None,
              options: Optional[Dict[str, Any]] = None) -> Tuple[np.ndarray, Dict[str, Any]]:
        super().reset(seed=seed)
        inner = None if seed is None else _derived_seed(self.stream_seed, int(seed))
        observation, info = self.env.reset(seed=inner, options=options)
        return self.flatten(observation), info

    def step(self, action: Any) -> Tuple[np.ndarray, float, bool, bool, Dict[str, Any]]:
        page = self.page_action(np.asarray(action, dtype=np.float64).ravel())
        observation, reward, terminated, truncated, info = self.env.step(page)
        info = dict(info, action=page)
        return self.flatten(observation), float(reward), terminated, truncated, info


def _derived_seed(stream_seed: int, seed: int) -> int:
    """An int seed for the wrapped environment from ``(stream_seed, seed)``, both >= 0."""
    if seed < 0 or stream_seed < 0:
        raise ValueError(f"seeds must be 0 or more, got stream_seed={stream_seed}, seed={seed}")
    state = np.random.SeedSequence(stream_seed, spawn_key=(TRAIN_STREAM, seed)).generate_state(1, dtype=np.uint32)
    return int(state[0])
