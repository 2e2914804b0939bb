"""Logging policies: exact propensities that sum to one and match sampling."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from pagerl.config.schema import SimConfig
from pagerl.sim import LOGGING_POLICIES, Simulator, World, register_logging_policy


def tiny_sim(policy: str, seed: int = 0) -> Simulator:
    cfg = SimConfig(num_items=40, num_users=10, candidates_per_request=4, page_size=2, logging_policy=policy)
    return Simulator(World.from_config(cfg, seed))


def test_registry_has_the_required_policies():
    assert {"noisy_softmax", "uniform"} <= set(LOGGING_POLICIES)
    with pytest.raises(ValueError, match="registered twice"):
        register_logging_policy("uniform")(lambda world, req: None)


@pytest.mark.parametrize("policy", ["noisy_softmax", "uniform"])
def test_propensities_sum_to_one_over_all_pages(policy):
    sim = tiny_sim(policy)
    rng = np.random.default_rng(0)
    for i in range(5):
        request = sim.sample_request(rng, f"r{i}")
        ids = [c.item_id for c in request.candidates]
        pages = list(itertools.permutations(ids, 2))
        assert len(pages) == 12
        total = sum(sim.logging_propensity(request, list(p)) for p in pages)
        assert total == pytest.approx(1.0, abs=1e-12)
        if policy == "uniform":
            assert all(sim.logging_propensity(request, list(p)) == pytest.approx(1 / 12) for p in pages)
    assert sim.logging_propensity(request, [ids[0], ids[0]]) == 0.0


def test_sampled_pages_follow_their_propensities():
    sim = tiny_sim("noisy_softmax", seed=1)
    rng = np.random.default_rng(1)
    request = sim.sample_request(rng, "r")
    n = 20000
    counts = Counter()
    for _ in range(n):
        page, propensity = sim.logging_page(request, rng)
        assert propensity == pytest.approx(sim.logging_propensity(request, page))
        counts[tuple(page)] += 1
    ids = [c.item_id for c in request.candidates]
    probabilities = {p: sim.logging_propensity(request, list(p)) for p in itertools.permutations(ids, 2)}
    assert max(probabilities.values()) < 0.9  # a stochastic policy, not a deterministic ranker
    for page, prob in probabilities.items():
        se = math.sqrt(prob * (1 - prob) / n)
        assert abs(counts[page] / n - prob) < 4.5 * se + 1e-4, (page, counts[page] / n, prob)


def test_noisy_softmax_prefers_relevant_items_but_is_not_the_truth():
    cfg = SimConfig()
    sim = Simulator(World.from_config(cfg, 2))
    rng = np.random.default_rng(2)
    logged, random_, oracle = [], [], []
    for i in range(200):
        request = sim.sample_request(rng, f"r{i}")
        logged.append(sim.score_page(request, sim.logging_page(request, rng)[0]).expected_clicks)
        random_.append(sim.score_page(request, sim.random_page(request, rng)).expected_clicks)
        oracle.append(sim.score_page(request, sim.oracle_page(request)).expected_clicks)
    assert np.mean(random_) < np.mean(logged) < np.mean(oracle)
    # Room to improve on the logging policy, as the method needs.
    assert np.mean(oracle) - np.mean(logged) > 0.5 * (np.mean(logged) - np.mean(random_))
