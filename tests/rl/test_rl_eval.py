"""The held-out evaluation inside RL (rl.eval_every): the curve is the eval stage's number, step by step.

A real run on a local Ray cluster (synth, a short SFT, RL with the
simulator's reward, eval): its last in-RL point must equal what the eval
stage reports for the saved RL policy, and its step-0 point what the eval
stage reports for the SFT policy RL started from, on the same held-out
requests -- the check that the curve shows the policy being trained, decoded
and scored the way the eval stage does it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pagerl.app.recipes import load_recipe
from pagerl.errors import RecipeError
from pagerl.eval.scoring import METRICS
from pagerl.tracking.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("override, key", [
    ("rl.eval_every=-1", "rl.eval_every"),
    ("rl.eval_requests=-2", "rl.eval_requests"),
])
def test_bad_eval_keys_are_refused_naming_the_key(override, key):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        load_recipe(REPO / "recipes" / "ci_small.yaml", ["run.name=x", override])


def test_eval_every_without_held_out_data_is_refused_naming_the_key(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("")
    with pytest.raises(RecipeError, match=r"rl\.eval_every.*held-out"):
        load_recipe(REPO / "recipes" / "ci_small.yaml", [
            "run.name=x", "run.stages=[sft,rl]", f"data.train_files=[{train}]", "rl.eval_every=1"])
    recipe, _ = load_recipe(REPO / "recipes" / "ci_small.yaml", [
        "run.name=x", "run.stages=[sft,rl]", f"data.train_files=[{train}]", "rl.eval_every=0"])
    assert recipe.rl.eval_every == 0


def test_ci_small_and_quickstart_turn_it_on():
    for name in ("ci_small", "quickstart"):
        recipe, _ = load_recipe(REPO / "recipes" / f"{name}.yaml", ["run.name=x"])
        assert recipe.rl.eval_every > 0, name


@pytest.mark.slow
def test_the_last_in_rl_point_is_the_eval_stages_figure_for_the_rl_policy(tmp_path):
    from pagerl.app import pipeline
    from pagerl.distributed import ray_cluster

    steps = 3
    recipe, _ = load_recipe(REPO / "recipes" / "ci_small.yaml", [
        f"run.output_dir={tmp_path}", "run.name=rl_eval", "run.stages=[synth,sft,rl,eval]",
        "sim.num_train_requests=120", "sim.num_eval_requests=10", "sft.max_steps=4",
        "rewards.source=simulator", "rewards.cpus_per_worker=0.25",
        # two rollout workers and chunks of 4: the held-out chunks are spread over both and put back in order
        "rl.rollout.num_workers=2", "rl.rollout.cpus_per_worker=0.25", "eval.batch_size=4",
        f"rl.steps={steps}", "rl.eval_every=2", "rl.eval_requests=10", "eval.num_requests=10",
        "rl.overlap=true", "rl.lr=5e-3", "rl.requests_per_step=8", "rl.trainer.micro_batch_size=8",
        "rl.timeout_s=120", "eval.baselines=[random]", "eval.bootstrap_resamples=0",
    ])
    owned = ray_cluster.connect()
    try:
        pipeline.run(recipe)
    finally:
        ray_cluster.shutdown(owned)
    run_dir = pipeline.run_dir_of(recipe)
    rows = {r["step"]: r for r in read_metrics(run_dir, stage="rl") if "eval/ndcg" in r}
    # step 0 (the SFT policy), every rl.eval_every steps, and the last step
    assert sorted(rows) == [0, 2, 3]
    import json

    results = json.loads((run_dir / "eval" / "results.json").read_text())
    for step, method in ((steps, "rl"), (0, "sft")):
        table = results["methods"][method]
        assert rows[step]["eval/requests"] == table["count"] == 10
        for metric in METRICS:
            if table[metric] is not None:
                assert rows[step][f"eval/{metric}"] == pytest.approx(table[metric], abs=1e-12), (step, metric)
        assert rows[step]["eval/expected_clicks_se"] == pytest.approx(table["expected_clicks_se"], abs=1e-12)
    # the cost is its own phase: timed on evaluating steps, (almost) nothing on the others
    every = {r["step"]: r for r in read_metrics(run_dir, stage="rl") if "reward_total" in r}
    assert every[2]["seconds_eval"] > 0 and every[3]["seconds_eval"] > 0 and rows[0]["seconds_eval"] > 0
    assert every[1]["seconds_eval"] < 0.01 and "eval/ndcg" not in every[1]
    # through the tracking path: TensorBoard has the curve, the report plots and tabulates it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert any(t.endswith("eval/ndcg") and t.startswith("rl") for t in tags), sorted(tags)
    report = (run_dir / "report.md").read_text()
    assert "Held-out evaluation inside RL" in report and "seconds_eval" in report
    final = f"{rows[steps]['eval/ndcg']:.3f} ± {rows[steps]['eval/ndcg_se']:.3f}"
    assert final in report
    assert "Held-out evaluation inside RL" in (run_dir / "report.html").read_text()
