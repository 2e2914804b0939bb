"""The oracle page: provably best on small cases, never beaten by sampled
pages at quickstart size, fast, and honest when it falls back to beam search."""

from __future__ import annotations

import itertools
import statistics
import time

import numpy as np
import pytest

from pagerl.config.schema import SimConfig
from pagerl.sim import Simulator, World
from pagerl.sim.oracle import exhaustive_search, k_permutations


def make_sim(seed: int = 0, **overrides) -> Simulator:
    return Simulator(World.from_config(SimConfig(**overrides), seed))


def test_k_permutations_lists_every_ordered_page_once():
    for n, k in [(4, 2), (6, 3), (5, 5), (7, 1)]:
        expected = list(itertools.permutations(range(n), k))
        assert [tuple(row) for row in k_permutations(n, k).tolist()] == expected


@pytest.mark.parametrize("objective", ["clicks", "gmv"])
def test_oracle_equals_brute_force_on_small_cases(objective):
    """Against an independent enumeration: every ordered page scored one by
    one through score_page (the plain-Python path)."""
    sim = make_sim(1, candidates_per_request=7, page_size=3, diversity_bonus=0.5, redundancy_penalty=0.6,
                   candidate_duplicate_rate=1.0)
    rng = np.random.default_rng(1)
    field = "expected_clicks" if objective == "clicks" else "expected_gmv"
    for i in range(8):
        request = sim.sample_request(rng, f"r{i}")
        ids = [c.item_id for c in request.candidates]
        values = {page: getattr(sim.score_page(request, list(page)), field)
                  for page in itertools.permutations(ids, 3)}
        best = max(values.values())
        oracle = sim.oracle_page(request, objective=objective)
        assert oracle.exact and oracle.method == "exhaustive"
        assert values[tuple(oracle)] == pytest.approx(best, rel=1e-12)
        assert oracle.value == pytest.approx(best, rel=1e-12)


def test_oracle_beats_every_sampled_page_at_quickstart_size():
    sim = make_sim(2)
    rng = np.random.default_rng(2)
    for i in range(10):
        request = sim.sample_request(rng, f"r{i}")
        oracle = sim.score_page(request, sim.oracle_page(request)).expected_clicks
        pages = [sim.random_page(request, rng) for _ in range(300)]
        pages += [sim.logging_page(request, rng)[0] for _ in range(100)]
        pages += [sim.greedy_page(request), sim.popularity_page(request)]
        assert max(s.expected_clicks for s in sim.score_pages(request, pages)) <= oracle + 1e-12


def test_relevance_sorting_is_not_enough():
    """Because of the page effects the greedy (relevance-sorted) page is
    beaten by the oracle on many requests."""
    sim = make_sim(3)
    rng = np.random.default_rng(3)
    wins = 0
    for i in range(40):
        request = sim.sample_request(rng, f"r{i}")
        gap = (sim.score_page(request, sim.oracle_page(request)).expected_clicks
               - sim.score_page(request, sim.greedy_page(request)).expected_clicks)
        assert gap >= -1e-12
        wins += gap > 1e-6
    assert wins >= 10


def test_blocked_enumeration_finds_the_same_page():
    sim = make_sim(4)
    rng = np.random.default_rng(4)
    for i in range(3):
        request = sim.sample_request(rng, f"r{i}")
        model = sim.resolve(request).model
        whole, value = exhaustive_search(model)
        blocked, blocked_value = exhaustive_search(model, block_pages=2000)  # 12 x 11 prefixes of 720 pages
        assert whole.tolist() == blocked.tolist() and value == blocked_value


def test_oracle_is_fast_at_quickstart_size():
    sim = make_sim(5)
    rng = np.random.default_rng(5)
    requests = [sim.sample_request(rng, f"r{i}") for i in range(21)]
    sim.oracle_page(requests[0])  # builds the cached permutation table
    times = []
    for request in requests[1:]:
        start = time.perf_counter()
        sim.oracle_page(request)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.05, times


def test_beam_search_fallback_is_flagged_and_close():
    exact = make_sim(6)
    beam = make_sim(6, oracle_exhaustive_limit=0, oracle_beam_width=16)
    rng = np.random.default_rng(6)
    for i in range(15):
        request = exact.sample_request(rng, f"r{i}")
        best = exact.oracle_page(request)
        approx = beam.oracle_page(request)
        assert not approx.exact and "approximate" in approx.method
        assert beam.score_page(request, approx).valid
        assert approx.value == pytest.approx(beam.score_page(request, approx).expected_clicks)
        assert approx.value <= best.value + 1e-12
        assert approx.value >= 0.98 * best.value


def test_large_problems_use_beam_search_quickly():
    sim = make_sim(7, num_items=2000, candidates_per_request=40, page_size=10)
    request = sim.sample_request(np.random.default_rng(7), "big")
    start = time.perf_counter()
    page = sim.oracle_page(request)
    assert time.perf_counter() - start < 5.0
    assert not page.exact and len(set(page)) == 10
    assert sim.score_page(request, page).expected_clicks >= sim.score_page(request, sim.greedy_page(request)).expected_clicks - 1e-9
