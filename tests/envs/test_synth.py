"""The synth stage: valid files, repeatable, separate train/eval streams, fast."""

from __future__ import annotations

import json
import time

import pytest

from pagerl.config.schema import SimConfig
from pagerl.data import read_impressions
from pagerl.envs.synth import load_synth_meta, synthesize
from pagerl.sim import Simulator, World

SMALL = dict(num_items=120, num_users=40, num_train_requests=150, num_eval_requests=40)


def test_synthesized_files_load_cleanly_and_carry_stats(tmp_path):
    calls = []
    out = synthesize(SimConfig(**SMALL), 0, tmp_path, progress=lambda split, done, total: calls.append((split, done, total)))
    train = read_impressions(out["train_path"], on_bad_row="error")
    evals = read_impressions(out["eval_path"], on_bad_row="error")
    assert (train.num_rows, evals.num_rows) == (150, 40)
    assert calls[-1] == ("eval", 40, 40) and ("train", 150, 150) in calls
    stats = out["stats"]["train"]
    assert stats["num_requests"] == 150
    mean_clicks = sum(i.page_outcome["clicks"] for i in train.impressions) / 150
    assert stats["mean_clicks"] == pytest.approx(mean_clicks)
    # Sampled clicks agree with the logging pages' exact expectation (loosely: 150 draws).
    assert abs(stats["mean_clicks"] - stats["mean_logging_expected_clicks"]) < 0.25
    assert all(0 < i.propensity <= 1 for i in train.impressions)
    meta = load_synth_meta(tmp_path)
    assert meta["seed"] == 0 and meta["sim"]["num_items"] == 120 and meta["train_path"] == out["train_path"]


def test_eval_requests_can_be_scored_by_a_rebuilt_world(tmp_path):
    cfg = SimConfig(**SMALL)
    out = synthesize(cfg, 3, tmp_path, progress=False)
    sim = Simulator(World.from_config(cfg, 3))
    for imp in read_impressions(out["eval_path"]).impressions:
        score = sim.score_page(imp.request, imp.page)
        assert score.valid
        assert sim.logging_propensity(imp.request, imp.page) == pytest.approx(imp.propensity)


def test_same_seed_same_bytes_and_independent_splits(tmp_path):
    cfg = SimConfig(**SMALL)
    a = synthesize(cfg, 1, tmp_path / "a", progress=False)
    b = synthesize(cfg, 1, tmp_path / "b", progress=False)
    more_train = synthesize(SimConfig(**{**SMALL, "num_train_requests": 300}), 1, tmp_path / "c", progress=False)
    other_seed = synthesize(cfg, 2, tmp_path / "d", progress=False)
    read = lambda p: open(p, "rb").read()  # noqa: E731
    assert read(a["train_path"]) == read(b["train_path"]) and read(a["eval_path"]) == read(b["eval_path"])
    # The eval split has its own stream: more training data does not change it.
    assert read(more_train["eval_path"]) == read(a["eval_path"])
    assert read(other_seed["eval_path"]) != read(a["eval_path"])
    # ... and it is not a replay of the training stream.
    first_train = json.loads(read(a["train_path"]).splitlines()[0])
    first_eval = json.loads(read(a["eval_path"]).splitlines()[0])
    assert first_eval["request_id"].startswith("eval-") and first_train["request_id"].startswith("train-")
    assert first_eval["candidates"] != first_train["candidates"]


def test_parquet_output(tmp_path):
    out = synthesize(SimConfig(**SMALL), 0, tmp_path, fmt="parquet", progress=False)
    assert out["train_path"].endswith("train.parquet")
    assert read_impressions(out["train_path"], on_bad_row="error").num_rows == 150
    with pytest.raises(ValueError, match="fmt must be one of"):
        synthesize(SimConfig(**SMALL), 0, tmp_path, fmt="csv")


def test_quickstart_size_is_fast(tmp_path):
    start = time.perf_counter()
    out = synthesize(SimConfig(), 0, tmp_path, progress=False)  # 3000 train + 200 eval
    assert time.perf_counter() - start < 15.0
    assert out["stats"]["train"]["num_requests"] == 3000 and out["stats"]["eval"]["num_requests"] == 200
