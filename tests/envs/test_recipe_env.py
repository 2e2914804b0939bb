"""``env.name`` plugs an environment into the stages: the synth stage's logs, the ``simulator``
reward source and the eval stage's scores all come from the recipe's environment. ``pagesim``
through the interface gives exactly the simulator's logs; ``obp_slate`` (the optional obp extra)
writes logs in our schema and is scored by obp's model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from pagerl.app.recipes import load_recipe
from pagerl.config.schema import SimConfig
from pagerl.data.io import read_impressions
from pagerl.envs import PageSimEnv, env_from_recipe
from pagerl.envs.synth import config_to_dict, synthesize, synthesize_env, synthesize_recipe
from pagerl.errors import RecipeError
from pagerl.eval.scoring import EvalError
from pagerl.rewards.reward_sources import build_reward_source, score_pages
from pagerl.stages.eval import run_eval_stage

REPO = Path(__file__).resolve().parents[2]
requires_obp = pytest.mark.skipif(
    importlib.util.find_spec("obp") is None,
    reason="obp is not installed: it is an optional extra (pip install 'pagerl[obp]')",
)
OBP = ["env.name=obp_slate", "env.obp_slate.context_levels=3", "sim.num_train_requests=60", "sim.num_eval_requests=30", "eval.num_requests=30",
       "eval.bootstrap_resamples=200", "tracking.report=false",
       "eval.baselines=[random, logging, history_category, history_category_capped, oracle]"]


def recipe(*overrides: str):
    r, _ = load_recipe(REPO / "recipes/ci_small.yaml", ["run.name=envs", *overrides])
    return r


def test_pagesim_through_the_environment_logs_exactly_what_the_simulator_logs(tmp_path):
    cfg = SimConfig(num_items=120, num_users=40, num_train_requests=30, num_eval_requests=10)
    direct = synthesize(cfg, 3, tmp_path / "direct", progress=False)
    env = PageSimEnv(sim=cfg, seed=3)
    via = synthesize_env(env, {"name": "pagesim", "sim": config_to_dict(cfg)}, 3, tmp_path / "env",
                         {"train": 30, "eval": 10}, progress=False)
    for split in ("train", "eval"):
        assert Path(via[f"{split}_path"]).read_bytes() == Path(direct[f"{split}_path"]).read_bytes()
    assert via["stats"] == direct["stats"]


@pytest.fixture(scope="module")
def obp_run(tmp_path_factory):
    pytest.importorskip("obp")
    r = recipe(*OBP)
    out = tmp_path_factory.mktemp("obp") / "run"
    stats = synthesize_recipe(r, out / "data", progress=False)
    return r, out, stats


@requires_obp
def test_obp_slate_logs_are_rows_of_our_schema_from_obp_s_behaviour_policy(obp_run):
    r, out, stats = obp_run
    meta = json.loads((out / "data" / "synth.json").read_text())
    assert meta["env"] == "obp_slate" and meta["obp_slate"]["n_items"] == r.env.obp_slate.n_items
    env = env_from_recipe(r)
    for split, count in (("train", 60), ("eval", 30)):
        loaded = read_impressions([out / "data" / f"{split}.jsonl"])
        assert loaded.num_rows == count and not loaded.bad_rows
        for imp in loaded.impressions:
            env.check_request(imp.request)  # the context the prompt shows is the context scored
            assert imp.request.query == env.context_query(imp.request.user.features)
            words = imp.request.query.split()
            assert words[0::2] == [f"x{d}" for d in range(r.env.obp_slate.dim_context)]
            assert set(words[1::2]) <= {"q0", "q1", "q2"}
            assert len(imp.page) == r.env.obp_slate.page_size and 0 < imp.propensity <= 1
            assert imp.page_outcome["clicks"] == sum(f.click for f in imp.feedback)
    # the sampled clicks of the logged pages average to their exact expected clicks
    train = read_impressions([out / "data" / "train.jsonl"]).impressions
    clicks = np.array([imp.page_outcome["clicks"] for imp in train])
    expected = np.array([env.score_page(imp.request, imp.page).expected_clicks for imp in train])
    assert abs(clicks.mean() - expected.mean()) < 4 * clicks.std(ddof=1) / np.sqrt(len(clicks))
    assert stats["stats"]["train"]["mean_logging_expected_clicks"] == pytest.approx(expected.mean())
    assert "mean_logging_expected_gmv" not in stats["stats"]["train"]  # obp has no prices


@requires_obp
def test_the_eval_stage_scores_pages_by_obp_s_model(obp_run):
    r, out, _ = obp_run
    results = run_eval_stage(r, out)
    table = results["methods"]
    assert set(table) == set(r.eval.baselines)
    assert table["oracle"]["expected_clicks"] == max(row["expected_clicks"] for row in table.values())
    assert table["oracle"]["expected_clicks"] > table["random"]["expected_clicks"]
    for row in table.values():
        assert row["expected_gmv"] is None and row["redundancy"] is None  # obp has neither
        assert 0 < row["ndcg"] <= 1 and row["valid_rate"] == 1.0
    env = env_from_recipe(r)
    first = json.loads((out / "eval" / "pages.jsonl").read_text().splitlines()[0])
    request = read_impressions([out / "data" / "eval.jsonl"]).impressions[0].request
    for name, page in first["pages"].items():
        assert page["expected_clicks"] == pytest.approx(env.score(request, page["items"])["expected_clicks"])


@requires_obp
def test_a_baseline_that_reads_pagesim_s_hidden_quantities_is_refused_on_obp(obp_run):
    r, out, _ = obp_run
    with pytest.raises(EvalError, match=r"eval.baselines: \['popularity'\]"):
        run_eval_stage(recipe(*OBP, "eval.baselines=[random, popularity]"), out)


@requires_obp
def test_pagesim_data_is_refused_by_an_obp_recipe(tmp_path):
    pagesim = recipe("sim.num_train_requests=5", "sim.num_eval_requests=5")
    synthesize_recipe(pagesim, tmp_path / "data", progress=False)
    with pytest.raises(EvalError, match=r"env.name='obp_slate'"):
        run_eval_stage(recipe(*OBP, "eval.baselines=[random]"), tmp_path)


@requires_obp
def test_the_simulator_reward_source_is_obp_s_exact_score(tmp_path, obp_run):
    r, out, _ = obp_run
    source = build_reward_source(recipe(*OBP, "rewards.source=simulator"), tmp_path)
    env = env_from_recipe(r)
    imps = read_impressions([out / "data" / "eval.jsonl"]).impressions[:5]
    rng = np.random.default_rng(0)
    requests = [imp.request for imp in imps for _ in range(2)]
    pages = [page for imp in imps for page in (imp.page, env.random_page(imp.request, rng))]
    scored = score_pages(source, requests, pages)
    for b, (request, page) in enumerate(zip(requests, pages)):
        exact = env.score(request, page)
        assert scored.page[b] == pytest.approx(exact["expected_clicks"], rel=1e-12)
        np.testing.assert_allclose(scored.items[b], exact["slot_clicks"], rtol=1e-12)
    with pytest.raises(RecipeError, match="rewards.sim_objective"):
        build_reward_source(recipe(*OBP, "rewards.source=simulator", "rewards.sim_objective=gmv"), tmp_path)


@requires_obp
@pytest.mark.parametrize("override, key", [
    ("env.obp_slate.n_items=40", "env.obp_slate.n_items"),  # more items than model.max_candidates (32)
    ("env.obp_slate.page_size=11", "env.obp_slate.page_size"),
    ("env.obp_slate.click_model=dbn", "env.obp_slate.click_model"),
    ("env.obp_slate.context_levels=1", "env.obp_slate.context_levels"),
    ("env.name=obp", "env.name"),
])
def test_a_bad_environment_setting_is_refused_at_load_naming_the_key(override, key):
    with pytest.raises(RecipeError, match=f"'{key}'"):
        recipe("env.name=obp_slate", override)
