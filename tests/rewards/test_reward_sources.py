"""Reward sources: the simulator's ground truth, a user function by dotted path,
the registry, and the checks every source's answer goes through."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pagerl.app.recipes import load_recipe
from pagerl.errors import RecipeError
from pagerl.rewards.reward_sources import (
    REWARD_SOURCES,
    RewardError,
    RewardSource,
    ScoredPages,
    build_reward_source,
    register_reward_source,
    resolve_function,
    score_pages,
)
from pagerl.sim import Simulator, World

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
USER_MODULE = "user_reward_example"


def recipe(*overrides: str):
    r, _ = load_recipe(REPO / "recipes/ci_small.yaml", ["run.name=rewards", *overrides])
    return r


@pytest.fixture(scope="module")
def world():
    r = recipe()
    sim = Simulator(World.from_config(r.sim, r.run.seed))
    rng = np.random.default_rng(7)
    requests = [sim.sample_request(rng, f"q{i}") for i in range(6)]
    return sim, requests


def some_pages(sim, requests, seed=3):
    """Three pages per request: the oracle-free greedy page, a random one, the logging one."""
    rng = np.random.default_rng(seed)
    reqs, pages = [], []
    for request in requests:
        for page in (sim.greedy_page(request), sim.random_page(request, rng), sim.logging_page(request, rng)[0]):
            reqs.append(request)
            pages.append(page)
    return reqs, pages


def python_recipe(function: str):
    return recipe("rewards.source=python", f"rewards.function={function}", f"rewards.python_path=[{HERE}]")


# ------------------------------------------------------------------ simulator


@pytest.mark.parametrize("objective", ["clicks", "gmv"])
def test_simulator_source_is_the_ground_truth(tmp_path, world, objective):
    sim, requests = world
    source = build_reward_source(recipe("rewards.source=simulator", f"rewards.sim_objective={objective}"), tmp_path)
    reqs, pages = some_pages(sim, requests)
    scored = score_pages(source, reqs, pages)
    assert scored.valid.all() and scored.items.shape == (len(pages), 5)
    for b, (request, page) in enumerate(zip(reqs, pages)):
        truth = sim.score_page(request, page)
        slots = np.asarray(sim.expected_slot_clicks(request, page))
        if objective == "clicks":
            assert scored.page[b] == pytest.approx(truth.expected_clicks, rel=1e-12)
            np.testing.assert_allclose(scored.items[b], slots, rtol=1e-12)
        else:
            assert scored.page[b] == pytest.approx(truth.expected_gmv, rel=1e-12)
            # slot contributions add up to the page's expected GMV ...
            assert scored.items[b].sum() == pytest.approx(truth.expected_gmv, rel=1e-9)
            # ... and each is the slot's expected clicks times what a click is worth
            resolved = sim.resolve(request)
            worth = [resolved.model.purchase[resolved.position[i]] * resolved.model.price[resolved.position[i]]
                     for i in page]
            np.testing.assert_allclose(scored.items[b], slots * np.asarray(worth), rtol=1e-12)
    if objective == "gmv":  # the objective matters: GMV is not clicks
        clicks = [sim.score_page(r, p).expected_clicks for r, p in zip(reqs, pages)]
        assert not np.allclose(scored.page, clicks)


def test_invalid_pages_get_zero_and_a_reason(tmp_path, world):
    sim, requests = world
    source = build_reward_source(recipe("rewards.source=simulator"), tmp_path)
    request = requests[0]
    good = sim.greedy_page(request)
    outsider = next(i for i in sim.greedy_page(requests[1]) if i not in {c.item_id for c in request.candidates})
    pages = [good, good[:4], [good[0]] * 5, good[:4] + [outsider], good]
    scored = score_pages(source, [request] * 5, pages, valid=[True, True, True, True, False])
    assert scored.valid.tolist() == [True, False, False, False, False]
    assert scored.page[1:].tolist() == [0.0] * 4 and not scored.items[1:].any()
    assert "4 items" in scored.reasons[1] and "repeats" in scored.reasons[2]
    assert "not a candidate" in scored.reasons[3] and "parser" in scored.reasons[4]
    assert scored.page[0] == pytest.approx(sim.score_page(request, good).expected_clicks)


def test_simulator_source_refuses_requests_of_another_world(tmp_path, world):
    sim, requests = world
    other = build_reward_source(recipe("rewards.source=simulator", "run.seed=1"), tmp_path)
    with pytest.raises(RewardError, match="simulated world"):
        score_pages(other, requests[:1], [sim.greedy_page(requests[0])])


def test_a_batch_has_one_page_size(tmp_path, world):
    sim, requests = world
    source = build_reward_source(recipe("rewards.source=simulator"), tmp_path)
    short = type(requests[0])(**{**vars(requests[0]), "page_size": 4})
    with pytest.raises(RewardError, match="one page size"):
        score_pages(source, [requests[0], short], [sim.greedy_page(requests[0]), sim.greedy_page(short)])


def test_scored_pages_as_tensors_and_concat(tmp_path, world):
    sim, requests = world
    source = build_reward_source(recipe("rewards.source=simulator"), tmp_path)
    reqs, pages = some_pages(sim, requests[:2])
    whole = score_pages(source, reqs, pages)
    parts = ScoredPages.concat([score_pages(source, reqs[:2], pages[:2]), score_pages(source, reqs[2:], pages[2:])])
    np.testing.assert_array_equal(whole.page, parts.page)
    np.testing.assert_array_equal(whole.items, parts.items)
    page_r, item_r, valid = whole.as_tensors()
    assert page_r.shape == (6,) and item_r.shape == (6, 5) and valid.dtype == torch.bool
    np.testing.assert_allclose(page_r.numpy(), whole.page, rtol=1e-6)


# --------------------------------------------------------------- user function


@pytest.mark.parametrize("path", [f"{USER_MODULE}:business_reward", f"{USER_MODULE}.business_reward"])
def test_user_function_by_dotted_path(tmp_path, world, path):
    sim, requests = world
    source = build_reward_source(python_recipe(path), tmp_path)
    import user_reward_example as user  # importable now: rewards.python_path put it on sys.path

    reqs, pages = some_pages(sim, requests[:3])
    pages[1] = pages[0][:3]  # an invalid page is never shown to the function
    scored = score_pages(source, reqs, pages)
    assert scored.valid.tolist() == [True, False] + [True] * 7
    for b in [0] + list(range(2, 9)):
        page_reward, items = user.business_reward(reqs[b], pages[b])
        assert scored.page[b] == page_reward
        np.testing.assert_array_equal(scored.items[b], items)
    assert scored.page[1] == 0.0


@pytest.mark.parametrize(
    "path, message",
    [
        ("", "is empty"),
        ("no_dots_at_all", "package.module:function"),
        ("pagerl_no_such_module_xyz:f", "cannot import module 'pagerl_no_such_module_xyz'"),
        (f"{USER_MODULE}:missing_function", "has no attribute 'missing_function'"),
        (f"{USER_MODULE}:NOT_A_FUNCTION", "names a int, not a function"),
    ],
)
def test_bad_function_path_names_the_recipe_key(path, message):
    with pytest.raises(RecipeError, match="rewards.function") as info:
        resolve_function(path, [str(HERE)])
    assert message in str(info.value)


def test_bad_path_fails_when_the_source_is_built(tmp_path):
    with pytest.raises(RecipeError, match=r"'rewards.function' = 'pagerl_no_such_module_xyz:f'"):
        build_reward_source(python_recipe("pagerl_no_such_module_xyz:f"), tmp_path)


@pytest.mark.parametrize(
    "function, message",
    [
        ("returns_one_number", "returned 1.0; expected (page_reward, item_rewards)"),
        ("returns_too_few_items", "are not 5 numbers"),
        ("returns_nan", "non-finite"),
        ("returns_text", "not numbers"),
    ],
)
def test_bad_return_is_a_clear_error(tmp_path, world, function, message):
    sim, requests = world
    source = build_reward_source(python_recipe(f"{USER_MODULE}:{function}"), tmp_path)
    with pytest.raises(RewardError) as info:
        score_pages(source, requests[:1], [sim.greedy_page(requests[0])])
    text = str(info.value)
    assert message in text and f"{USER_MODULE}:{function}" in text and "'q0'" in text


# -------------------------------------------------------------------- registry


def test_registry_lists_the_sources_and_takes_new_ones(tmp_path, world):
    assert {"learned", "simulator", "python"} <= set(REWARD_SOURCES)

    class Constant(RewardSource):
        @classmethod
        def build(cls, recipe, run_dir):
            return cls()

        def score_valid(self, requests, pages):
            return np.full(len(pages), 2.0), np.full((len(pages), requests[0].page_size), np.inf)

    register_reward_source("test_constant")(Constant)
    try:
        r = recipe()
        r.rewards.source = "test_constant"
        source = build_reward_source(r, tmp_path)
        sim, requests = world
        # every source's answer is checked: an infinite reward never gets through
        with pytest.raises(RewardError, match="non-finite item reward for request 'q0'"):
            score_pages(source, requests[:1], [sim.greedy_page(requests[0])])
        with pytest.raises(ValueError, match="already registered"):
            register_reward_source("test_constant")(type("Other", (RewardSource,), {}))
    finally:
        REWARD_SOURCES.pop("test_constant", None)


def test_unknown_source_and_bad_keys_are_recipe_errors(tmp_path):
    with pytest.raises(RecipeError, match="'rewards.source': expected one of 'learned', 'python', 'simulator'"):
        recipe("rewards.source=oracle")
    with pytest.raises(RecipeError, match="'rewards.function'"):
        recipe("rewards.source=python")
    with pytest.raises(RecipeError, match="'rewards.sim_objective'"):
        recipe("rewards.source=simulator", "rewards.sim_objective=ctr")
    with pytest.raises(RecipeError, match="'rewards.normalize'"):
        recipe("rewards.normalize=batch")
    with pytest.raises(RecipeError, match="both 0"):
        recipe("rewards.w_page=0", "rewards.w_item=0")
    with pytest.raises(RecipeError, match="'rewards.page_reward': expected one of 'residual', 'whole'"):
        recipe("rewards.page_reward=partial")
    with pytest.raises(RecipeError, match="'rewards.page_reward': 'residual' .* one scale.*'running'"):
        recipe("rewards.page_reward=residual", "rewards.normalize=running")
    recipe("rewards.page_reward=residual", "rewards.normalize=joint")  # one scale: accepted
    with pytest.raises(RecipeError, match="'rewards.max_batch_retries'"):
        recipe("rewards.max_batch_retries=-1")


def test_learned_source_without_models_names_the_directory(tmp_path):
    r = recipe("rewards.source=learned")
    with pytest.raises(RecipeError, match=r"rewards.model_dir.*rm/final"):
        build_reward_source(r, tmp_path)


@pytest.fixture(autouse=True, scope="module")
def _restore_sys_path():
    saved = list(sys.path)
    yield
    sys.path[:] = saved
    sys.modules.pop(USER_MODULE, None)
