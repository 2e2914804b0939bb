"""The project's whole-page simulator (:mod:`pagerl.sim`) as the ``pagesim`` environment.

Every draw and every score is the :class:`~pagerl.sim.Simulator`'s own
(``sample_request``, ``sample_feedback``, ``score_page``,
``expected_slot_clicks``), so a page stepped here gets exactly the numbers
the synth, reward and eval stages give it; this module only adapts them to
:class:`~pagerl.envs.base.PageEnv`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from pagerl.config.schema import SimConfig
from pagerl.data.types import ItemFeedback, Request
from pagerl.envs.base import InvalidPageError, Observation, PageEnv
from pagerl.envs.features import (
    CANDIDATE_FIELDS,
    DEFAULT_MAX_HISTORY_ITEMS,
    DEFAULT_PRICE_BUCKET_EDGES,
    VisibleFeatures,
)
from pagerl.envs.make import register_env
from pagerl.sim import Simulator, World
from pagerl.sim.simulator import PageScore
from pagerl.sim.world import QUALITY_WORDS

GYM_ID = "pagerl/PageSim-v0"


class PageSimEnv(PageEnv):
    """The simulator's world behind the page-environment interface.

    The world is ``World.from_config(sim, seed)``, as the synth stage builds
    it from a recipe's ``sim`` section and ``run.seed`` (:meth:`from_recipe`);
    ``sim`` may also be a dict of :class:`~pagerl.config.schema.SimConfig`
    fields (convenient through ``gymnasium.make``) or None for the defaults.
    Pass ``simulator`` instead to share one already built (the eval stage's,
    say). The observation is :class:`~pagerl.envs.features.VisibleFeatures`
    with the world's categories and title quality words, and the prompt's
    price buckets and history window.
    """

    def __init__(
        self,
        sim: Union[SimConfig, Mapping[str, Any], Any, None] = None,
        seed: int = 0,
        reward: str = "clicks",
        price_bucket_edges: Optional[Sequence[float]] = None,
        max_history_items: int = DEFAULT_MAX_HISTORY_ITEMS,
        simulator: Optional[Simulator] = None,
    ) -> None:
        if simulator is not None and sim is not None:
            raise ValueError("PageSimEnv: pass either sim (and seed) or simulator, not both")
        if simulator is None:
            config = SimConfig(**sim) if isinstance(sim, Mapping) else (sim if sim is not None else SimConfig())
            simulator = Simulator(World.from_config(config, int(seed)))
        self.simulator = simulator
        cfg = simulator.cfg
        self.features = VisibleFeatures(
            num_candidates=cfg.candidates_per_request,
            categories=list(simulator.world.categories),
            quality_words=list(QUALITY_WORDS),
            price_bucket_edges=list(DEFAULT_PRICE_BUCKET_EDGES if price_bucket_edges is None else price_bucket_edges),
            max_history_items=int(max_history_items),
        )
        super().__init__(cfg.candidates_per_request, cfg.page_size, self.features.space(), reward)

    @classmethod
    def from_recipe(cls, recipe: Any, **kwargs: Any) -> "PageSimEnv":
        """The environment of a recipe's world (``sim``, ``run.seed``) with its prompt's
        price buckets and history window (``model.*``)."""
        return cls(
            sim=recipe.sim,
            seed=int(recipe.run.seed),
            price_bucket_edges=[float(e) for e in recipe.model.price_bucket_edges],
            max_history_items=int(recipe.model.max_history_items),
            **kwargs,
        )

    def sample_request(self, rng: np.random.Generator, request_id: str = "request") -> Request:
        return self.simulator.sample_request(rng, request_id)

    def observe(self, request: Request) -> Observation:
        return self.features.encode(request)

    def sample_clicks(self, request: Request, item_ids: Sequence[str], rng: np.random.Generator) -> np.ndarray:
        feedback, _ = self.simulator.sample_feedback(request, item_ids, rng)
        return np.array([f.click for f in feedback], dtype=np.int64)

    def score(self, request: Request, item_ids: Sequence[str]) -> Dict[str, Any]:
        """``Simulator.score_page`` (expected clicks and GMV, NDCG@K, diversity,
        redundancy) and ``slot_clicks``, the expected clicks of each slot."""
        score = self.simulator.score_page(request, item_ids)
        if not score.valid:
            raise InvalidPageError(f"request {request.request_id!r}: the page {score.reason}")
        expected = {key: value for key, value in score.to_dict().items() if key not in ("valid", "reason")}
        expected["slot_clicks"] = np.asarray(self.simulator.expected_slot_clicks(request, item_ids), dtype=np.float64)
        return expected

    candidate_fields = CANDIDATE_FIELDS

    @property
    def world_seed(self) -> int:  # type: ignore[override]
        return self.simulator.world_seed

    # The stages' calls go straight to the simulator: its numbers, its vectorised paths.
    def check_request(self, request: Request) -> None:
        self.simulator.resolve(request)

    def logging_page(self, request: Request, rng: np.random.Generator) -> Tuple[List[str], float]:
        return self.simulator.logging_page(request, rng)

    def sample_feedback(
        self, request: Request, page: Sequence[str], rng: np.random.Generator
    ) -> Tuple[List[ItemFeedback], Dict[str, float]]:
        return self.simulator.sample_feedback(request, page, rng)

    def true_relevance(self, request: Request) -> Dict[str, float]:
        return self.simulator.true_relevance(request)

    def oracle_page(self, request: Request) -> List[str]:
        return self.simulator.oracle_page(request)

    def random_page(self, request: Request, rng: np.random.Generator) -> List[str]:
        return self.simulator.random_page(request, rng)

    def score_page(self, request: Request, page: Sequence[str], k: Optional[int] = None) -> PageScore:
        return self.simulator.score_page(request, page, k)

    def score_pages(self, request: Request, pages: Sequence[Sequence[str]], k: Optional[int] = None) -> List[PageScore]:
        return self.simulator.score_pages(request, pages, k)

    def expected_slot_clicks(self, request: Request, page: Sequence[str]) -> List[float]:
        return self.simulator.expected_slot_clicks(request, page)


register_env("pagesim", PageSimEnv, gym_id=GYM_ID)
