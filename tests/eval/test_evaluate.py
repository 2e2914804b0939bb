"""The evaluation protocol against the real simulator and a real (tiny, untrained) policy checkpoint."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pagerl.app.report import write_report
from pagerl.config.schema import (
    EvalConfig,
    ModelConfig,
    RecipeConfig,
    RunConfig,
    SimConfig,
    TinyModelConfig,
)
from pagerl.data.io import read_impressions
from pagerl.envs.synth import synthesize
from pagerl.eval.baseline_policies import BASELINES, baseline_rng
from pagerl.eval.pages import baseline_pages
from pagerl.eval.scoring import METRICS, EvalError, aggregate, evaluate, paired_differences, score_method
from pagerl.models.build import build_policy
from pagerl.sim import Simulator, World
from pagerl.stages.eval import run_eval_stage
from pagerl.tokenization import build_tokenizer
from pagerl.tracking.metrics import read_metrics

SEED = 3
SIM = SimConfig(num_items=60, num_users=30, candidates_per_request=6, page_size=3,
                num_train_requests=12, num_eval_requests=16)
MODEL = ModelConfig(max_candidates=8, tiny=TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2,
                                                           num_kv_heads=1, intermediate_size=64))
BASELINE_NAMES = ["random", "popularity", "logging", "greedy", "oracle"]


def make_recipe(**eval_overrides) -> RecipeConfig:
    return RecipeConfig(
        run=RunConfig(name="evaltest", seed=SEED),
        sim=SIM,
        model=MODEL,
        eval=EvalConfig(**{"num_requests": 0, "batch_size": 8, "baselines": list(BASELINE_NAMES),
                           **eval_overrides}),
    )


@pytest.fixture(scope="module")
def sim():
    return Simulator(World.from_config(SIM, SEED))


@pytest.fixture(scope="module")
def requests(sim):
    rng = np.random.default_rng(0)
    return [sim.sample_request(rng, f"r{i}") for i in range(24)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(SIM, SEED, out, progress=False)
    return out


@pytest.fixture(scope="module")
def checkpoint(data_dir, tmp_path_factory):
    """An untrained tiny policy saved as a run saves one: model + its tokenizer."""
    impressions = read_impressions(data_dir / "train.jsonl").impressions
    tokenizer = build_tokenizer(MODEL, impressions)
    model = build_policy(MODEL, tokenizer, seed=0)
    path = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


def _run_dir(tmp_path, data_dir):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "eval.jsonl").write_bytes((data_dir / "eval.jsonl").read_bytes())
    return run


# ------------------------------------------------------------- evaluate()


def test_aggregate_matches_hand_computed_means_and_standard_errors(sim, requests):
    rng = np.random.default_rng(1)
    pages = [sim.random_page(r, rng) for r in requests]
    scores = [sim.score_page(r, p) for r, p in zip(requests, pages)]
    row = evaluate({"random": pages}, requests, sim)["random"]
    clicks = np.array([s.expected_clicks for s in scores])
    assert row["count"] == row["valid_count"] == len(requests)
    assert row["expected_clicks"] == pytest.approx(clicks.mean())
    assert row["expected_clicks_se"] == pytest.approx(clicks.std(ddof=1) / math.sqrt(len(clicks)))
    assert row["ndcg"] == pytest.approx(np.mean([s.ndcg for s in scores]))
    assert row["expected_gmv"] == pytest.approx(np.mean([s.expected_gmv for s in scores]))
    assert row["valid_rate"] == 1.0 and row["valid_rate_se"] == 0.0


def test_oracle_beats_random_and_every_baseline_lays_out_valid_pages(sim, requests):
    policies = {name: [BASELINES[name](sim, r, baseline_rng(SEED, name)) for r in requests]
                for name in BASELINE_NAMES}
    table = evaluate(policies, requests, sim)
    for name in BASELINE_NAMES:
        assert table[name]["valid_rate"] == 1.0, name
    # The oracle's search is exhaustive here (6P3 pages), so it wins on every request.
    for name in BASELINE_NAMES:
        per_request = [s.expected_clicks for s in score_method(policies[name], requests, sim)]
        oracle = [s.expected_clicks for s in score_method(policies["oracle"], requests, sim)]
        assert all(o >= p - 1e-12 for o, p in zip(oracle, per_request)), name
    assert table["oracle"]["expected_clicks"] > table["random"]["expected_clicks"]
    assert table["greedy"]["ndcg"] == pytest.approx(1.0)


def test_invalid_and_missing_pages_count_against_valid_rate_and_score_zero(sim, requests):
    good = [sim.greedy_page(r) for r in requests]
    pages = list(good)
    pages[0] = [good[0][0]] * len(good[0])  # a repeated item
    pages[1] = None  # the policy produced nothing
    pages[2] = good[2][:-1]  # too short
    row = evaluate({"m": pages}, requests, sim)["m"]
    n = len(requests)
    assert row["valid_rate"] == pytest.approx((n - 3) / n)
    assert row["valid_count"] == n - 3 and row["count"] == n
    scores = score_method(pages, requests, sim)
    assert [s.valid for s in scores[:4]] == [False, False, False, True]
    assert scores[1].reason == "no page" and "repeats" in scores[0].reason
    valid_clicks = [sim.score_page(r, p).expected_clicks for r, p in zip(requests[3:], good[3:])]
    # Engagement: over all requests, invalid = 0.  Composition: over valid pages only.
    assert row["expected_clicks"] == pytest.approx(sum(valid_clicks) / n)
    valid_div = [sim.score_page(r, p).diversity for r, p in zip(requests[3:], good[3:])]
    assert row["diversity"] == pytest.approx(np.mean(valid_div))


def test_undefined_statistics_are_none_not_nan(sim, requests):
    row = aggregate(score_method([None], requests[:1], sim))
    assert row["valid_rate"] == 0.0 and row["diversity"] is None and row["ndcg_se"] is None
    json.dumps(row, allow_nan=False)


def test_page_count_must_match_the_requests(sim, requests):
    with pytest.raises(ValueError, match="'m' has 2 pages for 24 requests"):
        evaluate({"m": [None, None]}, requests, sim)


def test_each_baseline_has_its_own_stream(sim, requests):
    alone = baseline_pages("random", sim, requests, SEED).pages
    baseline_pages("logging", sim, requests, SEED)  # another baseline drawing first changes nothing
    assert baseline_pages("random", sim, requests, SEED).pages == alone
    assert baseline_pages("random", sim, requests, SEED + 1).pages != alone


# ------------------------------------------------------- run_eval_stage()


def test_stage_scores_the_policy_and_baselines_and_writes_its_files(tmp_path, data_dir, checkpoint):
    run = _run_dir(tmp_path, data_dir)
    results = run_eval_stage(make_recipe(), run, policies={"sft": checkpoint})

    methods = results["methods"]
    assert list(methods) == ["random", "popularity", "logging", "sft", "greedy", "oracle"]
    assert results["k"] == SIM.page_size and results["num_requests"] == SIM.num_eval_requests
    assert methods["sft"]["valid_rate"] == 1.0  # constrained decoding cannot produce an invalid page
    assert methods["oracle"]["expected_clicks"] >= max(m["expected_clicks"] for m in methods.values()) - 1e-12
    assert results["invalid_reasons"] == {}

    on_disk = json.loads((run / "eval" / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    lines = (run / "eval" / "pages.jsonl").read_text().splitlines()
    assert len(lines) == SIM.num_eval_requests
    first = json.loads(lines[0])
    assert set(first["pages"]) == set(methods)
    assert len(first["pages"]["sft"]["items"]) == SIM.page_size and first["pages"]["sft"]["valid"]
    mean_clicks = np.mean([json.loads(line)["pages"]["sft"]["expected_clicks"] for line in lines])
    assert mean_clicks == pytest.approx(methods["sft"]["expected_clicks"])

    logged = read_metrics(run, stage="eval")
    assert len(logged) == 1 and logged[0]["sft/ndcg"] == pytest.approx(methods["sft"]["ndcg"])
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    # Repeatable: the same recipe scores the same pages the same way.
    again = run_eval_stage(make_recipe(), tmp_path / "run", policies={"sft": checkpoint})
    assert again == results

    # the paired comparison is the per-request difference, recomputable from pages.jsonl
    assert set(results["paired"]) == {"sft"} and set(results["paired"]["sft"]) == set(BASELINE_NAMES)
    rows = [json.loads(line)["pages"] for line in lines]
    diff = [r["sft"]["expected_clicks"] - r["logging"]["expected_clicks"] for r in rows]
    paired = results["paired"]["sft"]["logging"]
    assert paired["expected_clicks_diff"] == pytest.approx(np.mean(diff))
    assert paired["expected_clicks_diff_se"] == pytest.approx(np.std(diff, ddof=1) / math.sqrt(len(diff)))
    assert paired["expected_clicks_win_rate"] == pytest.approx(np.mean([d > 0 for d in diff]))
    assert results["paired"]["sft"]["oracle"]["expected_clicks_diff"] <= 1e-12

    # every mean has a bootstrap interval around it, every paired difference too
    assert results["bootstrap"] == {"resamples": EvalConfig().bootstrap_resamples, "level": EvalConfig().ci_level}
    for row in methods.values():
        lo, hi = row["expected_clicks_ci"]
        assert lo <= row["expected_clicks"] <= hi
    lo, hi = paired["expected_clicks_diff_ci"]
    assert lo <= paired["expected_clicks_diff"] <= hi

    report = write_report(run).read_text()
    assert "| `sft`" in report and (run / "plots" / "eval_bars.png").is_file()
    assert "Paired comparison: `sft` minus each other method" in report
    lo, hi = methods["sft"]["expected_clicks_ci"]
    assert f"[{lo:.3f}, {hi:.3f}]" in report and "2000 resamples, 95% coverage" in report


def test_paired_differences_by_hand(sim, requests):
    """Differences of hand-made scores: mean, standard error and win share."""
    from pagerl.sim.simulator import PageScore

    def score(clicks):
        return PageScore(clicks, 10 * clicks, clicks / 2, 0.5, 0.0, valid=True)

    out = paired_differences([score(1.0), score(2.0), score(0.5)], [score(0.5), score(2.0), score(1.5)])
    assert out["expected_clicks_diff"] == pytest.approx((0.5 + 0.0 - 1.0) / 3)
    assert out["expected_clicks_diff_se"] == pytest.approx(np.std([0.5, 0.0, -1.0], ddof=1) / math.sqrt(3))
    assert out["expected_clicks_win_rate"] == pytest.approx(1 / 3)  # a tie is not a win
    assert out["expected_gmv_diff"] == pytest.approx(10 * out["expected_clicks_diff"])
    with pytest.raises(ValueError, match="one per request"):
        paired_differences([score(1.0)], [])


def test_unconstrained_sampling_reports_invalid_pages_with_reasons(tmp_path, data_dir, checkpoint):
    run = _run_dir(tmp_path, data_dir)
    recipe = make_recipe(constrained=False, decoding="sample", baselines=["random"])
    results = run_eval_stage(recipe, run, policies={"sft_free": checkpoint})
    row = results["methods"]["sft_free"]
    # An untrained model sampling from its whole vocabulary almost never lays out a valid page.
    assert row["valid_rate"] < 0.5
    reasons = results["invalid_reasons"]["sft_free"]
    assert sum(reasons.values()) == row["count"] - row["valid_count"]
    assert "no page" not in reasons  # the parser's reasons, not a generic one
    pages = [json.loads(line)["pages"]["sft_free"] for line in (run / "eval" / "pages.jsonl").open()]
    invalid = [p for p in pages if not p["valid"]]
    assert invalid and all(p["generation_reason"] == p["reason"] and p["generation_detail"] for p in invalid)


def test_held_out_figures_decoded_elsewhere_are_the_eval_stages(tmp_path, data_dir, checkpoint):
    """HeldoutEval is the one entry point the eval stage and the RL stage's held-out curve share:
    its chunks decoded out of order over two "workers" (as the controller spreads them over its
    rollout workers), put back in request order and scored by figures(), give the eval stage's
    own row for the same policy, sampled decoding included (so every chunk's seed is the same)."""
    from pagerl.eval.pages import HeldoutEval, heldout_requests
    from pagerl.models.build import load_policy
    from pagerl.models.generate import generate_pages
    from pagerl.tokenization.tokenizer import load_policy_tokenizer

    run = _run_dir(tmp_path, data_dir)
    recipe = make_recipe(decoding="sample", batch_size=4, baselines=["random"])
    table = run_eval_stage(recipe, run, policies={"sft": checkpoint})["methods"]["sft"]

    heldout = HeldoutEval(recipe, heldout_requests(recipe, run))
    assert len(heldout.chunks) == 4 and heldout.options["greedy"] is False
    model, tokenizer = load_policy(checkpoint, recipe.model), load_policy_tokenizer(checkpoint)
    workers = 2
    answers = {}
    for w in reversed(range(workers)):  # worker 1 first: a chunk's pages must not depend on what ran before
        answers[w] = [generate_pages(model, tokenizer, chunk, seed=seed, **heldout.options)
                      for chunk, seed in heldout.chunks[w::workers]]
    generated = [page for i in range(len(heldout.chunks)) for page in answers[i % workers][i // workers]]
    figures = heldout.figures(generated)
    assert figures["eval/requests"] == table["count"] == SIM.num_eval_requests
    assert {f"eval/{m}": figures[f"eval/{m}"] for m in METRICS} == {f"eval/{m}": table[m] for m in METRICS}
    for m in ("expected_clicks", "ndcg", "expected_gmv"):
        assert figures[f"eval/{m}_se"] == table[f"{m}_se"]


def test_stage_without_a_policy_and_with_a_request_limit(tmp_path, data_dir):
    run = _run_dir(tmp_path, data_dir)
    results = run_eval_stage(make_recipe(num_requests=5, baselines=["popularity", "oracle"]), run)
    assert list(results["methods"]) == ["popularity", "oracle"]
    assert results["num_requests"] == 5 and results["policies"] == {} and results["paired"] == {}


def test_stage_refuses_bad_settings_before_any_work(tmp_path, data_dir, checkpoint):
    run = _run_dir(tmp_path, data_dir)
    with pytest.raises(EvalError, match="eval.baselines: unknown baseline.*'nope'"):
        run_eval_stage(make_recipe(baselines=["random", "nope"]), run, policies={"sft": checkpoint})
    with pytest.raises(EvalError, match="policy name 'random'"):
        run_eval_stage(make_recipe(), run, policies={"random": checkpoint})
    with pytest.raises(EvalError, match="not found"):
        run_eval_stage(make_recipe(), tmp_path / "empty_run")
    assert not (run / "eval").exists()


def test_data_from_another_world_is_refused(tmp_path, data_dir):
    run = _run_dir(tmp_path, data_dir)
    recipe = make_recipe(baselines=["random"])
    recipe.run.seed = SEED + 1  # a different world: the logged item ids do not match it
    # Refused before the policy is even loaded (this checkpoint path does not exist).
    with pytest.raises(ValueError, match="does not belong to this world"):
        run_eval_stage(recipe, run, policies={"sft": str(tmp_path / "no_checkpoint")})


def test_the_taste_blind_oracle_sits_between_what_the_prompt_shows_and_the_oracle(sim):
    """Its pages never beat the oracle's; without a latent term in the world it is the oracle."""
    import dataclasses

    requests = [sim.sample_request(np.random.default_rng(i), f"b{i}") for i in range(12)]
    rng = np.random.default_rng(0)
    blind = [s.expected_clicks for s in score_method(
        [BASELINES["taste_blind_oracle"](sim, r, rng) for r in requests], requests, sim)]
    best = [s.expected_clicks for s in score_method([BASELINES["oracle"](sim, r, rng) for r in requests],
                                                    requests, sim)]
    assert all(b <= o + 1e-12 for b, o in zip(blind, best)) and sum(blind) < sum(best)  # the taste matters here
    no_taste = Simulator(World.from_config(dataclasses.replace(SIM, latent_weight=0.0), SEED))
    for r in requests[:4]:
        assert list(BASELINES["taste_blind_oracle"](no_taste, r, rng)) == list(no_taste.oracle_page(r))
