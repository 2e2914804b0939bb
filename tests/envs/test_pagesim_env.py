"""The page-environment interface through its pagesim entry: gymnasium's own checker, seeding, the
simulator's exact scores through step(), the oracle above the logging policy above random, refused
actions, the registry, and an observation that holds only what the prompt shows."""

from __future__ import annotations

import warnings
from collections import Counter

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

from pagerl.config.schema import ModelConfig, RecipeConfig, RunConfig, SimConfig
from pagerl.envs import ENVIRONMENTS, FIELDS, GYM_ID, InvalidPageError, PageEnv, PageSimEnv, make_env, register_env
from pagerl.sim.world import QUALITY_WORDS

SIM = dict(num_items=120, num_users=40, candidates_per_request=8, page_size=4)
N, K = SIM["candidates_per_request"], SIM["page_size"]
OBSERVATION_KEYS = {"category", "quality", "price_bucket", "history_count", "query_match", "title_similarity",
                    "has_query"}
SCORE_KEYS = {"expected_clicks", "expected_gmv", "ndcg", "diversity", "redundancy", "slot_clicks"}


@pytest.fixture(scope="module")
def env() -> PageSimEnv:
    return PageSimEnv(sim=SimConfig(**SIM), seed=3)


def _step_page(env: PageSimEnv, request, item_ids):
    """Step the page ``item_ids`` (a list of ids) for ``request``."""
    env.reset(options={"request": request})
    return env.step(env.action_of(request, item_ids))


