"""Reference page policies of the evaluation protocol (docs/method.md, "Evaluation protocol"), by name.

Each takes the simulator, a request and a numpy Generator and returns a page
(item ids in slot order); the ones that need no randomness ignore the
Generator, so every baseline has the same signature and the evaluation loop
has no branch per baseline. The recipe's ``eval.baselines`` lists names
from :data:`BASELINES`; a new reference policy is one decorated function.

Randomness: :func:`baseline_rng` gives each baseline its own stream under
the run seed, drawn in request order. Adding a baseline to the recipe, or
reordering the list, therefore leaves the pages of the others unchanged.
"""

from __future__ import annotations

import zlib
from typing import Callable, Dict, List

import numpy as np

from pagerl.data.types import Request
from pagerl.sim.simulator import Simulator

Baseline = Callable[[Simulator, Request, np.random.Generator], List[str]]
BASELINES: Dict[str, Baseline] = {}

# Spawn-key prefix of the evaluation streams under the run seed (the
# simulator's world uses 0-3 and the synth stage 10-11).
_EVAL_STREAM = 20


def register_baseline(name: str) -> Callable[[Baseline], Baseline]:
    """Add a reference policy to :data:`BASELINES` under ``name``."""

    def add(fn: Baseline) -> Baseline:
        if name in BASELINES:
            raise ValueError(f"baseline {name!r} is already registered")
        BASELINES[name] = fn
        return fn

    return add


def baseline_rng(seed: int, name: str) -> np.random.Generator:
    """The random stream of baseline ``name`` under the run seed (stable across runs and machines)."""
    key = zlib.crc32(name.encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_EVAL_STREAM, key)))


@register_baseline("random")
def random_page(sim: Simulator, request: Request, rng: np.random.Generator) -> List[str]:
    """K distinct candidates in random order: the floor."""
    return sim.random_page(request, rng)


@register_baseline("popularity")
def popularity_page(sim: Simulator, request: Request, rng: np.random.Generator) -> List[str]:
    """The K most popular candidates: a non-personalised ranker."""
    return sim.popularity_page(request)


@register_baseline("logging")
def logging_page(sim: Simulator, request: Request, rng: np.random.Generator) -> List[str]:
    """A fresh page sampled from the logging policy: what the production system that
    wrote the logs would show (not the logged page itself, so the eval file's own
    pages are never reused as a method's answer)."""
    return sim.logging_page(request, rng)[0]


@register_baseline("greedy")
def greedy_page(sim: Simulator, request: Request, rng: np.random.Generator) -> List[str]:
    """Candidates sorted by true relevance: item-wise optimal, blind to page effects."""
    return sim.greedy_page(request)


@register_baseline("oracle")
def oracle_page(sim: Simulator, request: Request, rng: np.random.Generator) -> List[str]:
    """The page with the highest expected clicks under the simulator: the ceiling.

    Returns the simulator's ``OraclePage`` (a list that also says whether the
    search was exact), so the stage can report when beam search was used."""
    return sim.oracle_page(request)


@register_baseline("taste_blind_oracle")
def taste_blind_oracle_page(sim: Simulator, request: Request, rng: np.random.Generator) -> List[str]:
    """The oracle's page in the world without the users' latent taste (``Simulator.without_latent_taste``),
    scored like every page by the full simulator: how much of the SFT-to-oracle gap is knowledge of the
    hidden user-item match, which no prompt-reading policy can have, and how much is the engine's."""
    return sim.without_latent_taste().oracle_page(request)
