"""Credit fidelity (pagerl.rl.credit_fidelity) on a tiny policy's own pages of simulator requests.

The exact rewards, scored as if they were the learned ones, pin the measure: the exact setting
(item rewards to go) has fidelity 1; the negated rewards -1; the residual page reward of an
additive page reward (the page's expected clicks are the sum of its slots') adds nothing, whatever
its weight; and the whole page reward on every token does worse than the items on every slot
below the first, which is what the measure is for.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pagerl.app.recipes import load_recipe
from pagerl.config.schema import RewardConfig
from pagerl.envs import env_from_recipe
from pagerl.rl.credit_fidelity import (
    CreditSetting,
    credit_fidelity,
    exact_rewards,
    exact_setting,
    fidelity,
    recipe_settings,
    sample_pages,
    training_requests,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pagerl.models.build import build_policy
    from pagerl.tokenization.tokenizer import build_tokenizer

    recipe, _ = load_recipe(REPO / "recipes/ci_small.yaml", ["run.name=fidelity", "model.tiny.hidden_size=32",
                                                             "model.tiny.intermediate_size=64"])
    env = env_from_recipe(recipe)
    rng = np.random.default_rng(5)
    requests = [env.sample_request(rng, f"q{i}") for i in range(40)]
    tokenizer = build_tokenizer(recipe.model, requests)
    policy = build_policy(recipe.model, tokenizer, seed=3).eval()
    with torch.no_grad():
        policy.lm_head.weight.mul_(8)  # far from uniform, so the samples of a request differ in probability
    sampled = sample_pages(policy, tokenizer, requests, samples=4, temperature=1.0, top_p=1.0, seed=2)
    return env, sampled, policy, tokenizer, requests


def exact_score(env):
    def score(requests, pages):
        slots = torch.tensor([env.expected_slot_clicks(q, p) for q, p in zip(requests, pages)], dtype=torch.float64)
        return slots.sum(dim=1), slots
    return score


def test_sampled_pages_are_groups_of_valid_pages_and_repeat_with_the_seed(world):
    env, sampled, policy, tokenizer, requests = world
    assert len(sampled.pages) == 4 * len(requests) and sampled.group_ids.tolist()[:8] == [0, 0, 0, 0, 1, 1, 1, 1]
    for request, page in zip(sampled.page_requests, sampled.pages):
        ids = {c.item_id for c in request.candidates}
        assert len(page) == request.page_size == len(set(page)) and set(page) <= ids
    again = sample_pages(policy, tokenizer, requests, samples=4, temperature=1.0, top_p=1.0, seed=2)
    assert again.pages == sampled.pages
    # the samples of a request are not all one page (otherwise there is no credit to compare)
    assert sum(len({tuple(p) for p in sampled.pages[4 * g: 4 * g + 4]}) > 1 for g in range(len(requests))) > 30


def test_exact_rewards_score_themselves_perfectly(world):
    env, sampled, *_ = world
    page, items = exact_rewards(env, sampled)
    torch.testing.assert_close(page, items.sum(dim=1))
    report = credit_fidelity(exact_score(env), env, sampled, {"exact": exact_setting()}, "rloo")
    row = report["settings"]["exact"]
    assert row["pooled"] == pytest.approx(1.0, abs=1e-12)
    assert row["per_slot"] == pytest.approx([1.0] * sampled.requests[0].page_size, abs=1e-12)
    assert (report["requests"], report["pages"], report["samples"], report["estimator"]) == (40, 160, 4, "rloo")

    def negated(requests, pages):
        p, i = exact_score(env)(requests, pages)
        return -p, -i

    flipped = credit_fidelity(negated, env, sampled, {"exact": exact_setting()}, "ppo")["settings"]["exact"]
    assert flipped["pooled"] == pytest.approx(-1.0, abs=1e-12)


def test_residual_of_an_additive_page_reward_adds_nothing_and_the_whole_page_credits_worse(world):
    env, sampled, *_ = world
    joint = RewardConfig(normalize="joint", page_reward="residual", clip=0.0, w_item=1.0)
    settings = {f"residual {w}": CreditSetting(dataclasses.replace(joint, w_page=w), "to_go") for w in (0.0, 0.3, 1.0)}
    settings["whole page only"] = CreditSetting(RewardConfig(normalize="joint", w_page=1.0, w_item=0.0), "to_go")
    settings["items, own slot"] = CreditSetting(RewardConfig(normalize="joint", w_page=0.0, w_item=1.0), "own")
    rows = credit_fidelity(exact_score(env), env, sampled, settings, "rloo")["settings"]
    for w in (0.0, 0.3, 1.0):  # page = sum of items exactly: the residual is 0, the credit is the items' to go
        assert rows[f"residual {w}"]["pooled"] == pytest.approx(1.0, abs=1e-9)
    page_only = rows["whole page only"]
    # slot 0 is credited with the page's whole value either way; below it the whole page reward also
    # credits each slot with the slots above, which it cannot change
    assert page_only["per_slot"][0] == pytest.approx(1.0, abs=1e-9)
    assert all(v < 0.9 for v in page_only["per_slot"][1:]), page_only
    assert page_only["pooled"] < 0.95
    # own-slot credit misses a slot's effect on the slots below it (the cascade), except at the last slot
    assert rows["items, own slot"]["per_slot"][-1] == pytest.approx(1.0, abs=1e-9)
    assert rows["items, own slot"]["pooled"] < 1.0


def test_fidelity_helpers():
    a = torch.tensor([[1.0, 2.0], [3.0, 5.0], [0.0, 1.0]])
    out = fidelity(a, 2 * a + 1)
    assert out["pooled"] == pytest.approx(1.0) and out["per_slot"] == pytest.approx([1.0, 1.0])
    assert fidelity(a, torch.ones_like(a))["pooled"] is None  # no spread in the exact credit: undefined
    settings = recipe_settings(RewardConfig(w_page=0.2, w_item=1.0), "to_go")
    assert list(settings)[:2] == ["recipe", "w_page=0"] and "page reward only" in settings
    assert settings["page reward only"].rewards.w_item == 0.0 and settings["w_page=0.5"].rewards.w_page == 0.5

    class Imp:
        def __init__(self, i):
            self.request = i

    picked = training_requests([Imp(i) for i in range(50)], 10, seed=0)
    assert len(set(picked)) == 10 and picked == sorted(picked)
    assert picked == training_requests([Imp(i) for i in range(50)], 10, seed=0)
    assert training_requests([Imp(i) for i in range(5)], 10, seed=0) == list(range(5))
