"""The visible-feature heuristics of pagerl.eval.baseline_policies: what they read, and how their cap is chosen."""

import numpy as np
import pytest

from pagerl.config.schema import SimConfig
from pagerl.data.types import Item, Request, User
from pagerl.eval.baseline_policies import BASELINES, CAP_TUNING_REQUESTS, capped_page, chosen_cap
from pagerl.sim import Simulator, World
from pagerl.sim.world import stream

SIM = SimConfig(num_items=120, num_users=40, candidates_per_request=8, page_size=4)


def _request(history, candidates, page_size=3):
    items = [Item(item_id=f"i{j}", title=title, category=cat, price=1.0) for j, (title, cat) in enumerate(candidates)]
    return Request(request_id="r", user=User(user_id="u", history_categories=list(history)), candidates=items,
                   page_size=page_size)


def test_candidates_are_ranked_by_query_then_history_category_then_the_quality_word_then_prompt_order():
    request = _request(["bags", "shoes", "bags", "hats"],
                       [("basic red shoes", "shoes"), ("budget tote bags", "bags"), ("deluxe cap hats", "hats"),
                        ("deluxe tote bags", "bags"), ("premium boot shoes", "shoes"), ("deluxe coat coats", "coats")])
    # bags twice in the history (deluxe before budget), then shoes and hats once each (premium, deluxe, basic)
    assert capped_page(request, cap=3) == ["i3", "i1", "i2"]
    request.page_size = 6
    assert capped_page(request, cap=6) == ["i3", "i1", "i2", "i4", "i0", "i5"]
    # at most one of a category: the second bag waits until the page cannot be filled otherwise
    request.page_size = 4
    assert capped_page(request, cap=1) == ["i3", "i2", "i4", "i5"]
    request.page_size = 6
    assert capped_page(request, cap=1) == ["i3", "i2", "i4", "i5", "i1", "i0"]
    # a query comes first: the shoes it names, then the rest as before
    request.query, request.page_size = "red shoes", 3
    assert capped_page(request, cap=3) == ["i0", "i4", "i3"]


def test_the_cap_is_the_best_on_training_like_requests_and_never_looks_at_the_evaluation_ones():
    sim = Simulator(World.from_config(SIM, 5))
    cap = chosen_cap(sim)
    rng = stream(5, 21)
    requests = [sim.sample_request(rng, f"cap{i}") for i in range(CAP_TUNING_REQUESTS)]
    value = {c: np.mean([sim.score_page(r, capped_page(r, c)).expected_clicks for r in requests])
             for c in range(1, SIM.page_size + 1)}
    assert value[cap] == max(value.values())
    assert chosen_cap(sim) == cap  # chosen once per simulator
    eval_requests = [sim.sample_request(np.random.default_rng(i), f"e{i}") for i in range(20)]
    rng = np.random.default_rng(0)
    for r in eval_requests:
        page = BASELINES["history_category_capped"](sim, r, rng)
        assert page == capped_page(r, cap) and len(set(page)) == r.page_size
        assert set(page) <= {c.item_id for c in r.candidates}
        plain = BASELINES["history_category"](sim, r, rng)
        assert plain == capped_page(r, r.page_size) and sim.score_page(r, plain).valid


@pytest.mark.parametrize("name", ["history_category", "history_category_capped"])
def test_the_heuristics_are_below_the_oracle_and_above_random(name):
    sim = Simulator(World.from_config(SIM, 6))
    requests = [sim.sample_request(np.random.default_rng(100 + i), f"h{i}") for i in range(60)]
    rng = np.random.default_rng(1)
    score = {m: np.mean([sim.score_page(r, BASELINES[m](sim, r, rng)).expected_clicks for r in requests])
             for m in (name, "random", "oracle")}
    assert score["random"] < score[name] <= score["oracle"]
