"""The simulator's ground truth: exact scores agree with sampled feedback,
examination falls with the slot, page value is really non-additive, and
requests read back from disk are scored the same."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from pagerl.config.schema import SimConfig
from pagerl.data import Impression, read_impressions, write_impressions
from pagerl.data.types import Request
from pagerl.sim import Simulator, SimulatorError, World
from pagerl.sim.click_model import examination


def make_sim(seed: int = 0, **overrides) -> Simulator:
    return Simulator(World.from_config(SimConfig(**overrides), seed))


def hand_request(world: World, user: int, items, page_size: int, request_id: str = "hand") -> Request:
    return Request(request_id, world.user(user), [world.item(i) for i in items], page_size)


def dup_pair(world: World):
    """Two near-duplicate items (same group)."""
    groups = {}
    for i, g in enumerate(world.item_group.tolist()):
        groups.setdefault(g, []).append(i)
    return next(m[:2] for m in groups.values() if len(m) > 1)


def request_with_dups(sim: Simulator, rng: np.random.Generator) -> Request:
    for i in range(1000):
        request = sim.sample_request(rng, f"d{i}")
        groups = [str(c.attrs["group"]) for c in request.candidates]
        if len(set(groups)) < len(groups):
            return request
    raise AssertionError("no request with near-duplicates")


# ----------------------------------------------------------------- examination
def test_examination_falls_with_the_slot():
    exam = examination(6, 1.0)
    assert exam[0] == 1.0 and np.all(np.diff(exam) < 0)
    assert exam[3] == pytest.approx(1 / 4)
    assert np.all(examination(4, 0.0) == 1.0)


def test_the_same_item_earns_less_further_down():
    sim = make_sim()
    request = sim.sample_request(np.random.default_rng(1), "r")
    page = sim.greedy_page(request)
    first = sim.expected_slot_clicks(request, page)[0]
    moved = page[1:] + page[:1]
    assert sim.expected_slot_clicks(request, moved)[-1] < 0.5 * first


def test_sampled_click_rate_falls_with_the_slot():
    sim = make_sim(logging_policy="uniform")
    rng = np.random.default_rng(2)
    clicks = np.zeros(sim.cfg.page_size)
    for i in range(3000):
        request = sim.sample_request(rng, f"r{i}")
        page, _ = sim.logging_page(request, rng)
        feedback, _ = sim.sample_feedback(request, page, rng)
        clicks += [fb.click for fb in feedback]
    assert np.all(np.diff(clicks) < 0), clicks


# -------------------------------------------------------- exact vs Monte Carlo
def test_exact_expectations_match_sampled_feedback():
    sim = make_sim(3)
    rng = np.random.default_rng(3)
    request = request_with_dups(sim, rng)
    groups = {}
    for c in request.candidates:
        groups.setdefault(c.attrs["group"], []).append(c.item_id)
    twins = next(m for m in groups.values() if len(m) > 1)
    others = [c.item_id for c in request.candidates if c.item_id not in twins]
    pages = [
        sim.oracle_page(request),
        twins[:2] + others[: sim.cfg.page_size - 2],  # a near-duplicate below its twin
        sim.random_page(request, rng),
    ]
    n = 20000
    for page in pages:
        score = sim.score_page(request, page)
        slots = np.zeros((n, len(page)))
        gmv = np.zeros(n)
        for t in range(n):
            feedback, outcome = sim.sample_feedback(request, page, rng)
            slots[t] = [fb.click for fb in feedback]
            gmv[t] = outcome["gmv"]
            assert outcome["clicks"] == slots[t].sum()
        total = slots.sum(axis=1)
        assert abs(total.mean() - score.expected_clicks) < 4 * total.std() / math.sqrt(n) + 1e-9
        assert abs(gmv.mean() - score.expected_gmv) < 4 * gmv.std() / math.sqrt(n) + 1e-9
        exact_slots = np.array(sim.expected_slot_clicks(request, page))
        assert exact_slots.sum() == pytest.approx(score.expected_clicks)
        slot_se = np.sqrt(exact_slots * (1 - exact_slots) / n)  # each slot's click is a Bernoulli
        assert np.all(np.abs(slots.mean(axis=0) - exact_slots) < 4 * slot_se + 1e-9)


def test_no_purchase_without_click_and_dwell_only_on_clicks():
    sim = make_sim()
    rng = np.random.default_rng(4)
    for i in range(300):
        request = sim.sample_request(rng, f"r{i}")
        page, _ = sim.logging_page(request, rng)
        feedback, outcome = sim.sample_feedback(request, page, rng)
        for fb in feedback:
            assert fb.purchase <= fb.click and (fb.dwell > 0) == bool(fb.click)
        prices = {c.item_id: c.price for c in request.candidates}
        assert outcome["gmv"] == pytest.approx(sum(prices[fb.item_id] for fb in feedback if fb.purchase))


# ------------------------------------------------------------- non-additivity
def _interaction_contrasts(sim: Simulator, request: Request):
    """V(a,b) - V(a,d) - V(c,b) + V(c,d) over quadruples of candidates, K = 2.

    Zero for every quadruple if and only if the page value is a sum of
    per-slot item values f0(top) + f1(bottom)."""
    ids = [c.item_id for c in request.candidates]
    value = {}
    for page in itertools.permutations(ids, 2):
        value[page] = sim.score_page(request, list(page)).expected_clicks
    out = []
    for a, b, c, d in itertools.permutations(ids, 4):
        out.append(value[a, b] - value[a, d] - value[c, b] + value[c, d])
    return np.array(out)


def test_page_value_is_not_a_sum_over_items():
    world_items = dict(num_items=60, num_users=10, candidates_per_request=6, page_size=2, near_duplicate_fraction=0.5,
                       candidate_duplicate_rate=1.0, continue_after_click=1.0)
    rng = np.random.default_rng(5)
    # Control: without page effects (and no cascade stopping) the check finds additivity.
    additive = make_sim(0, diversity_bonus=0.0, redundancy_penalty=0.0, **world_items)
    request = request_with_dups(additive, rng)
    assert np.max(np.abs(_interaction_contrasts(additive, request))) < 1e-12
    # With the diversity bonus and the redundancy penalty it is not additive.
    effects = make_sim(0, diversity_bonus=0.3, redundancy_penalty=0.5, **world_items)
    assert np.max(np.abs(_interaction_contrasts(effects, request))) > 1e-3


def test_redundancy_penalty_hits_the_lower_twin_exactly():
    cfg = SimConfig(diversity_bonus=0.0, redundancy_penalty=0.25, continue_after_click=1.0, page_size=2,
                    candidates_per_request=4)
    world = World.from_config(cfg, 0)
    sim = Simulator(world)
    a, b = dup_pair(world)
    other = next(i for i in range(world.num_items) if world.item_group[i] not in (world.item_group[a],))
    request = hand_request(world, 0, [a, b, other, (other + 1) % world.num_items], page_size=2)
    ids = [c.item_id for c in request.candidates]
    p = sim.true_relevance(request)
    exam = examination(2, cfg.position_bias)
    below_twin = sim.expected_slot_clicks(request, [ids[0], ids[1]])[1]
    below_other = sim.expected_slot_clicks(request, [ids[2], ids[1]])[1]
    assert below_twin == pytest.approx(exam[1] * p[ids[1]] * 0.75)
    assert below_other == pytest.approx(exam[1] * p[ids[1]])
    score = sim.score_page(request, [ids[0], ids[1]])
    assert score.redundancy == 1.0 and score.diversity == 0.5


def test_diversity_bonus_multiplies_the_whole_page():
    cfg = SimConfig(diversity_bonus=0.4, redundancy_penalty=0.0, continue_after_click=1.0, page_size=3,
                    candidates_per_request=4, relevance_bias=-8.0)  # low p: the min(1, .) clip stays inactive
    world = World.from_config(cfg, 0)
    sim = Simulator(world)
    by_cat = {}
    for i in range(world.num_items):
        by_cat.setdefault(int(world.item_category[i]), []).append(i)
    same = [i for i in by_cat[0] if world.item_group[i] == i][:2]
    x, y = same
    z = next(i for i in by_cat[1])
    w = next(i for i in by_cat[2])
    request = hand_request(world, 0, [x, y, z, w], page_size=3)
    p = sim.true_relevance(request)
    exam = examination(3, cfg.position_bias)
    ids = [c.item_id for c in request.candidates]
    base = lambda page: sum(e * p[i] for e, i in zip(exam, page))  # noqa: E731
    two_cats = [ids[0], ids[1], ids[2]]
    three_cats = [ids[0], ids[2], ids[3]]
    assert sim.score_page(request, two_cats).expected_clicks == pytest.approx(base(two_cats) * (1 + 0.4 * 1 / 2))
    assert sim.score_page(request, three_cats).expected_clicks == pytest.approx(base(three_cats) * 1.4)
    assert sim.score_page(request, three_cats).diversity == 1.0


# ---------------------------------------------------------------- score_page
def test_score_pages_matches_score_page():
    sim = make_sim(6)
    rng = np.random.default_rng(6)
    for i in range(20):
        request = sim.sample_request(rng, f"r{i}")
        pages = [sim.random_page(request, rng) for _ in range(30)] + [sim.oracle_page(request)]
        pages.insert(3, pages[0][:-1] + pages[0][:1])  # invalid: a repeat
        batch = sim.score_pages(request, pages, k=3)
        for page, got in zip(pages, batch):
            one = sim.score_page(request, page, k=3)
            assert got.valid == one.valid and got.reason == one.reason
            for field in ("expected_clicks", "expected_gmv", "ndcg", "diversity", "redundancy"):
                assert getattr(got, field) == pytest.approx(getattr(one, field), abs=1e-12)


def test_invalid_pages_score_zero_and_say_why():
    sim = make_sim()
    request = sim.sample_request(np.random.default_rng(7), "r")
    ids = [c.item_id for c in request.candidates]
    cases = {
        "has 4 items, expected 5": ids[:4],
        "repeats an item": ids[:4] + ids[:1],
        "slot 2: 'i9999' is not a candidate": ids[:2] + ["i9999"] + ids[3:5],
        "expected a list of item ids": "i0001",
        "slot 0: None is not a candidate": [None] + ids[1:5],
    }
    for reason, page in cases.items():
        score = sim.score_page(request, page)
        assert not score.valid and reason in score.reason
        assert (score.expected_clicks, score.expected_gmv, score.ndcg) == (0.0, 0.0, 0.0)
    with pytest.raises(SimulatorError, match="invalid page"):
        sim.sample_feedback(request, ids[:4], np.random.default_rng(0))
    assert sim.score_page(request, np.array(ids[:5])).valid


def test_ndcg_against_true_relevance():
    sim = make_sim()
    rng = np.random.default_rng(8)
    for i in range(20):
        request = sim.sample_request(rng, f"r{i}")
        greedy = sim.greedy_page(request)
        assert sim.score_page(request, greedy).ndcg == pytest.approx(1.0)
        assert sim.score_page(request, greedy, k=1).ndcg == pytest.approx(1.0)
        relevance = sim.true_relevance(request)
        worst = sorted(relevance, key=relevance.get)[:5]
        ideal = sorted(relevance.values(), reverse=True)[:5]
        dcg = lambda gains: sum(g / math.log2(k + 2) for k, g in enumerate(gains))  # noqa: E731
        expected = dcg([relevance[i] for i in worst]) / dcg(ideal)
        assert sim.score_page(request, worst).ndcg == pytest.approx(expected)
        assert sim.score_page(request, worst[::-1]).ndcg > sim.score_page(request, worst).ndcg
        assert 0.0 < sim.score_page(request, sim.random_page(request, rng), k=10).ndcg <= 1.0
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        sim.score_page(request, greedy, k=0)


def test_reference_pages():
    sim = make_sim()
    rng = np.random.default_rng(9)
    request = sim.sample_request(rng, "r")
    relevance = sim.true_relevance(request)
    assert set(relevance) == {c.item_id for c in request.candidates}
    assert all(0.0 < p < 1.0 for p in relevance.values())
    popular = sim.popularity_page(request)
    pop = [sim.world.item_popularity[sim.world.item_index[i]] for i in popular]
    assert pop == sorted(pop, reverse=True)
    rest = set(relevance) - set(popular)
    assert all(sim.world.item_popularity[sim.world.item_index[i]] <= min(pop) for i in rest)
    page = sim.random_page(request, rng)
    assert len(set(page)) == 5 and sim.score_page(request, page).valid


# ------------------------------------------------ determinism and ids on disk
def _episode(seed: int):
    sim = make_sim(seed)
    rng = np.random.default_rng(123)
    out = []
    for i in range(20):
        request = sim.sample_request(rng, f"r{i}")
        page, propensity = sim.logging_page(request, rng)
        feedback, outcome = sim.sample_feedback(request, page, rng)
        out.append((request, page, propensity, feedback, outcome))
    return out


def test_everything_is_determined_by_config_and_seed():
    assert _episode(11) == _episode(11)
    assert _episode(11) != _episode(12)


def test_requests_read_back_from_disk_score_the_same(tmp_path):
    sim = make_sim(13)
    rng = np.random.default_rng(13)
    impressions = []
    for i in range(30):
        request = sim.sample_request(rng, f"r{i}")
        page, propensity = sim.logging_page(request, rng)
        feedback, outcome = sim.sample_feedback(request, page, rng)
        impressions.append(Impression(request, page, feedback, outcome, propensity))
    path = tmp_path / "eval.jsonl"
    write_impressions(path, impressions)
    fresh = make_sim(13)  # a new process would build its own world from the same config and seed
    for before, after in zip(impressions, read_impressions(path, on_bad_row="error").impressions):
        assert fresh.score_page(after.request, after.page) == sim.score_page(before.request, before.page)
        assert fresh.oracle_page(after.request) == sim.oracle_page(before.request)
        assert fresh.logging_propensity(after.request, after.page) == pytest.approx(after.propensity)


def test_unknown_or_foreign_requests_fail_loudly():
    sim = make_sim(14)
    request = sim.sample_request(np.random.default_rng(14), "r")
    page = [c.item_id for c in request.candidates[:5]]
    stranger = dataclasses.replace(request, user=dataclasses.replace(request.user, user_id="u9999"))
    with pytest.raises(SimulatorError, match="unknown user id 'u9999'"):
        sim.score_page(stranger, page)
    ghost = dataclasses.replace(request, candidates=[dataclasses.replace(request.candidates[0], item_id="zz")]
                                + request.candidates[1:])
    with pytest.raises(SimulatorError, match="unknown item id 'zz' at candidates"):
        sim.score_page(ghost, page)
    other_world = make_sim(15)  # same ids, different catalogue
    with pytest.raises(SimulatorError, match="does not belong to this world"):
        other_world.score_page(request, page)
    with pytest.raises(SimulatorError, match="query 'spaceships' is not a category"):
        sim.score_page(dataclasses.replace(request, query="spaceships"), page)
