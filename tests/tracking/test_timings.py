"""The pipeline's record of each stage attempt's wall time (pagerl.tracking.timings), for a stage that raises.

Finished and stopped attempts are checked by the SFT resume test and the quickstart test; here a
stage that fails on bad input (the eval stage, which needs no Ray cluster) is on the record, and
its own error, not the record's, is what the caller sees.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pagerl.app.pipeline import run
from pagerl.app.recipes import load_recipe
from pagerl.data.errors import DataError
from pagerl.tracking.timings import read_stage_times

REPO = Path(__file__).resolve().parents[2]


def _failing_eval(tmp_path):
    bad = tmp_path / "eval.jsonl"
    bad.write_text("{not json\n")
    recipe, _ = load_recipe(REPO / "recipes" / "ci_small.yaml", [
        f"run.output_dir={tmp_path}", "run.name=x", "run.stages=[eval]", "tracking.report=false",
        "tracking.tensorboard=false", f"data.eval_files=[{bad}]", "eval.baselines=[random]",
        "eval.ips_check=false", "eval.obd_check=false"])
    return recipe


def test_a_stage_that_raises_is_recorded_as_failed(tmp_path):
    recipe = _failing_eval(tmp_path)
    for attempt in (1, 2):
        with pytest.raises(DataError, match="eval.jsonl line 1"):
            run(recipe)
        times = read_stage_times(tmp_path / "x")
        assert [a["outcome"] for a in times["eval"]] == ["failed"] * attempt
        assert all(a["seconds"] >= 0 for a in times["eval"])


def test_a_corrupt_record_does_not_hide_the_stages_own_error(tmp_path):
    recipe = _failing_eval(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "timings.json").write_text("{bad")
    with pytest.warns(RuntimeWarning, match=r"\[eval\] the failed attempt is not in the timing record: .*timings\.json"):
        with pytest.raises(DataError, match="eval.jsonl line 1"):
            run(recipe)
