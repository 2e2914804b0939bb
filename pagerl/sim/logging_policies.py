"""Logging policies: the production rankers whose pages fill the logs.

Every policy here is a Plackett-Luce policy: it gives each candidate a logit
and fills the K slots top to bottom, each time drawing one of the unused
candidates with probability softmax(logits over the unused). That family is
rich enough (uniform at one end, near-deterministic at the other) and its
page probabilities are exact and cheap:

    P(page = (i_1..i_K)) = prod_k exp(l_{i_k}) / sum_{j not in i_1..i_{k-1}} exp(l_j)

which is what off-policy estimators need as the logged ``propensity``.
Sampling uses the Gumbel-top-K trick (sort logits + Gumbel noise), which
draws exactly from this distribution.

A new policy is one function ``(world, resolved_request) -> logits``
decorated with :func:`register_logging_policy`; ``sim.logging_policy`` picks
it by name.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from pagerl.registry import Registry
from pagerl.sim.resolve import ResolvedRequest
from pagerl.sim.world import World

LogitsFn = Callable[[World, ResolvedRequest], np.ndarray]
# The registry of the recipe key ``sim.logging_policy`` (the recipe loader checks the key against it).
LOGGING_POLICIES: Registry = Registry("sim.logging_policy")


def register_logging_policy(name: str) -> Callable[[LogitsFn], LogitsFn]:
    def wrap(fn: LogitsFn) -> LogitsFn:
        if name in LOGGING_POLICIES:
            raise ValueError(f"logging policy {name!r} is registered twice")
        LOGGING_POLICIES[name] = fn
        return fn

    return wrap


def get_logging_policy(name: str) -> LogitsFn:
    if name not in LOGGING_POLICIES:
        raise ValueError(f"sim.logging_policy: unknown policy {name!r} (expected one of {sorted(LOGGING_POLICIES)})")
    return LOGGING_POLICIES[name]


@register_logging_policy("noisy_softmax")
def noisy_softmax(world: World, req: ResolvedRequest) -> np.ndarray:
    """A decent but imperfect production model: its estimate of the user-item
    score is the true score s(u, i) (query boost included) plus a fixed,
    user-item specific error of scale ``logging_noise`` (both in units of
    s, which has about unit variance); the logits are that estimate divided
    by ``logging_temperature``. It explores, it is biased, and it knows
    nothing of the page-level effects."""
    cfg = world.cfg
    estimate = world.score(req.user, req.items, req.query_category)
    estimate = estimate + cfg.logging_noise * world.logging_noise(req.user, req.items)
    return estimate / cfg.logging_temperature


@register_logging_policy("uniform")
def uniform(world: World, req: ResolvedRequest) -> np.ndarray:
    """Every ordered page equally likely: propensity (N-K)!/N!."""
    return np.zeros(len(req.items))


def plackett_luce_sample(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """K candidate positions drawn without replacement, in slot order."""
    keys = logits + rng.gumbel(size=len(logits))
    return np.argsort(-keys, kind="stable")[:k]


def plackett_luce_log_prob(logits: np.ndarray, page: Sequence[int]) -> float:
    """log P(page) under the Plackett-Luce policy with these logits."""
    logits = np.asarray(logits, dtype=np.float64)
    available = np.ones(len(logits), dtype=bool)
    total = 0.0
    for index in page:
        rest = logits[available]
        top = rest.max()
        total += logits[index] - (top + np.log(np.exp(rest - top).sum()))
        available[index] = False
    return float(total)