# ------------------------------------------------------------------ gymnasium
def test_gymnasium_env_checker_passes_without_a_warning():
    made = gymnasium.make(GYM_ID, sim=SIM, seed=3)
    assert isinstance(made.unwrapped, PageSimEnv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with a spec the checker also tests determinism, and nothing may warn
        check_env(made.unwrapped)
    made.close()


def test_the_action_space_is_multidiscrete_and_samples_valid_pages(env):
    assert isinstance(env.action_space, spaces.MultiDiscrete)
    assert env.action_space == spaces.MultiDiscrete([N] * K)
    env.action_space.seed(0)
    for _ in range(50):
        action = env.action_space.sample()
        assert action in env.action_space and len(set(action.tolist())) == K
    assert np.array([0, 1, 1, 2]) not in env.action_space
    assert np.array([0, 1, 2, N]) not in env.action_space


# ------------------------------------------------------------------ seeding
def test_the_same_seed_gives_the_same_request_and_clicks():
    a, b = PageSimEnv(sim=SIM, seed=3), PageSimEnv(sim=SIM, seed=3)
    action = np.array([3, 0, 5, 1])
    runs = []
    for e in (a, b, a):
        _, info = e.reset(seed=11)
        _, reward, terminated, truncated, step_info = e.step(action)
        runs.append((info["request"], step_info["clicks"], reward))
        assert terminated is True and truncated is False
    for request, clicks, reward in runs[1:]:
        assert request == runs[0][0]
        assert np.array_equal(clicks, runs[0][1]) and reward == runs[0][2]
    assert a.reset(seed=12)[1]["request"] != runs[0][0]


def test_sampled_clicks_average_to_the_expected_clicks(env):
    request = env.reset(seed=5)[1]["request"]
    action = np.arange(K)
    totals, slots = [], []
    for seed in range(2000):
        env.reset(seed=seed, options={"request": request})
        _, reward, _, _, info = env.step(action)
        assert info["clicks"].shape == (K,) and set(info["clicks"].tolist()) <= {0, 1}
        assert reward == info["clicks"].sum()
        totals.append(reward)
        slots.append(info["clicks"])
    expected = info["expected"]
    assert abs(np.mean(totals) - expected["expected_clicks"]) < 4 * np.std(totals) / np.sqrt(len(totals))
    assert np.allclose(np.mean(slots, axis=0), expected["slot_clicks"], atol=0.05)


# ------------------------------------------------------------------ exact scores
def test_info_expected_is_the_simulators_score_of_the_page(env):
    sim = env.simulator
    exact = PageSimEnv(simulator=sim, reward="expected_clicks")
    for seed in range(10):
        _, info = env.reset(seed=seed)
        request = info["request"]
        action = env.action_space.sample()
        _, _, _, _, info = env.step(action)
        page = info["page"]
        assert page == [request.candidates[j].item_id for j in action]
        score = sim.score_page(request, page)
        expected = info["expected"]
        assert set(expected) == SCORE_KEYS
        for key in SCORE_KEYS - {"slot_clicks"}:
            assert expected[key] == getattr(score, key)
        assert np.array_equal(expected["slot_clicks"], sim.expected_slot_clicks(request, page))
        assert expected["slot_clicks"].sum() == pytest.approx(score.expected_clicks)
        direct = env.score(request, page)
        assert direct.keys() == expected.keys() and direct["ndcg"] == expected["ndcg"]
        exact.reset(options={"request": request})
        assert exact.step(action)[1] == score.expected_clicks


def test_the_oracle_scores_highest_and_random_lowest_through_the_interface():
    env = PageSimEnv(sim=SIM, seed=3, reward="expected_clicks")
    sim, rng = env.simulator, np.random.default_rng(0)
    env.action_space.seed(0)
    rewards = {"oracle": [], "logging": [], "random": []}
    for i in range(50):
        request = env.reset(seed=100 + i)[1]["request"]
        oracle = sim.oracle_page(request)
        assert oracle.exact
        rewards["oracle"].append(_step_page(env, request, oracle)[1])
        rewards["logging"].append(_step_page(env, request, sim.logging_page(request, rng)[0])[1])
        env.reset(options={"request": request})
        rewards["random"].append(env.step(env.action_space.sample())[1])
        assert rewards["oracle"][-1] >= max(rewards["logging"][-1], rewards["random"][-1]) - 1e-12
    mean = {name: np.mean(values) for name, values in rewards.items()}
    assert mean["oracle"] > mean["logging"] > mean["random"]


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    "action, problem",
    [
        ([0, 1, 2], "wrong length"),
        ([0, 1, 2, 3, 4], "wrong length"),
        ([], "wrong length"),
        ([0, 1, 2, 2], "repeats: candidate 2 is in slot 2 and slot 3"),
        ([0, 1, 2, N], f"out of range: slot 3 holds candidate index {N}"),
        ([-1, 1, 2, 3], "out of range: slot 0"),
        ([[0, 1], [2, 3]], "1-D"),
        ([0.0, 1.0, 2.0, 3.0], "must be integers"),
    ],
)
def test_an_invalid_action_raises_naming_the_problem(env, action, problem):
    env.reset(seed=0)
    with pytest.raises(InvalidPageError, match=problem):
        env.step(np.asarray(action) if action else action)
    assert issubclass(InvalidPageError, ValueError)


def test_misuse_is_refused_clearly(env):
    request = env.reset(seed=0)[1]["request"]
    env.step(np.arange(K))
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.arange(K))  # one page per episode
    with pytest.raises(InvalidPageError, match="not candidates"):
        env.action_of(request, ["nope"] + [c.item_id for c in request.candidates[: K - 1]])
    with pytest.raises(InvalidPageError, match="repeats"):
        env.score(request, [request.candidates[0].item_id] * K)
    with pytest.raises(ValueError, match="reward must be one of"):
        PageSimEnv(simulator=env.simulator, reward="gmv")
    with pytest.raises(ValueError, match="either sim"):
        PageSimEnv(sim=SIM, simulator=env.simulator)
    other = PageSimEnv(sim=dict(SIM, candidates_per_request=9), seed=3)
    with pytest.raises(ValueError, match="this environment's spaces are for 8 and 4"):
        env.reset(options={"request": other.reset(seed=0)[1]["request"]})


