"""The main job end to end, as the README tells a new user to type it, asserting on what it logged.

The command comes from the README itself (the ``main_command`` fixture of conftest) and
runs unchanged in a shell whose working directory is a fresh copy of the repository,
so its relative paths (the recipe, ``runs/quickstart``) are exactly a user's.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml

pytestmark = pytest.mark.slow


# The run alone is about 11 minutes on 2 cores (README); the suite-wide 900 s limit could cut it.
@pytest.mark.timeout(2400)
def test_quickstart_as_typed_then_rerun(fresh_repo, main_command, typed):
    repo, command = fresh_repo, main_command
    proc = typed(command, repo, timeout=1500)
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 0, shown[-5000:]
    run_dir = repo / "runs" / "quickstart"
    assert f"run directory: {run_dir}" in proc.stdout
    assert f"report:        {run_dir / 'report.md'}" in proc.stdout
    assert f"log:           {run_dir / 'logs' / 'run.log'}" in proc.stdout

    # What the terminal shows is for a person: the stages, their progress and headlines;
    # the libraries' output is in the log file.
    assert "[sft] step" in proc.stdout and "[eval] done in" in proc.stdout
    # (a progress line every tracking.progress_every_s per stage, so a slow machine shows more of them)
    assert len(shown.splitlines()) < 150, shown
    for noise in ("DeprecationWarning", "(RayTrainWorker", "\x1b[36m", "[DeepSpeed]", "INFO"):
        assert noise not in shown, noise
    log = (run_dir / "logs" / "run.log").read_text()
    assert "[sft] step" in log and len(log.splitlines()) > len(proc.stdout.splitlines())

    # the resolved recipe is kept, every path absolute
    recipe = (run_dir / "recipe.yaml").read_text()
    assert "name: quickstart" in recipe and f"output_dir: {repo / 'runs'}" in recipe
    resolved = yaml.safe_load(recipe)

    # metrics: SFT loss per logged step, falling; eval aggregates
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sft = [r for r in rows if r["stage"] == "sft"]
    assert len(sft) >= 10
    # the NLL of the constrained policy (sft.constrained_loss): it starts below log(12) and falls
    assert sft[-1]["loss"] < 0.9 * sft[0]["loss"] < math.log(12), (sft[0]["loss"], sft[-1]["loss"])
    assert any(r["stage"] == "eval" for r in rows)
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))

    # checkpoints and the exported policy
    assert list((run_dir / "sft").glob("checkpoint_*/trainer_state.json"))
    assert (run_dir / "sft" / "final" / "model.safetensors").is_file()

    # the reward-model stage ran and reported its quality
    quality = json.loads((run_dir / "rm" / "quality.json").read_text())
    assert quality["pair_accuracy"]["all"]["pairs"] > 100
    # the reward models rank a request's pages as the users' true expected clicks do (README: 0.66)
    assert quality["simulator"]["page_spearman"] > 0.5, quality["simulator"]
    assert (run_dir / "rm" / "final" / "reward_model.json").is_file()
    # ... and how well the recipe's reward setting credits the SFT policy's own pages, against the page
    # reward alone on every token (measured: 0.470 and 0.123 on 200 training requests x 4 pages)
    credit = quality["credit_fidelity"]["settings"]
    assert quality["credit_fidelity"]["requests"] == 200
    assert credit["recipe"]["pooled"] > credit["page reward only"]["pooled"] + 0.2, credit

    # the RL stage: every step logged its phases, rewards, KL and a verified weight sync
    steps = resolved["rl"]["steps"]
    rl = [r for r in rows if r["stage"] == "rl" and "reward_total" in r]
    assert len(rl) == steps
    for r in rl:
        assert all(r[f"seconds_{p}"] > 0 for p in ("generate", "reward", "experience", "train", "sync"))
        assert r["sync_delta_max"] < 1e-4  # rl.sync.max_logprob_delta
        # rl.overlap: after the first step every step trains on pages sampled one version back, so
        # sampled and trainer logprobs agree only on the first step's (the importance ratio corrects
        # the rest)
        assert r["staleness_max"] == (0 if r is rl[0] else 1), (r["step"], r["staleness_max"])
        if r is rl[0]:
            assert r["logprob_mismatch_max"] < 1e-4
        assert r["valid_rate"] == 1.0 and r["pages"] == 128
        assert all(math.isfinite(r[k]) for k in ("kl", "entropy", "grad_norm", "reward_page", "reward_item"))
    assert rl[-1]["version"] == steps and rl[-1]["kl"] > 0
    assert (run_dir / "rl" / "final" / "model.safetensors").is_file()
    assert "[rl] done in" in proc.stdout

    # the evaluation table: every method scored on the same held-out requests; constrained
    # decoding gives only valid pages; the oracle is the ceiling; the SFT policy is ahead of
    # random (by far more than the standard errors) and of the logging policy it cloned.
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    methods = results["methods"]
    assert {"sft", "rl", "random", "popularity", "logging", "oracle"} <= set(methods)
    assert methods["rl"]["valid_rate"] == 1.0 and "sft" in results["paired"]["rl"]
    # RL on the learned mixed-grained rewards is ahead of the SFT policy it started from by more
    # than twice the paired standard error (measured: +0.019 +- 0.008 expected clicks)
    vs_sft = results["paired"]["rl"]["sft"]
    assert vs_sft["expected_clicks_diff"] > 2 * vs_sft["expected_clicks_diff_se"], vs_sft
    clicks = {name: m["expected_clicks"] for name, m in methods.items()}
    # ... and both learned policies are ahead of the one-line rankers over what the prompt shows
    # (measured: 1.120 and 1.128 against SFT's 1.137 and RL's 1.156)
    for heuristic in ("history_category", "history_category_capped"):
        assert min(clicks["sft"], clicks["rl"]) > clicks[heuristic], clicks
    assert methods["sft"]["valid_rate"] == 1.0
    assert all(clicks["oracle"] >= value for value in clicks.values())
    assert clicks["logging"] > clicks["random"]
    se = {name: m["expected_clicks_se"] for name, m in methods.items()}
    assert clicks["sft"] > clicks["random"] + 3 * (se["sft"] + se["random"]), clicks
    assert clicks["sft"] > clicks["logging"], clicks
    # ... and ahead of logging on the same requests by more than twice the paired standard error
    vs_logging = results["paired"]["sft"]["logging"]
    assert vs_logging["expected_clicks_diff"] > 2 * vs_logging["expected_clicks_diff_se"], vs_logging
    report = (run_dir / "report.md").read_text()
    assert f"{clicks['sft']:.3f} ± " in report  # the report's table shows it
    assert list((run_dir / "plots").glob("*.png")) and (run_dir / "plots" / "rl_curves.png").is_file()
    assert "## RL learning curves" in report
    # the held-out curve inside RL (rl.eval_every): its last point is the eval stage's RL figure and
    # its first the SFT policy's, on the same requests; it cost little of the RL time
    curve = {r["step"]: r for r in rows if r["stage"] == "rl" and "eval/ndcg" in r}
    assert min(curve) == 0 and max(curve) == steps, sorted(curve)
    for step, method in ((steps, "rl"), (0, "sft")):
        for metric in ("ndcg", "expected_clicks", "valid_rate"):
            assert curve[step][f"eval/{metric}"] == pytest.approx(methods[method][metric], abs=1e-9), (step, metric)
    assert sum(r["seconds_eval"] for r in curve.values()) < 0.05 * sum(r["step_s"] for r in rl)
    assert "Held-out evaluation inside RL" in report and "## IPS on the run's own logs" in report
    # where the time went: one finished attempt per stage, and the RL steps by phase
    from pagerl.tracking.timings import read_stage_times
    times = read_stage_times(run_dir)
    assert {stage: [a["outcome"] for a in attempts] for stage, attempts in times.items()} == {
        stage: ["finished"] for stage in ("synth", "sft", "rm", "rl", "eval")}
    assert "## Where the time went" in report and f"The {steps} RL steps' " in report

    # The same command again continues the run: every stage is complete, so each is
    # skipped, nothing is appended to the metrics, and the report is rewritten from the run dir.
    metrics_before = (run_dir / "metrics.jsonl").read_text()
    again = typed(command, repo, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    for stage in ("synth", "sft", "rm", "rl", "eval"):
        assert f"[{stage}] already complete" in again.stdout, again.stdout
    assert (run_dir / "metrics.jsonl").read_text() == metrics_before
    assert read_stage_times(run_dir) == times  # a skipped stage adds no attempt

    def without_time(text):  # the report's second line says when it was written
        return [line for line in text.splitlines() if not line.startswith("Run directory `")]

    assert without_time((run_dir / "report.md").read_text()) == without_time(report)
