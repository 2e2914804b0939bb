"""The scoring wrapper RLlib trains on (pagerl.envs.scored): the top-K page of the scores, exactly and with
ties to the lower index; a flat observation made of the visible features only; seeding apart from the
run's other streams."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from pagerl.config.schema import SimConfig
from pagerl.envs import PageSimEnv
from pagerl.envs.scored import ScoredPageEnv, flatten_observation, top_k_page
from pagerl.sim.world import stream

SIM = dict(num_items=120, num_users=40, candidates_per_request=8, page_size=4)
N, K = SIM["candidates_per_request"], SIM["page_size"]


@pytest.fixture(scope="module")
def scored() -> ScoredPageEnv:
    return ScoredPageEnv(PageSimEnv(sim=SimConfig(**SIM), seed=3), stream_seed=5)


# ------------------------------------------------------------------ the page of a score vector
def test_top_k_is_the_k_highest_scores_in_score_order():
    assert top_k_page(np.array([0.1, 2.0, -3.0, 0.7, 1.5]), 3).tolist() == [1, 4, 3]
    assert top_k_page(np.array([np.inf, -np.inf, 0.0]), 3).tolist() == [0, 2, 1]


def test_ties_go_to_the_lower_candidate_index():
    assert top_k_page(np.array([0.5, 0.9, 0.5, 0.9, 0.5]), 4).tolist() == [1, 3, 0, 2]
    assert top_k_page(np.zeros(6), 3).tolist() == [0, 1, 2]  # all tied: prompt order


def test_top_k_matches_a_brute_force_ranking_on_many_tied_vectors():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scores = rng.integers(-2, 3, size=N).astype(np.float32)  # few values: ties on almost every vector
        expected = sorted(range(N), key=lambda j: (-scores[j], j))[:K]
        assert top_k_page(scores, K).tolist() == expected


def test_nan_and_malformed_scores_are_refused():
    with pytest.raises(ValueError, match="NaN at candidate"):
        top_k_page(np.array([0.0, np.nan, 1.0]), 2)
    with pytest.raises(ValueError, match="1-D"):
        top_k_page(np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="k: expected"):
        top_k_page(np.zeros(3), 4)


def test_a_step_lays_out_the_top_k_page_of_the_action(scored):
    rng = np.random.default_rng(1)
    for seed in range(20):
        _, info = scored.reset(seed=seed)
        request = info["request"]
        scores = rng.normal(size=N).astype(np.float32)
        _, reward, terminated, truncated, step_info = scored.step(scores)
        order = np.argsort(-scores)[:K]
        assert step_info["action"].tolist() == order.tolist()
        assert step_info["page"] == [request.candidates[j].item_id for j in order]
        assert terminated and not truncated and reward == float(step_info["clicks"].sum())
        expected = scored.env.score(request, step_info["page"])["expected_clicks"]
        assert step_info["expected"]["expected_clicks"] == pytest.approx(expected)


def test_the_expected_clicks_reward_is_the_exact_expectation():
    env = ScoredPageEnv(PageSimEnv(sim=SimConfig(**SIM), seed=3, reward="expected_clicks"))
    env.reset(seed=0)
    _, reward, *_, info = env.step(np.arange(N, dtype=np.float32))
    assert reward == pytest.approx(info["expected"]["expected_clicks"]) and info["action"].tolist() == [7, 6, 5, 4]


def test_gymnasium_env_checker_passes(scored):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Unbounded on purpose (module doc of pagerl.envs.scored): RLlib then neither squashes nor clips a score.
        warnings.filterwarnings("ignore", message=".*action space (minimum|maximum) value is .*infinity")
        warnings.filterwarnings("ignore", message=".*we recommend using a symmetric and normalized space")
        check_env(ScoredPageEnv(PageSimEnv(sim=SimConfig(**SIM), seed=3)), skip_render_check=True)


# ------------------------------------------------------------------ what the policy sees
def test_the_observation_is_the_visible_features_flattened_candidate_major(scored):
    space = scored.env.observation_space
    per_candidate = [k for k, box in space.spaces.items() if box.shape[0] == N]
    assert set(space.spaces) - set(per_candidate) == {"has_query"}
    for seed in range(10):
        flat, info = scored.reset(seed=seed)
        visible = scored.env.observe(info["request"])
        assert flat.dtype == np.float32 and flat in scored.observation_space
        rows = flat[:-1].reshape(N, -1)
        for j in range(N):
            want = np.concatenate([np.ravel(visible[k][j]) / np.broadcast_to(space[k].high, space[k].shape)[j].ravel()
                                   for k in per_candidate])
            np.testing.assert_allclose(rows[j], want, rtol=0, atol=1e-7)
        assert flat[-1] == visible["has_query"][0]


def test_hidden_state_does_not_reach_the_observation(scored):
    """Everything a prompt does not show (ids, user features, item attributes such as the near-duplicate
    group, the world's latent tastes) is changed: the observation stays the same."""
    blind = ScoredPageEnv(PageSimEnv(simulator=scored.env.simulator.without_latent_taste()))
    for seed in range(10):
        flat, info = scored.reset(seed=seed)
        request = info["request"]
        disguised = dataclasses.replace(
            request, request_id="other",
            user=dataclasses.replace(request.user, user_id="someone-else", features=[9.0] * len(request.user.features),
                                     history=["x"] * len(request.user.history)),
            candidates=[dataclasses.replace(c, item_id=f"other-{j}", attrs={}) for j, c in enumerate(request.candidates)])
        np.testing.assert_array_equal(scored.flatten(scored.env.observe(disguised)), flat)
        np.testing.assert_array_equal(blind.flatten(blind.env.observe(request)), flat)
    # and what the prompt does show moves it
    cheaper = dataclasses.replace(request, candidates=[dataclasses.replace(request.candidates[0], price=1e6),
                                                       *request.candidates[1:]])
    assert not np.array_equal(scored.flatten(scored.env.observe(cheaper)), flat)


def test_flatten_refuses_nothing_and_keeps_zero_bounded_fields_zero():
    from gymnasium import spaces

    space = spaces.Dict({"a": spaces.Box(0.0, 0.0, shape=(2, 1), dtype=np.float32),
                         "b": spaces.Box(0.0, 4.0, shape=(2,), dtype=np.float32)})
    out = flatten_observation(space, {"a": np.zeros((2, 1), np.float32), "b": np.array([2.0, 4.0], np.float32)}, 2,
                              ("a", "b"))
    assert out.tolist() == [0.0, 0.5, 0.0, 1.0]


# ------------------------------------------------------------------ seeding
def test_seeded_resets_repeat_and_streams_differ():
    def first_requests(stream_seed, count=5):
        env = ScoredPageEnv(PageSimEnv(sim=SimConfig(**SIM), seed=3), stream_seed=stream_seed)
        env.reset(seed=0)
        out = []
        for _ in range(count):
            _, info = env.reset()
            out.append((info["request"].user.user_id, tuple(c.item_id for c in info["request"].candidates)))
        return out

    assert first_requests(5) == first_requests(5)
    assert first_requests(5) != first_requests(6)


def test_training_requests_are_not_the_held_out_stream(scored):
    """The synth stage's held-out split draws from stream 11 under the world's seed; the wrapper's
    requests from its own. With 40 users and 120 items, two streams that coincided would share
    requests; independent ones share none of 200 (the chance of one shared candidate list is ~1e-9)."""
    sim = scored.env.simulator
    rng = stream(3, 11)
    held_out = {tuple(c.item_id for c in sim.sample_request(rng, f"e{i}").candidates) for i in range(200)}
    env = ScoredPageEnv(PageSimEnv(simulator=sim), stream_seed=3)
    training = set()
    for seed in range(200):
        _, info = env.reset(seed=seed)
        training.add(tuple(c.item_id for c in info["request"].candidates))
    assert not training & held_out


def test_a_request_field_as_long_as_the_candidate_list_stays_a_request_field():
    """obp's context vector with dim_context == n_items is still the request's, not one value per candidate."""
    pytest.importorskip("obp")
    from pagerl.envs import make_env

    scored = ScoredPageEnv(make_env("obp_slate", n_items=6, page_size=2, dim_context=6, seed=1))
    flat, info = scored.reset(seed=0)
    assert scored.request_width == 6 and scored.candidate_width == 6
    context = np.asarray(info["request"].user.features, dtype=np.float32)
    np.testing.assert_allclose(flat[-6:], context)  # unbounded (N(0, I)): kept as it is, not divided by 3.4e38
    assert scored.observation_space.contains(flat) and scored.observation_space.bounded_below.sum() == 0
    np.testing.assert_array_equal(flat[:36].reshape(6, 6), np.eye(6, dtype=np.float32))
