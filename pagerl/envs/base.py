"""The environment interface: a page simulator as a one-step gymnasium environment.

A page is one decision: the policy sees a request and lays out K of its N
candidates at once, and the user's response to that page ends the episode.
So :class:`PageEnv` is a contextual bandit in gymnasium's form: ``reset``
samples a request, ``step`` takes a page and always terminates.

Why one interface: data generation, rewards and evaluation all need the
same three things of a simulator -- draw a request, draw the user's clicks on
a page, and (where the simulator knows its own ground truth) score a page
exactly -- and each of them should be able to take any simulator. An
environment provides those three as :meth:`PageEnv.sample_request`,
:meth:`PageEnv.sample_clicks` and :meth:`PageEnv.score`, plus
:meth:`PageEnv.observe` (the request as fixed-shape arrays); this class turns
them into ``reset`` and ``step``. One that cannot score exactly (a logged
data set replayed, or a simulator whose expectation is not closed-form)
leaves :meth:`PageEnv.score` returning None and supports only
``reward="clicks"``.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gymnasium
import numpy as np
from gymnasium import spaces

from pagerl.data.types import Request

Observation = Dict[str, np.ndarray]

# What step() returns as the reward: the sampled clicks on the page, or the
# exact expected clicks (no sampling variance: for evaluation and ablations).
REWARDS = ("clicks", "expected_clicks")


class InvalidPageError(ValueError):
    """An action that is not a page of the current request: wrong length,
    a candidate index out of range, a candidate repeated, not integers."""


class PageSpace(spaces.MultiDiscrete):
    """``MultiDiscrete([N] * K)`` whose members are pages: K distinct candidate indices.

    It equals ``spaces.MultiDiscrete([N] * K)`` (so any code that handles
    MultiDiscrete actions handles it), but :meth:`sample` draws K distinct
    candidates in random order and :meth:`contains` refuses a repeat. Why:
    a uniform MultiDiscrete sample repeats a candidate more often than not
    (N=12, K=5: 62% of samples), and :class:`PageEnv` refuses such a page
    rather than scoring it zero, so ``action_space.sample()`` -- what random
    policies and gymnasium's own checker call -- must give a valid page.
    With a ``mask`` or ``probability`` it samples slots independently, as
    MultiDiscrete does, and the page may repeat a candidate.
    """

    def __init__(self, num_candidates: int, page_size: int, seed: Optional[int] = None) -> None:
        if not 1 <= page_size <= num_candidates:
            raise ValueError(f"PageSpace: need 1 <= page_size <= num_candidates, got K={page_size}, N={num_candidates}")
        super().__init__([num_candidates] * page_size, dtype=np.int64, seed=seed)
        self.num_candidates = int(num_candidates)
        self.page_size = int(page_size)

    def sample(self, mask: Any = None, probability: Any = None) -> np.ndarray:
        if mask is None and probability is None:
            return self.np_random.permutation(self.num_candidates)[: self.page_size].astype(self.dtype)
        return super().sample(mask=mask, probability=probability)

    def contains(self, x: Any) -> bool:
        if not super().contains(x):
            return False
        flat = np.asarray(x).ravel()
        return len(np.unique(flat)) == len(flat)

    def __repr__(self) -> str:
        return f"PageSpace(num_candidates={self.num_candidates}, page_size={self.page_size})"


class PageEnv(gymnasium.Env, metaclass=ABCMeta):
    """A page simulator as a one-step episode (see the module docstring).

    ``reset(seed=..., options=None)`` samples a request (or takes
    ``options["request"]``, e.g. a held-out one read from a file) and returns
    ``(observation, {"request": request})``.

    ``step(action)`` takes a page as K candidate indices into the request's
    candidate list (``action_space``) and returns ``(observation, reward,
    True, False, info)``: the observation is the request's again (the episode
    is over), and ``info`` holds ``"request"``, ``"page"`` (the item ids in
    slot order), ``"clicks"`` (sampled 0/1 per slot, int64, length K) and,
    where the environment scores exactly, ``"expected"`` (:meth:`score`).
    The reward is ``info["clicks"].sum()`` with ``reward="clicks"``, or
    ``info["expected"]["expected_clicks"]`` with ``reward="expected_clicks"``.
    An action that is not a page raises :class:`InvalidPageError` (a
    ValueError) saying what is wrong; it is never scored zero, which would
    hide a policy bug as a bad page.

    Randomness: every draw (the request, the clicks) comes from
    ``self.np_random``, so ``reset(seed=s)`` then the same action gives the
    same request, clicks and reward. Requests are named ``episode-<n>``,
    n counting episodes since the last seeded reset.

    A subclass passes its sizes and observation space to ``__init__`` and
    implements :meth:`sample_request`, :meth:`observe` and
    :meth:`sample_clicks`; it overrides :meth:`score` when it can score
    exactly.
    """

    metadata: Dict[str, Any] = {"render_modes": []}

    def __init__(
        self, num_candidates: int, page_size: int, observation_space: spaces.Dict, reward: str = "clicks"
    ) -> None:
        if reward not in REWARDS:
            raise ValueError(f"{type(self).__name__}: reward must be one of {list(REWARDS)}, got {reward!r}")
        if reward == "expected_clicks" and not self.has_exact_scorer:
            raise ValueError(
                f"{type(self).__name__}: reward='expected_clicks' needs an exact scorer, and this environment "
                "has none (its score() returns None); use reward='clicks'"
            )
        self.num_candidates = int(num_candidates)
        self.page_size = int(page_size)
        self.reward = reward
        self.action_space = PageSpace(self.num_candidates, self.page_size)
        self.observation_space = observation_space
        self._request: Optional[Request] = None
        self._observation: Optional[Observation] = None
        self._episode = 0

    # ------------------------------------------------ what an environment provides
    @abstractmethod
    def sample_request(self, rng: np.random.Generator, request_id: str = "request") -> Request:
        """A new request with exactly ``num_candidates`` candidates and page size
        ``page_size``, drawn from ``rng`` only (pass distinct ids for requests
        that are written out together)."""

    @abstractmethod
    def observe(self, request: Request) -> Observation:
        """The request as arrays of ``observation_space``: what a policy may
        see, never the simulator's hidden ground truth."""

    @abstractmethod
    def sample_clicks(self, request: Request, item_ids: Sequence[str], rng: np.random.Generator) -> np.ndarray:
        """One user visit of a valid page: 0/1 clicks per slot (length K), drawn from ``rng`` only."""

    def score(self, request: Request, item_ids: Sequence[str]) -> Optional[Dict[str, Any]]:
        """The page's exact expected outcomes, or None where the environment has no exact scorer.

        An override returns at least ``"expected_clicks"`` (float) and
        ``"slot_clicks"`` (expected clicks per slot, length K, summing to it),
        and raises :class:`InvalidPageError` for a page that is not valid."""
        return None

    @property
    def has_exact_scorer(self) -> bool:
        """Whether :meth:`score` is overridden (so ``reward="expected_clicks"`` works)."""
        return type(self).score is not PageEnv.score

    # ----------------------------------------------------------- pages and actions
    def page_of(self, request: Request, action: Any) -> List[str]:
        """The item ids of the page ``action`` (K candidate indices) lays out for ``request``.

        Raises :class:`InvalidPageError` naming the first problem found."""
        indices = np.asarray(action)
        n, k = len(request.candidates), request.page_size
        if indices.ndim != 1:
            raise InvalidPageError(f"a page is a 1-D array of {k} candidate indices, got shape {indices.shape}")
        if len(indices) != k:
            raise InvalidPageError(f"wrong length: the page has {k} slots (page_size), the action has {len(indices)}")
        if indices.dtype == bool or not np.issubdtype(indices.dtype, np.integer):
            raise InvalidPageError(f"candidate indices must be integers, got dtype {indices.dtype}")
        slot_of: Dict[int, int] = {}
        for slot, j in enumerate(indices.tolist()):
            if not 0 <= j < n:
                raise InvalidPageError(
                    f"out of range: slot {slot} holds candidate index {j}, the request has {n} candidates (0..{n - 1})"
                )
            if j in slot_of:
                raise InvalidPageError(
                    f"repeats: candidate {j} is in slot {slot_of[j]} and slot {slot}; a page shows each candidate once"
                )
            slot_of[j] = slot
        return [request.candidates[j].item_id for j in indices.tolist()]

    def action_of(self, request: Request, item_ids: Sequence[str]) -> np.ndarray:
        """The action that lays out the page ``item_ids`` (the inverse of :meth:`page_of`),
        so pages of id-based policies (baselines, the oracle, logs) can be stepped."""
        position = {c.item_id: j for j, c in enumerate(request.candidates)}
        missing = [iid for iid in item_ids if iid not in position]
        if missing:
            raise InvalidPageError(f"not candidates of request {request.request_id!r}: {missing}")
        action = np.array([position[iid] for iid in item_ids], dtype=np.int64)
        self.page_of(request, action)
        return action

    # ---------------------------------------------------------------- gymnasium API
    def reset(
        self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None
    ) -> Tuple[Observation, Dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._episode = 0
        request = (options or {}).get("request")
        if request is None:
            request = self.sample_request(self.np_random, f"episode-{self._episode}")
        self._episode += 1
        self._check_request(request)
        self._request, self._observation = request, self.observe(request)
        return self._observation, {"request": request}

    def step(self, action: Any) -> Tuple[Observation, float, bool, bool, Dict[str, Any]]:
        if self._request is None:
            raise RuntimeError(f"{type(self).__name__}.step(): call reset() first (each episode is one page)")
        request, observation = self._request, self._observation
        item_ids = self.page_of(request, action)
        clicks = np.asarray(self.sample_clicks(request, item_ids, self.np_random), dtype=np.int64)
        info: Dict[str, Any] = {"request": request, "page": item_ids, "clicks": clicks}
        expected = self.score(request, item_ids)
        if expected is not None:
            info["expected"] = expected
        if self.reward == "expected_clicks":
            if expected is None:
                raise RuntimeError(f"{type(self).__name__}.score() returned None for reward='expected_clicks'")
            reward = float(expected["expected_clicks"])
        else:
            reward = float(clicks.sum())
        self._request = None
        return observation, reward, True, False, info

    def _check_request(self, request: Request) -> None:
        if not isinstance(request, Request):
            raise TypeError(f"reset(options={{'request': ...}}) takes a Request, got {type(request).__name__}")
        if len(request.candidates) != self.num_candidates or request.page_size != self.page_size:
            raise ValueError(
                f"request {request.request_id!r} has {len(request.candidates)} candidates and page size "
                f"{request.page_size}; this environment's spaces are for {self.num_candidates} and {self.page_size}"
            )
