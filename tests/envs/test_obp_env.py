"""The obp_slate environment: obp's synthetic slate bandit through the page-environment interface.
gymnasium's checker, seeding, the exact scorer against sampled clicks and against obp's own sampler
and ground truth, the best page above greedy above random, and ``import pagerl.envs`` without obp."""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from pagerl.envs import ENVIRONMENTS, InvalidPageError, make_env

HAS_OBP = importlib.util.find_spec("obp") is not None
requires_obp = pytest.mark.skipif(
    not HAS_OBP, reason="obp is not installed: it is an optional extra (pip install 'pagerl[obp]')"
)
K = 3


@pytest.fixture(scope="module")
def env():
    from pagerl.envs.obp_slate import ObpSlateEnv

    return ObpSlateEnv(n_items=10, page_size=K, seed=7)


def _greedy_page(env, request):
    """Slot by slot, the item that adds the most expected clicks to the slots above (the rest of
    the page padded with unused items): a search over score() that is not exhaustive."""
    ids = [c.item_id for c in request.candidates]
    page = []
    for k in range(env.page_size):
        def prefix_clicks(item_id):
            rest = [i for i in ids if i not in page and i != item_id][: env.page_size - k - 1]
            return env.score(request, page + [item_id] + rest)["slot_clicks"][: k + 1].sum()

        page.append(max((i for i in ids if i not in page), key=prefix_clicks))
    return page


