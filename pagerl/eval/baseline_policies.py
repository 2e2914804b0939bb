"""Reference page policies of the evaluation protocol (docs/method.md, "Evaluation protocol"), by name.

Each takes the environment (:class:`pagerl.envs.PageEnv`), a request and a
numpy Generator and returns a page
(item ids in slot order); the ones that need no randomness ignore the
Generator, so every baseline has the same signature and the evaluation loop
has no branch per baseline. The recipe's ``eval.baselines`` lists names
from :data:`BASELINES`; a new reference policy is one decorated function.

Randomness: :func:`baseline_rng` gives each baseline its own stream under
the run seed, drawn in request order. Adding a baseline to the recipe, or
reordering the list, therefore leaves the pages of the others unchanged.
"""

from __future__ import annotations

import weakref
import zlib
from collections import Counter
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from pagerl.data.types import Request
from pagerl.envs.base import PageEnv
from pagerl.registry import Registry
from pagerl.sim.simulator import Simulator
from pagerl.sim.world import QUALITY_WORDS, stream

Baseline = Callable[[PageEnv, Request, np.random.Generator], List[str]]
# The registry of the recipe key ``eval.baselines`` (the recipe loader checks each name against it).
BASELINES: Registry = Registry("eval.baselines")
# Baselines that read a particular environment's hidden quantities: name -> the environments they run on.
BASELINE_ENVS: Dict[str, Tuple[str, ...]] = {}

# Spawn-key prefix of the evaluation streams under the run seed (the
# simulator's world uses 0-3, the synth stage 10-11 and chosen_cap 21).
_EVAL_STREAM = 20


def register_baseline(name: str, envs: Tuple[str, ...] = ()) -> Callable[[Baseline], Baseline]:
    """Add a reference policy to :data:`BASELINES` under ``name``; ``envs`` lists the
    environments it runs on when it needs one's hidden quantities (empty: any)."""

    def add(fn: Baseline) -> Baseline:
        if name in BASELINES:
            raise ValueError(f"baseline {name!r} is already registered")
        BASELINES[name] = fn
        if envs:
            BASELINE_ENVS[name] = tuple(envs)
        return fn

    return add


def _simulator(env: Any, name: str) -> Simulator:
    """The pagesim simulator behind ``env`` (a :class:`~pagerl.envs.PageSimEnv`, or a
    :class:`Simulator` itself), for the baselines that read its hidden quantities."""
    if isinstance(env, Simulator):
        return env
    simulator = getattr(env, "simulator", None)
    if not isinstance(simulator, Simulator):
        raise ValueError(f"baseline {name!r} reads the pagesim simulator's hidden quantities; "
                         f"the environment {type(env).__name__} has none")
    return simulator


def baseline_rng(seed: int, name: str) -> np.random.Generator:
    """The random stream of baseline ``name`` under the run seed (stable across runs and machines)."""
    key = zlib.crc32(name.encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_EVAL_STREAM, key)))


@register_baseline("random")
def random_page(sim: PageEnv, request: Request, rng: np.random.Generator) -> List[str]:
    """K distinct candidates in random order: the floor."""
    return sim.random_page(request, rng)


@register_baseline("popularity", envs=("pagesim",))
def popularity_page(sim: PageEnv, request: Request, rng: np.random.Generator) -> List[str]:
    """The K most popular candidates: a non-personalised ranker."""
    return _simulator(sim, "popularity").popularity_page(request)


@register_baseline("logging")
def logging_page(sim: PageEnv, request: Request, rng: np.random.Generator) -> List[str]:
    """A fresh page sampled from the logging policy: what the production system that
    wrote the logs would show (not the logged page itself, so the eval file's own
    pages are never reused as a method's answer)."""
    return sim.logging_page(request, rng)[0]


@register_baseline("greedy", envs=("pagesim",))
def greedy_page(sim: PageEnv, request: Request, rng: np.random.Generator) -> List[str]:
    """Candidates sorted by true relevance: item-wise optimal, blind to page effects."""
    return _simulator(sim, "greedy").greedy_page(request)