def test_an_environment_without_an_exact_scorer_has_no_expected_and_refuses_the_expected_reward(env):
    class ClicksOnly(PageEnv):
        def __init__(self, reward: str = "clicks") -> None:
            super().__init__(N, K, env.observation_space, reward)

        def sample_request(self, rng, request_id="request"):
            return env.sample_request(rng, request_id)

        def observe(self, request):
            return env.observe(request)

        def sample_clicks(self, request, item_ids, rng):
            return env.sample_clicks(request, item_ids, rng)

    blind = ClicksOnly()
    assert not blind.has_exact_scorer and env.has_exact_scorer
    blind.reset(seed=1)
    info = blind.step(np.arange(K))[4]
    assert "expected" not in info and info["clicks"].shape == (K,)
    with pytest.raises(ValueError, match="needs an exact scorer"):
        ClicksOnly(reward="expected_clicks")


# ------------------------------------------------------------------ registry
def test_the_registry_builds_refuses_duplicates_and_lists_known_names():
    assert isinstance(make_env("pagesim", sim=SIM, seed=1), PageSimEnv)
    with pytest.raises(ValueError, match="already registered"):
        register_env("pagesim", PageSimEnv)
    with pytest.raises(ValueError, match=f"gymnasium id '{GYM_ID}' is already registered"):
        register_env("pagesim-again", PageSimEnv, gym_id=GYM_ID)
    assert "pagesim-again" not in ENVIRONMENTS
    with pytest.raises(ValueError, match=r"unknown 'nope'; expected one of \[.*'pagesim'"):
        make_env("nope")
    register_env("pagesim-test-only", lambda **kw: PageSimEnv(sim=SIM, **kw))
    try:
        assert make_env("pagesim-test-only", seed=2).simulator.world.seed == 2
    finally:
        ENVIRONMENTS.pop("pagesim-test-only")


def test_from_recipe_builds_the_recipes_world_and_prompt():
    recipe = RecipeConfig(run=RunConfig(name="t", seed=4), sim=SimConfig(**SIM))
    recipe.model.price_bucket_edges = [20.0, 80.0]
    env = PageSimEnv.from_recipe(recipe)
    assert env.simulator.world.seed == 4 and env.simulator.cfg == recipe.sim
    assert env.observation_space["price_bucket"].shape == (N, 3)
    request = env.reset(seed=0)[1]["request"]
    same = PageSimEnv(sim=SIM, seed=4).sample_request(np.random.default_rng(1), "r")
    assert env.sample_request(np.random.default_rng(1), "r") == same
    assert request.candidates[0].item_id in env.simulator.world.item_index


# ------------------------------------------------------------------ observation
def test_the_observation_holds_only_the_documented_visible_fields(env):
    assert set(FIELDS) == OBSERVATION_KEYS
    assert set(env.observation_space.spaces) == OBSERVATION_KEYS
    world, prompt = env.simulator.world, ModelConfig()
    blind = PageSimEnv(simulator=env.simulator.without_latent_taste())
    seen_query = False
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        request = info["request"]
        assert set(obs) == OBSERVATION_KEYS and obs in env.observation_space
        assert all(a.dtype == np.float32 for a in obs.values())
        # computed from the request alone: a world with other hidden tastes observes the same
        assert all(np.array_equal(obs[k], blind.observe(request)[k]) for k in OBSERVATION_KEYS)
        history = Counter(request.user.history_categories[-prompt.max_history_items:])
        for j, item in enumerate(request.candidates):
            assert obs["category"][j].argmax() == world.categories.index(item.category)
            assert obs["quality"][j].argmax() == QUALITY_WORDS.index(item.title.split()[0])
            # price_<b>: b is how many of model.price_bucket_edges the price reaches (docs/method.md)
            assert obs["price_bucket"][j].argmax() == sum(item.price >= edge for edge in prompt.price_bucket_edges)
            assert obs["history_count"][j] == history[item.category]
            assert obs["query_match"][j] == float(item.category == request.query)
        assert obs["has_query"][0] == float(request.query is not None)
        seen_query |= request.query is not None
        sim_matrix = obs["title_similarity"]
        assert np.array_equal(sim_matrix, sim_matrix.T) and not np.diag(sim_matrix).any()
        groups = [c.attrs["group"] for c in request.candidates]
        for a in range(N):
            for b in range(a + 1, N):
                if groups[a] == groups[b]:  # near-duplicates read alike (titles differ by a suffix)
                    assert sim_matrix[a, b] >= 0.6
    assert seen_query
