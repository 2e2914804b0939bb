"""W&B and MLflow sinks beside JSONL and TensorBoard, each read back with its own package's reader.

One run directory is logged to once for the module (MLflow creating its
SQLite store and W&B starting its service cost seconds each): two loggers of
one stage (the second a resumed attempt that re-logs two steps), a second
stage with nested metric names, a NaN, and a metric name MLflow refuses.
Nothing here reaches the network: W&B runs offline, MLflow's store is a file
in the run directory, and MLflow's usage telemetry is off for the module.
"""

from __future__ import annotations

import importlib.abc
import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from pagerl.app.recipes import load_recipe
from pagerl.config.load import recipe_to_yaml
from pagerl.config.schema import TrackingConfig
from pagerl.errors import RecipeError
from pagerl.tracking.metrics import METRICS_FILE, MetricsLogger, read_metrics
from pagerl.tracking.sinks import MLFLOW_DIR, WANDB_DIR, SinkStartError, mlflow_default_uri

REPO = Path(__file__).resolve().parents[2]
CI_RECIPE = REPO / "recipes" / "ci_small.yaml"
TRACKERS = TrackingConfig(wandb=True, mlflow=True)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A run directory written by loggers with every sink on; the warnings they gave; seconds taken."""
    run_dir = tmp_path_factory.mktemp("tracked") / "myrun"
    run_dir.mkdir()
    recipe, _ = load_recipe(CI_RECIPE)
    (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    seconds: Dict[str, float] = {}
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        warnings.simplefilter("always")
        start = time.perf_counter()
        with MetricsLogger.from_config(run_dir, TRACKERS) as first:
            seconds["open"] = time.perf_counter() - start
            for step in range(4):
                first.log("sft", step, {"loss": math.nan if step == 2 else 2.0 / (step + 1), "lr": 1e-3 * (step + 1)})
            first.log("eval", 3, {"sft/ndcg": 0.625, "sft/expected_clicks": 1.125})
            seconds["first"] = time.perf_counter() - start
        # The stage was interrupted after step 3 and resumed from its step-1 checkpoint.
        with MetricsLogger.from_config(run_dir, TRACKERS) as second:
            for step in (2, 3, 4):
                second.log("sft", step, {"loss": 0.25 * step, "lr": 5e-4})
            second.log("eval", 4, {"ndcg@5": 0.5})  # MLflow refuses '@' in a metric name
            second.log("sft", 5, {"loss": 0.2, "lr": 5e-4})
        seconds["total"] = time.perf_counter() - start
    print(f"\nsink timings (s): {({k: round(v, 2) for k, v in seconds.items()})}")
    return {"run_dir": run_dir, "recipe": recipe, "warnings": [w for w in caught], "seconds": seconds}


def _jsonl_points(run_dir: Path, stage: str, name: str) -> List[Tuple[int, float]]:
    """(step, value) of every finite value JSONL holds for one metric, in file order."""
    return [(r["step"], r[name]) for r in read_metrics(run_dir, stage) if r.get(name) is not None]


# MLflow


def _mlflow_runs(run_dir: Path) -> Dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_default_uri(run_dir))
    experiment = client.get_experiment_by_name("pagerl")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["myrun-eval", "myrun-sft"]  # the resumed sft continued its run
    return {"client": client, **{r.data.tags["pagerl.stage"]: r for r in runs}}


def test_mlflow_store_in_the_run_dir_holds_what_jsonl_holds(tracked):
    run_dir = tracked["run_dir"]
    assert (run_dir / MLFLOW_DIR / "mlflow.db").is_file()
    found = _mlflow_runs(run_dir)
    client, sft, eval_run = found["client"], found["sft"], found["eval"]

    def history(run, key):
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    for name in ("loss", "lr"):
        # Step 5 was logged after MLflow had been dropped (the next test).
        before_failure = [p for p in _jsonl_points(run_dir, "sft", name) if p[0] < 5]
        assert history(sft, f"sft/{name}") == sorted(before_failure)
    assert (2, math.nan) not in history(sft, "sft/loss") and len(history(sft, "sft/loss")) == 6
    assert history(eval_run, "eval/sft/ndcg") == [(3, 0.625)]
    assert history(eval_run, "eval/sft/expected_clicks") == [(3, 1.125)]
    assert sft.info.status == eval_run.info.status == "FINISHED"
    recipe = tracked["recipe"]
    params = sft.data.params
    assert params["sft.lr"] == str(recipe.sft.lr) and params["run.name"] == recipe.run.name
    assert params["run.stages"] == json.dumps(list(recipe.run.stages))
    assert sft.data.tags["pagerl.run_dir"] == str(run_dir)


def test_a_sink_failing_mid_run_warns_once_and_jsonl_keeps_every_value(tracked):
    run_dir = tracked["run_dir"]
    failed = [w for w in tracked["warnings"] if "tracking.mlflow" in str(w.message)]
    assert len(failed) == 1 and issubclass(failed[0].category, RuntimeWarning)
    assert "ndcg@5" in str(failed[0].message) and METRICS_FILE in str(failed[0].message)
    # The run went on: JSONL has the refused value and the steps after it; MLflow stopped at the failure.
    assert _jsonl_points(run_dir, "eval", "ndcg@5") == [(4, 0.5)]
    assert _jsonl_points(run_dir, "sft", "loss")[-1] == (5, 0.2)
    found = _mlflow_runs(run_dir)
    assert 5 not in [m.step for m in found["client"].get_metric_history(found["sft"].info.run_id, "sft/loss")]


# Weights & Biases


def _wandb_records(run_dir: Path) -> List[List[Dict[str, Any]]]:
    """Every offline run's records, read by W&B's own reader of its transaction log (`wandb leet inspect`).

    The reader runs with WANDB_MODE=offline so its CLI analytics stay off the network too.
    """
    runs = sorted((run_dir / WANDB_DIR).glob("offline-run-*"))
    env = {**os.environ, "WANDB_MODE": "offline"}
    readers = [subprocess.Popen([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for path in runs]
    records = []
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err
        records.append([json.loads(line) for line in out.splitlines() if line.strip()])
    return records


def test_wandb_offline_runs_in_the_run_dir_hold_what_jsonl_holds(tracked):
    run_dir, recipe = tracked["run_dir"], tracked["recipe"]
    by_stage: Dict[str, List[Dict[str, Any]]] = {}
    for records in _wandb_records(run_dir):
        (header,) = [r["run"] for r in records if r["type"] == "run"]
        assert header["display_name"] == f"myrun-{header['job_type']}" and header["run_group"] == "myrun"
        assert header["project"] == "pagerl" and header["telemetry"]["feature"]["offline"]
        config = header["config"]["update"]
        assert config["sft.lr"] == recipe.sft.lr and config["run.stages"] == json.dumps(list(recipe.run.stages))
        assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]
        rows = [r["history"]["item"] for r in records if r["type"] == "history"]
        by_stage.setdefault(header["job_type"], []).append({"start": header["start_time"], "rows": rows})
    # One W&B run per logger and stage: sft twice (the resumed attempt), eval twice.
    assert {stage: len(runs) for stage, runs in by_stage.items()} == {"sft": 2, "eval": 2}

    def points(stage, name):
        rows = [row for run in sorted(by_stage[stage], key=lambda r: r["start"]) for row in run["rows"]]
        return [(row[f"{stage}/step"], row[f"{stage}/{name}"]) for row in rows if f"{stage}/{name}" in row]

    for name in ("loss", "lr"):
        assert points("sft", name) == _jsonl_points(run_dir, "sft", name)
    for name in ("sft/ndcg", "sft/expected_clicks", "ndcg@5"):
        assert points("eval", name) == _jsonl_points(run_dir, "eval", name)


# Defaults, recipe checks, startup errors


def test_defaults_are_off_and_a_logger_writes_jsonl_and_tensorboard_only(tmp_path):
    cfg = TrackingConfig()
    assert (cfg.wandb, cfg.mlflow, cfg.wandb_mode, cfg.mlflow_uri) == (False, False, "offline", "")
    with MetricsLogger.from_config(tmp_path, cfg) as logger:
        assert logger.sink_names == ("tensorboard",)
        logger.log("sft", 0, {"loss": 1.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE, "tensorboard"]
    with MetricsLogger(tmp_path / "plain", tensorboard=False) as logger:
        assert logger.sink_names == ()


class _Hide(importlib.abc.MetaPathFinder):
    """An import finder that says the named top-level packages are not installed."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def _without(monkeypatch, *names: str) -> None:
    monkeypatch.setattr(sys, "meta_path", [_Hide(*names), *sys.meta_path])
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_a_sink_whose_package_is_missing_fails_at_load_naming_the_key_and_the_extra(monkeypatch):
    _without(monkeypatch, "wandb", "mlflow", "sqlalchemy", "alembic")
    with pytest.raises(RecipeError, match=r"override 'tracking.wandb=true'.*'tracking.wandb': is on, but wandb "
                                          r"cannot be imported: .*pip install -e '\.\[tracking\]'"):
        load_recipe(CI_RECIPE, ["tracking.wandb=true"])
    with pytest.raises(RecipeError, match=r"'tracking.mlflow': is on, but mlflow, sqlalchemy, alembic cannot"):
        load_recipe(CI_RECIPE, ["tracking.mlflow=true"])
    load_recipe(CI_RECIPE)  # off by default: nothing to install


