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

from pagerl.data.types import ItemFeedback, Request
from pagerl.sim.simulator import PageScore, dcg_discounts, ideal_dcg

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
    # The seed that fixed the environment's world (not its episodes): streams derived
    # from the world, such as a baseline's tuning requests, start from it.
    world_seed: int = 0
    # Observation fields with one row per candidate (axis 0 is the candidate, in prompt
    # order); the others describe the request. Policies that score candidates read it.
    candidate_fields: Tuple[str, ...] = ()

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

    # ------------------------------- what the synth, reward and eval stages call
    # The simulator's own method names and signatures (pagerl.sim.Simulator), so
    # every stage takes any environment. Built from the primitives above; an
    # environment that knows more (pagesim) overrides them with its own.
    def check_request(self, request: Request) -> None:
        """Raise ValueError when ``request`` cannot come from this environment
        (the eval stage checks held-out data before any generation)."""
        self._check_request(request)

    def logging_page(self, request: Request, rng: np.random.Generator) -> Tuple[List[str], float]:
        """A page of the environment's logging (behaviour) policy and its exact probability:
        what the synth stage logs. An environment without one cannot synthesize logs."""
        raise NotImplementedError(
            f"{type(self).__name__} has no logging policy, so it cannot synthesize logged data (synth stage)"
        )

    def sample_feedback(
        self, request: Request, page: Sequence[str], rng: np.random.Generator
    ) -> Tuple[List[ItemFeedback], Dict[str, float]]:
        """One visit of a valid page as logged feedback: a click per slot (from
        :meth:`sample_clicks`) and the page outcome (no purchases or GMV here)."""
        self.action_of(request, page)  # refuses a page that is not one
        clicks = np.asarray(self.sample_clicks(request, page, rng), dtype=np.int64)
        feedback = [ItemFeedback(item_id=iid, click=int(c)) for iid, c in zip(page, clicks)]
        return feedback, {"gmv": 0.0, "clicks": float(clicks.sum()), "purchases": 0.0}

    def true_relevance(self, request: Request) -> Optional[Dict[str, float]]:
        """Each candidate's click probability when examined, without page effects (the
        gains of NDCG), or None where the environment has no such notion."""
        return None

    def oracle_page(self, request: Request) -> List[str]:
        """The page with the most expected clicks (the ceiling of the evaluation)."""
        raise NotImplementedError(f"{type(self).__name__} has no oracle page")

    def random_page(self, request: Request, rng: np.random.Generator) -> List[str]:
        """K distinct candidates uniformly at random, in random order."""
        picks = rng.choice(len(request.candidates), size=request.page_size, replace=False)
        return [request.candidates[j].item_id for j in picks]

    def score_page(self, request: Request, page: Sequence[str], k: Optional[int] = None) -> PageScore:
        """Exact metrics of a page, as :meth:`pagerl.sim.Simulator.score_page` gives them: an
        invalid page scores zero with ``valid`` False and the reason; NDCG@k by
        :meth:`true_relevance` (None without it); diversity is the share of distinct
        categories on the page; GMV and redundancy are :meth:`score`'s when it has them."""
        if not self.has_exact_scorer:
            raise NotImplementedError(f"{type(self).__name__} has no exact scorer: its pages cannot be evaluated")
        try:
            scored = self.score(request, list(page))
        except InvalidPageError as err:
            return PageScore(0.0, 0.0, 0.0, 0.0, 0.0, valid=False, reason=str(err))
        ndcg = None
        relevance = self.true_relevance(request)
        if relevance is not None:
            cutoff = request.page_size if k is None else int(k)
            dcg = sum(relevance[iid] * d for iid, d in zip(page[:cutoff], dcg_discounts(cutoff)))
            ndcg = dcg / ideal_dcg(np.asarray(list(relevance.values())), cutoff)
        category = {c.item_id: c.category for c in request.candidates}
        return PageScore(
            expected_clicks=float(scored["expected_clicks"]),
            expected_gmv=scored.get("expected_gmv"),
            ndcg=ndcg,
            diversity=len({category[iid] for iid in page}) / len(page),
            redundancy=scored.get("redundancy"),
            valid=True,
        )

    def score_pages(self, request: Request, pages: Sequence[Sequence[str]], k: Optional[int] = None) -> List[PageScore]:
        """:meth:`score_page` of many pages of one request."""
        return [self.score_page(request, page, k) for page in pages]

    def expected_slot_clicks(self, request: Request, page: Sequence[str]) -> List[float]:
        """Exact expected clicks of each slot of a valid page: the item-level ground truth."""
        scored = self.score(request, list(page))
        if scored is None:
            raise NotImplementedError(f"{type(self).__name__} has no exact scorer")
        return [float(v) for v in scored["slot_clicks"]]

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
