"""The main job end to end: `pagerl run recipes/quickstart.yaml`, asserting on what it logged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_end_to_end(tmp_path):
    proc = subprocess.run(
        ["pagerl", "run", str(REPO / "recipes/quickstart.yaml"), f"run.output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    run_dir = tmp_path / "quickstart"
    assert f"run directory: {run_dir}" in proc.stdout
    assert f"report:        {run_dir / 'report.md'}" in proc.stdout
    assert "[sft] step" in log  # progress was shown

    # the resolved recipe is kept
    assert "name: quickstart" in (run_dir / "recipe.yaml").read_text()

    # metrics: SFT loss per logged step, falling; eval aggregates
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sft = [r for r in rows if r["stage"] == "sft"]
    assert len(sft) >= 10
    assert sft[-1]["loss"] < 0.8 * sft[0]["loss"]
    assert any(r["stage"] == "eval" for r in rows)
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))

    # checkpoints and the exported policy
    assert list((run_dir / "sft").glob("checkpoint_*/trainer_state.json"))
    assert (run_dir / "sft" / "final" / "model.safetensors").is_file()

    # the reward-model stage ran and reported its quality
    quality = json.loads((run_dir / "rm" / "quality.json").read_text())
    assert quality["pair_accuracy"]["all"]["pairs"] > 100
    assert (run_dir / "rm" / "final" / "reward_model.json").is_file()

    # the evaluation table: every method scored on the same held-out requests; constrained
    # decoding gives only valid pages; the oracle is the ceiling; the SFT policy is ahead of
    # random (by far more than the standard errors) and of the logging policy it cloned.
    methods = json.loads((run_dir / "eval" / "results.json").read_text())["methods"]
    assert {"sft", "random", "popularity", "logging", "oracle"} <= set(methods)
    clicks = {name: m["expected_clicks"] for name, m in methods.items()}
    assert methods["sft"]["valid_rate"] == 1.0
    assert all(clicks["oracle"] >= value for value in clicks.values())
    assert clicks["logging"] > clicks["random"]
    se = {name: m["expected_clicks_se"] for name, m in methods.items()}
    assert clicks["sft"] > clicks["random"] + 3 * (se["sft"] + se["random"]), clicks
    assert clicks["sft"] > clicks["logging"], clicks
    # ... and ahead of logging on the same requests by more than twice the paired standard error
    vs_logging = json.loads((run_dir / "eval" / "results.json").read_text())["paired"]["logging"]
    assert vs_logging["expected_clicks_diff"] > 2 * vs_logging["expected_clicks_diff_se"], vs_logging
    assert f"{clicks['sft']:.3f} ± " in (run_dir / "report.md").read_text()  # the report's table shows it

    report = (run_dir / "report.md").read_text()
    assert "sft" in report and list((run_dir / "plots").glob("*.png"))
