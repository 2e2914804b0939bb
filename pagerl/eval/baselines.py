"""Reference page policies of the evaluation protocol (DESIGN.md section 4), by name.

Each takes the simulator, a request and a numpy Generator and returns a page
(item ids in slot order). The recipe's ``eval.baselines`` lists names from
``BASELINES``; a new reference policy is one decorated function.
"""

from __future__ import annotations

from typing import Callable, Dict, List

import numpy as np

from pagerl.data.types import Request
from pagerl.sim.simulator import Simulator

Baseline = Callable[[Simulator, Request, np.random.Generator], List[str]]
BASELINES: Dict[str, Baseline] = {}


def register_baseline(name: str) -> Callable[[Baseline], Baseline]:
    def add(fn: Baseline) -> Baseline:
        BASELINES[name] = fn
        return fn

    return add


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
    """A page sampled from the logging policy: what the logs' production system did."""
    return sim.logging_page(request, rng)[0]


@register_baseline("greedy")
def greedy_page(sim: Simulator, request: Request, rng: np.random.Generator) -> List[str]:
    """Candidates sorted by true relevance: item-wise optimal, blind to page effects."""
    return sim.greedy_page(request)


@register_baseline("oracle")
def oracle_page(sim: Simulator, request: Request, rng: np.random.Generator) -> List[str]:
    """The page with the highest expected clicks under the simulator: the ceiling."""
    return list(sim.oracle_page(request))