def test_mlflow_with_a_server_uri_does_not_need_the_sqlite_store(monkeypatch):
    _without(monkeypatch, "sqlalchemy", "alembic")
    load_recipe(CI_RECIPE, ["tracking.mlflow=true", "tracking.mlflow_uri=http://127.0.0.1:5000"])
    with pytest.raises(RecipeError, match=r"'tracking.mlflow': is on, but sqlalchemy, alembic cannot"):
        load_recipe(CI_RECIPE, ["tracking.mlflow=true", "tracking.mlflow_uri=sqlite:////tmp/x.db"])


@pytest.mark.parametrize("override, key", [
    ("tracking.wandb_mode=disabled", "tracking.wandb_mode"),
    ("tracking.mlflow_uri=mlruns", "tracking.mlflow_uri"),
    ("tracking.mlflow_uri=sqlite:///relative.db", "tracking.mlflow_uri"),
    ("tracking.wandb_project=' '", "tracking.wandb_project"),
])
def test_bad_tracking_keys_fail_at_load(override, key):
    with pytest.raises(RecipeError, match=f"'{key}'"):
        load_recipe(CI_RECIPE, [override])


def test_a_sink_that_cannot_start_is_an_error_before_anything_is_written(tmp_path):
    with pytest.raises(SinkStartError, match=r"tracking.wandb: the wandb sink could not start.*wandb_mode"):
        MetricsLogger.from_config(tmp_path, TrackingConfig(wandb=True, wandb_mode="disabled"))
    assert not (tmp_path / METRICS_FILE).exists()