@register_baseline("oracle")
def oracle_page(sim: PageEnv, request: Request, rng: np.random.Generator) -> List[str]:
    """The page with the highest expected clicks under the environment: the ceiling.

    Returns the simulator's ``OraclePage`` (a list that also says whether the
    search was exact), so the stage can report when beam search was used."""
    return sim.oracle_page(request)


@register_baseline("taste_blind_oracle", envs=("pagesim",))
def taste_blind_oracle_page(sim: PageEnv, request: Request, rng: np.random.Generator) -> List[str]:
    """The oracle's page in the world without the users' latent taste (``Simulator.without_latent_taste``),
    scored like every page by the full simulator: how much of the SFT-to-oracle gap is knowledge of the
    hidden user-item match, which no prompt-reading policy can have, and how much is the engine's."""
    blind = _simulator(sim, "taste_blind_oracle").without_latent_taste()
    return blind.oracle_page(request)


# -- heuristics that read only what the prompt shows -------------------------------------------
# A learned policy that loses to one of these is not yet worth its compute. They read the query,
# the user's history categories and each candidate's title and category, all of which the
# policy's prompt shows (pagerl.tokenization.serialize), and never the simulator's hidden quantities.
_QUALITY_RANK = {word: rank for rank, word in enumerate(QUALITY_WORDS)}
# Training-like requests the per-category cap is chosen on: drawn from the world under their own
# stream, never the evaluation requests.
CAP_TUNING_REQUESTS = 200
_CAP_STREAM = 21
_chosen_caps: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def _visible_order(request: Request) -> List[int]:
    """Candidate indices by how many of the query's words their title and category hold (a search
    page shows first what was asked for; 0 for all without a query), then by how often their
    category is in the user's history, then by the quality word their title opens with
    (budget < basic < standard < premium < deluxe), then by prompt order."""
    counts = Counter(request.user.history_categories)
    query = set((request.query or "").split())

    def key(j: int):
        item = request.candidates[j]
        words = item.title.split()
        matches = len(query & (set(words) | {item.category}))
        return (-matches, -counts[item.category], -_QUALITY_RANK.get(words[0] if words else "", -1), j)

    return sorted(range(len(request.candidates)), key=key)


def capped_page(request: Request, cap: int) -> List[str]:
    """The first K candidates of :func:`_visible_order` with at most ``cap`` of any category; when the
    cap leaves the page short, the best of the skipped candidates fill it, in the same order."""
    order = _visible_order(request)
    taken: List[int] = []
    per_category: Counter = Counter()
    for j in order:
        category = request.candidates[j].category
        if per_category[category] < cap:
            taken.append(j)
            per_category[category] += 1
        if len(taken) == request.page_size:
            break
    rest = [j for j in order if j not in taken]
    taken += rest[: request.page_size - len(taken)]
    return [request.candidates[j].item_id for j in taken]


def chosen_cap(sim: PageEnv) -> int:
    """The per-category cap (1..K) with the most expected clicks on training-like requests of ``sim``'s
    world (:data:`CAP_TUNING_REQUESTS` of them, their own stream under the world's seed; ties go to
    the smaller cap)."""
    if sim not in _chosen_caps:
        rng = stream(int(sim.world_seed), _CAP_STREAM)
        requests = [sim.sample_request(rng, f"cap{i}") for i in range(CAP_TUNING_REQUESTS)]
        widest = max(r.page_size for r in requests)
        value = {cap: float(np.mean([sim.score_page(r, capped_page(r, cap)).expected_clicks for r in requests]))
                 for cap in range(1, widest + 1)}
        _chosen_caps[sim] = max(value, key=lambda cap: (value[cap], -cap))
    return _chosen_caps[sim]


@register_baseline("history_category")
def history_category_page(sim: PageEnv, request: Request, rng: np.random.Generator) -> List[str]:
    """The K candidates that match the query, then whose categories the user's history holds most
    often, ties broken by the quality word of the title (:func:`_visible_order`): a one-line ranker
    over what the prompt shows."""
    return capped_page(request, request.page_size)


@register_baseline("history_category_capped")
def history_category_capped_page(sim: PageEnv, request: Request, rng: np.random.Generator) -> List[str]:
    """:func:`history_category_page` with at most c items of a category on the page, c chosen on
    training-like requests (:func:`chosen_cap`): the same ranker with a diversity rule."""
    return capped_page(request, chosen_cap(sim))