# ------------------------------------------------------------------ without obp
def test_pagerl_envs_imports_without_obp_and_says_what_to_install():
    probe = (
        "import sys; sys.modules['obp'] = None\n"  # makes every `import obp...` fail
        "import pagerl.envs as e\n"
        "assert 'obp_slate' in e.ENVIRONMENTS and 'pagesim' in e.ENVIRONMENTS\n"
        "try:\n"
        "    e.make_env('obp_slate')\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "pip install 'pagerl[obp]'" in out.stdout


# ------------------------------------------------------------------ gymnasium
@requires_obp
def test_gymnasium_env_checker_passes_without_a_warning():
    from pagerl.envs.obp_slate import GYM_ID, ObpSlateEnv

    made = gymnasium.make(GYM_ID, n_items=10, page_size=K)
    assert isinstance(made.unwrapped, ObpSlateEnv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(made.unwrapped)
    made.close()
    assert isinstance(make_env("obp_slate", n_items=6, page_size=2), ObpSlateEnv)
    assert "obp_slate" in ENVIRONMENTS


@requires_obp
def test_the_observation_is_obps_context_and_action_context(env):
    obs, info = env.reset(seed=0)
    request = info["request"]
    from pagerl.envs.obp_slate import FIELDS

    assert set(obs) == set(FIELDS) == {"context", "action_context"} and obs in env.observation_space
    assert np.allclose(obs["context"], request.user.features)
    assert np.array_equal(obs["action_context"], np.eye(10, dtype=np.float32))
    assert [c.title for c in request.candidates[:2]] == ["item 0", "item 1"]
    assert all(c.price == 0.0 and c.category.startswith("group ") for c in request.candidates)


# ------------------------------------------------------------------ seeding
@requires_obp
def test_the_same_seed_gives_the_same_request_and_clicks():
    from pagerl.envs.obp_slate import ObpSlateEnv

    a, b = ObpSlateEnv(seed=7), ObpSlateEnv(seed=7)
    action = np.array([4, 0, 9])
    runs = []
    for e in (a, b, a):
        request = e.reset(seed=11)[1]["request"]
        _, reward, terminated, truncated, info = e.step(action)
        runs.append((request, info["clicks"], reward, info["expected"]["expected_clicks"]))
        assert terminated is True and truncated is False
    for request, clicks, reward, expected in runs[1:]:
        assert request == runs[0][0] and np.array_equal(clicks, runs[0][1])
        assert reward == runs[0][2] and expected == runs[0][3]
    assert a.reset(seed=12)[1]["request"] != runs[0][0]
    # another world (obp's random_state) scores the same request differently
    page = ["item-4", "item-0", "item-9"]
    other = ObpSlateEnv(seed=8)
    assert other.score(runs[0][0], page)["expected_clicks"] != a.score(runs[0][0], page)["expected_clicks"]


# ------------------------------------------------------------------ exact scores
@requires_obp
@pytest.mark.parametrize("click_model", ["cascade", "pbm", None])
def test_sampled_clicks_average_to_the_exact_expected_clicks(click_model):
    from pagerl.envs.obp_slate import ObpSlateEnv

    env = ObpSlateEnv(seed=7, click_model=click_model)
    request = env.reset(seed=5)[1]["request"]
    page = ["item-2", "item-7", "item-1"]
    clicks = np.array([env.sample_clicks(request, page, np.random.default_rng(s)) for s in range(3000)])
    expected = env.score(request, page)
    totals = clicks.sum(axis=1)
    assert abs(totals.mean() - expected["expected_clicks"]) < 4 * totals.std() / np.sqrt(len(totals))
    assert np.allclose(clicks.mean(axis=0), expected["slot_clicks"], atol=0.04)
    assert expected["slot_clicks"].sum() == pytest.approx(expected["expected_clicks"])


@requires_obp
def test_the_scorer_is_the_expectation_of_obps_own_click_sampler(env):
    """obp's sample_reward_given_expected_reward (its RandomState, its cascade) over 40,000
    copies of one page averages to score(): the click model is obp's, not a look-alike."""
    request = env.reset(seed=3)[1]["request"]
    page = np.array([[5, 1, 8]])
    raw = env.slot_rewards(request, page) / env.dataset.exam_weight
    sampled = env.dataset.sample_reward_given_expected_reward(np.tile(raw, (40_000, 1)))
    expected = env.score(request, [f"item-{j}" for j in page[0]])["slot_clicks"]
    assert np.allclose(sampled.mean(axis=0), expected, atol=0.012)


@requires_obp
def test_without_a_cascade_the_score_is_obps_ground_truth_policy_value():
    """For the position-based model obp's calc_ground_truth_policy_value is exact; on a policy
    that all but surely shows one page it equals score() (to obp's float16 rounding)."""
    from pagerl.envs.obp_slate import ObpSlateEnv

    env = ObpSlateEnv(seed=7, click_model="pbm", reward_structure="standard_decay")
    request = env.reset(seed=2)[1]["request"]
    page = [3, 6, 0]
    logits = np.full((1, 10), -1e3)
    logits[0, page] = [0.0, -60.0, -120.0]
    truth = env.dataset.calc_ground_truth_policy_value(
        context=np.asarray(request.user.features)[None, :], evaluation_policy_logit_=logits
    )
    assert env.score(request, [f"item-{j}" for j in page])["expected_clicks"] == pytest.approx(truth, abs=2e-3)


@requires_obp
def test_the_best_page_scores_highest_and_random_lowest_over_50_requests(env):
    exact = type(env)(seed=7, reward="expected_clicks")
    exact.action_space.seed(0)
    values = {"best": [], "greedy": [], "random": []}
    for i in range(50):
        request = exact.reset(seed=100 + i)[1]["request"]
        best, best_value = exact.best_page(request)
        for name, page in (("best", best), ("greedy", _greedy_page(exact, request))):
            exact.reset(options={"request": request})
            values[name].append(exact.step(exact.action_of(request, page))[1])
        exact.reset(options={"request": request})
        values["random"].append(exact.step(exact.action_space.sample())[1])
        assert values["best"][-1] == pytest.approx(best_value)
        assert best_value >= max(values["greedy"][-1], values["random"][-1]) - 1e-12
    mean = {name: np.mean(v) for name, v in values.items()}
    assert mean["best"] >= mean["greedy"] > mean["random"]
    gap = np.array(values["greedy"]) - values["random"]
    assert gap.mean() > 3 * gap.std(ddof=1) / np.sqrt(len(gap))


@requires_obp
def test_behavior_pages_carry_obps_plackett_luce_propensity(env):
    request = env.reset(seed=1)[1]["request"]
    rng = np.random.default_rng(0)
    page, propensity = env.behavior_page(request, rng)
    assert len(set(page)) == K and 0 < propensity < 1
    logits = env._obp.linear_behavior_policy_logit(
        context=np.asarray(request.user.features)[None, :], action_context=env.dataset.action_context,
        random_state=env.dataset.random_state,
    )[0]
    total, mine = 0.0, None
    for slate in itertools.permutations(range(10), K):
        p, remaining = 1.0, list(range(10))
        for j in slate:
            w = np.exp(logits[remaining]) / np.exp(logits[remaining]).sum()
            p *= w[remaining.index(j)]
            remaining.remove(j)
        total += p
        if [f"item-{j}" for j in slate] == page:
            mine = p
    assert total == pytest.approx(1.0) and propensity == pytest.approx(mine)


# ------------------------------------------------------------------ refusals
@requires_obp
def test_misuse_is_refused_clearly(env):
    from pagerl.envs.obp_slate import ObpSlateEnv

    request = env.reset(seed=0)[1]["request"]
    with pytest.raises(InvalidPageError, match="repeats"):
        env.score(request, ["item-1", "item-1", "item-2"])
    with pytest.raises(InvalidPageError, match="not candidates"):
        env.score(request, ["item-1", "item-2", "nope"])
    with pytest.raises(ValueError, match="returns 0.5 for every slot"):
        ObpSlateEnv(reward_structure="independent")
    with pytest.raises(ValueError, match="click_model must be one of"):
        ObpSlateEnv(click_model="dbn")
    with pytest.raises(ValueError, match="int8"):
        ObpSlateEnv(n_items=200)
    broken = type(request)(request.request_id, type(request.user)("u", features=[0.0]), request.candidates, K)
    with pytest.raises(ValueError, match="user.features must be the 5 finite numbers"):
        env.score(broken, ["item-1", "item-2", "item-3"])
