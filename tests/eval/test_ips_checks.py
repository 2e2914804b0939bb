"""The IPS sanity checks of a run (eval.obd_check, eval.ips_check): results.json and the report's sections.

The estimator's arithmetic is tested by hand in tests/data/test_obd.py and
below; here: that the run's own logged propensities pass the check, that the
eval stage writes the figures, and that the report shows the figures
results.json holds.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pagerl.app.recipes import load_recipe
from pagerl.app.report import write_report
from pagerl.config.schema import EvalConfig, RecipeConfig, RunConfig, SimConfig
from pagerl.envs.synth import synthesize
from pagerl.errors import RecipeError
from pagerl.eval.logs_ips import tempered_logging_check
from pagerl.sim import Simulator, World
from pagerl.stages.eval import run_eval_stage

REPO = Path(__file__).resolve().parents[2]
SEED = 5
SIM = SimConfig(num_items=60, num_users=30, candidates_per_request=6, page_size=3,
                num_train_requests=4, num_eval_requests=400)
requires_obp = pytest.mark.skipif(importlib.util.find_spec("obp") is None, reason="obp (extra 'obp') not installed")


def _logs(tmp_path, **sim):
    cfg = SimConfig(**{**SIM.__dict__, **sim})
    synthesize(cfg, SEED, tmp_path / "data", progress=False)
    from pagerl.data.io import read_impressions

    return cfg, read_impressions([str(tmp_path / "data" / "eval.jsonl")]).impressions


def test_logs_of_a_uniform_logger_have_weight_one_so_ips_is_the_plain_mean_of_the_clicks(tmp_path):
    # a uniform logger has all-zero logits: the tempered target is the logger itself
    cfg, logs = _logs(tmp_path, logging_policy="uniform", num_eval_requests=60)
    check = tempered_logging_check(logs, Simulator(World.from_config(cfg, SEED)), SEED, pages_per_request=8)
    clicks = np.array([imp.page_outcome["clicks"] for imp in logs], dtype=float)
    ips = check["target_ips"]
    assert ips["value"] == pytest.approx(clicks.mean()) and ips["max_weight"] == pytest.approx(1.0)
    assert ips["se"] == pytest.approx(clicks.std(ddof=1) / math.sqrt(len(clicks)))
    assert ips["effective_sample_size"] == pytest.approx(60) and ips["n"] == 60
    assert check["mean_weight"]["value"] == pytest.approx(1.0) and check["mean_weight"]["se"] == pytest.approx(0.0)
    assert check["logging_on_policy"]["value"] == pytest.approx(ips["value"])


def test_the_synthetic_logs_propensities_pass_the_check_and_wrong_ones_fail_it(tmp_path):
    cfg, logs = _logs(tmp_path)
    sim = Simulator(World.from_config(cfg, SEED))
    check = tempered_logging_check(logs, sim, SEED)
    ips, weight = check["target_ips"], check["mean_weight"]
    # the target is not the logger: uneven weights, fewer effective impressions
    assert ips["max_weight"] > 2 and ips["effective_sample_size"] < 400
    assert check["target_exact_mc_se"] < 0.1 * ips["se"]
    # measured on this world and seed: z = +0.21, mean weight 0.913 +- 0.040
    assert abs(check["z"]) < 3 and abs(weight["value"] - 1) < 3.5 * weight["se"], check
    # propensities 1.5 times too large (those of a sharper logger, say) fail both: measured z = -5.3 and
    # a mean weight of 0.61 +- 0.03
    wrong = [type(imp)(**{**imp.__dict__, "propensity": min(1.0, imp.propensity * 1.5)}) for imp in logs]
    bad = tempered_logging_check(wrong, sim, SEED)
    assert bad["z"] < -4 and bad["mean_weight"]["ci"][1] < 0.8 and not bad["exact_inside_ci"]


def test_logs_without_propensities_are_skipped_with_a_reason(tmp_path):
    cfg, logs = _logs(tmp_path, num_eval_requests=5)
    logs[2].propensity = None
    assert tempered_logging_check(logs, Simulator(World.from_config(cfg, SEED)), SEED) == {
        "skipped": "1 of 5 logged impressions carry no propensity"}


def test_obd_check_without_obp_fails_at_load_naming_the_key_and_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "obp" else real(name, *a))
    with pytest.raises(RecipeError, match=r"eval\.obd_check.*pip install 'pagerl\[obp\]'"):
        load_recipe(REPO / "recipes" / "quickstart.yaml", ["run.name=x", "eval.obd_check=true"])
    load_recipe(REPO / "recipes" / "quickstart.yaml", ["run.name=x"])  # off by default: no obp needed
    with pytest.raises(RecipeError, match=r"eval\.obd_campaign"):
        load_recipe(REPO / "recipes" / "quickstart.yaml", ["run.name=x", "eval.obd_campaign=kids"])


@requires_obp
def test_the_eval_stage_writes_both_checks_and_the_report_shows_its_figures(tmp_path):
    synthesize(SIM, SEED, tmp_path / "run" / "data", progress=False)
    recipe = RecipeConfig(run=RunConfig(name="ips", seed=SEED), sim=SIM,
                          eval=EvalConfig(num_requests=20, baselines=["random"], bootstrap_resamples=0,
                                          obd_check=True, ips_check=True))
    results = run_eval_stage(recipe, tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    obd, ips = on_disk["obd_check"], on_disk["ips_check"]
    assert obd == results["obd_check"] and ips == results["ips_check"]
    # obp's README figure, and the comparison with what BTS logged
    assert obd["bts_ips_relative_to_random"] == pytest.approx(1.198126, abs=1e-6)
    assert obd["on_policy_inside_ci"] is True
    assert obd["difference"] == pytest.approx(obd["bts_ips_on_random_log"]["value"] - obd["bts_on_policy"]["value"])
    assert ips["impressions"] == 400 and ips["exact_inside_ci"] in (True, False)

    report = write_report(tmp_path / "run").read_text()
    html = (tmp_path / "run" / "report.html").read_text()
    est = obd["bts_ips_on_random_log"]
    for text in (report, html):
        assert "## Real logged clicks (Open Bandit Dataset)" in text or "<h2>Real logged clicks (Open Bandit" in text
        assert "IPS on the run's own logs" in text or "IPS on the run&#x27;s own logs" in text
        assert f"{est['value']:.5f} ± {est['se']:.5f}" in text
        assert f"[{est['ci'][0]:.5f}, {est['ci'][1]:.5f}]" in text
        assert f"{obd['bts_on_policy']['value']:.5f}" in text and f"{obd['bts_ips_relative_to_random']:.4f}" in text
        assert f"{est['effective_sample_size']:.0f}" in text
        assert f"{ips['target_ips']['value']:.4f} ± {ips['target_ips']['se']:.4f}" in text
        assert f"{ips['target_exact']:.4f}" in text
        assert f"{ips['mean_weight']['value']:.4f} ± {ips['mean_weight']['se']:.4f}" in text


def test_a_run_without_the_checks_has_no_such_sections(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "results.json").write_text(json.dumps({"methods": {"random": {"ndcg": 0.5, "count": 3}},
                                                            "obd_check": None, "ips_check": None}))
    report = write_report(run).read_text()
    assert "Open Bandit Dataset" not in report and "own logs" not in report
