"""The whole-page user simulator: a world with known ground truth.

It plays two roles. As a **data source** it generates logged impressions
under a logging policy (:func:`pagerl.envs.synth.synthesize`). As a **judge** it scores any
page exactly -- expected clicks and GMV, NDCG against the true relevance,
diversity, redundancy -- and knows the best page (:meth:`Simulator.oracle_page`).

Usage::

    world = World.from_config(cfg.sim, seed)      # deterministic from (config, seed)
    sim = Simulator(world)
    request = sim.sample_request(rng, "r0")
    page, propensity = sim.logging_page(request, rng)
    feedback, outcome = sim.sample_feedback(request, page, rng)
    score = sim.score_page(request, page)         # exact, no sampling
    best = sim.oracle_page(request)               # best.exact tells if it is proven optimal

Modules: :mod:`~pagerl.sim.world` (catalogue, users, what is visible),
:mod:`~pagerl.sim.simulator` (the click model, documented exactly, and the
API), :mod:`~pagerl.sim.click_model` (its vectorised arithmetic),
:mod:`~pagerl.sim.logging_policies` (registry), :mod:`~pagerl.sim.oracle`
(exact and beam search). Logged data is written from any environment by :mod:`pagerl.envs.synth`.
"""

from pagerl.sim.errors import SimulatorError
from pagerl.sim.logging_policies import LOGGING_POLICIES, register_logging_policy
from pagerl.sim.oracle import OraclePage
from pagerl.sim.simulator import PageScore, Simulator
from pagerl.sim.world import World

__all__ = [
    "LOGGING_POLICIES",
    "OraclePage",
    "PageScore",
    "Simulator",
    "SimulatorError",
    "World",
    "register_logging_policy",
]
