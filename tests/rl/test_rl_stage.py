"""The RL stage on a real local Ray cluster with real DeepSpeed: learning signal, ZeRO-3, sync checks.

One small world and one briefly trained SFT policy are shared by the module;
each test runs the RL roles on copies of them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from pagerl import pipeline
from pagerl.config.load import load_recipe
from pagerl.data.io import read_impressions
from pagerl.distributed import ray_cluster
from pagerl.rl.controller import RLController
from pagerl.rl.stage import run_rl_stage
from pagerl.rl.weight_sync import WeightSyncError
from pagerl.tracking.metrics import read_metrics

pytestmark = pytest.mark.slow

# Eight requests, every step all of them: the step's mean reward then moves only with the policy.
FIXED_REQUESTS = 8
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl")
    recipe, _ = load_recipe(REPO / "recipes" / "ci_small.yaml", [
        f"run.output_dir={out}", "run.name=base", "run.stages=[synth,sft]", "tracking.report=false",
        "sim.num_train_requests=200", "sim.num_eval_requests=10", "sft.max_steps=6",
        "rewards.source=simulator", "rewards.cpus_per_worker=0.5",
        f"rl.requests_per_step={FIXED_REQUESTS}", "rl.rollout.samples_per_request=4", "rl.trainer.micro_batch_size=8",
        "rl.timeout_s=120",
    ])
    owned = ray_cluster.connect()
    try:
        pipeline.run(recipe)
        run_dir = pipeline.run_dir_of(recipe)
        impressions = read_impressions([str(run_dir / "data" / "train.jsonl")]).impressions[:FIXED_REQUESTS]
        yield recipe, run_dir, impressions
    finally:
        ray_cluster.shutdown(owned)


def _variant(base, name, **rl):
    recipe, run_dir, impressions = base
    nested = {k: v for k, v in rl.items() if isinstance(v, dict)}
    flat = {k: v for k, v in rl.items() if not isinstance(v, dict)}
    cfg = dataclasses.replace(recipe.rl, **flat)
    for section, values in nested.items():
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})
    new = dataclasses.replace(recipe, rl=cfg, run=dataclasses.replace(recipe.run, name=name))
    target = run_dir.parent / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(run_dir, target)
    (target / "metrics.jsonl").unlink(missing_ok=True)
    return new, target, impressions, str(target / "sft" / "final")


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_reward_rises_on_a_fixed_set_of_requests(base, algorithm):
    recipe, run_dir, impressions, policy = _variant(base, f"learn_{algorithm}", algorithm=algorithm, steps=16,
                                                    lr=2e-3, kl={"coef": 0.01})
    out = run_rl_stage(recipe, run_dir, impressions, policy)
    assert out["finished"] and (run_dir / "rl" / "final" / "model.safetensors").is_file()
    rows = [r for r in read_metrics(run_dir, stage="rl") if "reward_total" in r]
    assert len(rows) == 16
    first = sum(r["reward_total"] for r in rows[:4]) / 4
    last = sum(r["reward_total"] for r in rows[-4:]) / 4
    assert last > first + MARGIN[algorithm], [round(r["reward_total"], 3) for r in rows]
    for r in rows:
        # on-policy: the first minibatch's ratio is 1, rollout and trainer agree, every phase is timed
        assert r["logprob_mismatch_max"] < 1e-5 and r["sync_delta_max"] < 1e-5
        assert all(r[f"seconds_{p}"] > 0 for p in ("generate", "reward", "experience", "train", "sync"))
        assert r["valid_rate"] == 1.0 and r["pages"] == FIXED_REQUESTS * 4
    assert rows[0]["ratio_max"] == pytest.approx(1.0, abs=1e-5)
    if algorithm == "ppo":
        assert "value_loss" in rows[-1]


# The rise of the mean reward (page + items, simulator ground truth) of the last four steps over the
# first four, measured on this world and seed: grpo 1.24 -> 1.60 (+0.36), ppo 1.24 -> 1.55 (+0.31).
# The margin is under half of that.
MARGIN = {"grpo": 0.15, "ppo": 0.15}


def test_zero3_with_two_trainer_ranks_runs_steps_and_syncs(base):
    recipe, run_dir, impressions, policy = _variant(base, "zero3", steps=2, trainer={"zero_stage": 3, "num_ranks": 2})
    out = run_rl_stage(recipe, run_dir, impressions, policy)
    rows = [r for r in read_metrics(run_dir, stage="rl") if "reward_total" in r]
    assert out["finished"] and len(rows) == 2
    assert all(r["sync_delta_max"] < 1e-5 and r["version"] == i + 1 for i, r in enumerate(rows))
    assert json.loads((run_dir / "rl" / "summary.json").read_text())["steps"] == 2


def test_a_stale_rollout_policy_stops_the_run_naming_step_and_figure(base):
    """Weights that changed on the trainer but did not reach the rollout workers fail the sync check."""
    recipe, run_dir, impressions, policy = _variant(base, "stale", steps=1, lr=5e-2)
    controller = RLController(recipe, run_dir, policy, [imp.request for imp in impressions])
    try:
        controller.step(0)  # trains and syncs: the check passes
        assert controller.verify(0) < 1e-5
        # one more update without a sync: the rollout workers now hold stale weights
        batch = controller.last_batch
        controller.trainers.call_each("train", [(s, 1, 0.0, 5e-2) for s in controller.split(batch)])
        with pytest.raises(WeightSyncError, match=r"step 1: .*differ by up to .*rl.sync.max_logprob_delta"):
            controller.verify(1)
    finally:
        controller.shutdown()
