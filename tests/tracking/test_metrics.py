"""MetricsLogger: JSONL flushed per call and readable back, TensorBoard scalars, non-finite values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pagerl.config.schema import TrackingConfig
from pagerl.tracking.metrics import METRICS_FILE, MetricsLogger, metric_series, read_metrics


def _scalars(run_dir, tag):
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return None
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_each_call_is_one_flushed_json_line_readable_while_open(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log("sft", 0, {"loss": 2.5, "lr": np.float32(1e-3)})
    # Read while the logger is still open: a crash right now would lose nothing.
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert len(lines) == 1
    first = json.loads(lines[0])
    assert first["stage"] == "sft" and first["step"] == 0 and first["loss"] == 2.5
    assert first["lr"] == pytest.approx(1e-3)
    assert isinstance(first["time"], float)
    logger.log("sft", 10, {"loss": torch.tensor(1.25)})
    logger.log("eval", 10, {"sft/ndcg": 0.5})
    assert len((tmp_path / METRICS_FILE).read_text().splitlines()) == 3
    logger.close()

    records = read_metrics(tmp_path)
    assert [(r["stage"], r["step"]) for r in records] == [("sft", 0), ("sft", 10), ("eval", 10)]
    assert [r["loss"] for r in read_metrics(tmp_path, stage="sft")] == [2.5, 1.25]
    assert read_metrics(tmp_path / "missing") == []


def test_tensorboard_holds_the_scalars_under_stage_slash_name(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        for step in (0, 5, 10):
            logger.log("sft", step, {"loss": 3.0 - step / 10})
        logger.log("eval", 0, {"sft/expected_clicks": 1.5})
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    loss = _scalars(tmp_path, "sft/loss")
    assert [s for s, _ in loss] == [0, 5, 10]
    assert [v for _, v in loss] == pytest.approx([3.0, 2.5, 2.0])
    assert _scalars(tmp_path, "eval/sft/expected_clicks") == [(0, pytest.approx(1.5))]


def test_nonfinite_values_are_null_counted_warned_and_kept_out_of_tensorboard(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log("sft", 0, {"loss": 1.0})
        with pytest.warns(RuntimeWarning, match="sft/loss"):
            logger.log("sft", 1, {"loss": float("nan"), "grad_norm": 2.0})
        # Warned once per metric, but every value is counted.
        logger.log("sft", 2, {"loss": math.inf})
        assert logger.nonfinite_count == 2
    records = read_metrics(tmp_path)
    assert records[1]["loss"] is None and records[1]["nonfinite"] == ["loss"]
    assert records[1]["grad_norm"] == 2.0
    assert records[2]["loss"] is None
    assert "nonfinite" not in records[0]
    # JSON stays strict JSON: no NaN / Infinity tokens.
    text = (tmp_path / METRICS_FILE).read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert [s for s, _ in _scalars(tmp_path, "sft/loss")] == [0]
    assert metric_series(records, "sft", "loss") == ([0, 1, 2], [1.0, None, None])


@pytest.mark.parametrize(
    "stage, step, metrics, match",
    [
        ("", 0, {"loss": 1.0}, "stage"),
        ("a/b", 0, {"loss": 1.0}, "stage"),
        ("sft", -1, {"loss": 1.0}, "step"),
        ("sft", 1.5, {"loss": 1.0}, "step"),
        ("sft", 0, {"loss": "1.0"}, "sft/loss"),
        ("sft", 0, {"loss": [1.0]}, "sft/loss"),
        ("sft", 0, {"step": 1.0}, "reserved"),
        ("sft", 0, {"": 1.0}, "names"),
    ],
)
def test_bad_calls_raise_a_clear_error(tmp_path, stage, step, metrics, match):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(ValueError, match=match):
            logger.log(stage, step, metrics)
    assert read_metrics(tmp_path) == []


def test_disabled_logger_validates_but_writes_nothing(tmp_path):
    run_dir = tmp_path / "rank1"
    with MetricsLogger.from_config(run_dir, TrackingConfig(), enabled=False) as logger:
        logger.log("sft", 0, {"loss": 1.0})
        with pytest.raises(ValueError):
            logger.log("sft", -3, {"loss": 1.0})
    assert not run_dir.exists()


def test_closed_logger_refuses_and_close_twice_is_fine(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.close()
    logger.close()
    with pytest.raises(ValueError, match="closed"):
        logger.log("sft", 0, {"loss": 1.0})


def test_resume_appends_and_series_keeps_the_last_value_per_step(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as first:
        for step in (0, 2, 4, 6):
            first.log("sft", step, {"loss": 10.0 + step})
    # The stage crashed after step 6 and resumed from its step-2 checkpoint.
    with MetricsLogger(tmp_path, tensorboard=False) as second:
        for step in (4, 6, 8):
            second.log("sft", step, {"loss": float(step)})
    records = read_metrics(tmp_path, stage="sft")
    assert len(records) == 7
    assert metric_series(records, "sft", "loss") == ([0, 2, 4, 6, 8], [10.0, 12.0, 4.0, 6.0, 8.0])


def test_truncated_last_line_is_dropped_but_a_damaged_middle_line_is_an_error(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log("sft", 0, {"loss": 1.0})
        logger.log("sft", 1, {"loss": 0.5})
    path = tmp_path / METRICS_FILE
    good = path.read_text()
    path.write_text(good + '{"stage": "sft", "step": 2, "lo')
    with pytest.warns(RuntimeWarning, match="truncated"):
        assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]
    lines = good.splitlines()
    path.write_text("\n".join([lines[0], "not json", lines[1]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(tmp_path)
