"""The run report from a hand-made run directory: sections, tables, PNG plots, skip notes."""

from __future__ import annotations

import json

import pytest
from matplotlib.image import imread

from pagerl.app.report import write_report
from pagerl.tracking.metrics import MetricsLogger

RECIPE = """\
run:
  name: handmade
  seed: 7
  stages: [synth, sft, eval]
sim:
  num_items: 400
  page_size: 5
model:
  source: tiny
  tiny:
    hidden_size: 64
base: null
"""

RESULTS = {
    "k": 5,
    "num_requests": 200,
    "decoding": "greedy",
    "model_dir": None,
    "methods": {
        "random": {"ndcg": 0.31, "ndcg_se": 0.01, "expected_clicks": 0.82, "expected_clicks_se": 0.02,
                   "valid_rate": 1.0, "diversity": 0.7, "count": 200, "valid_count": 200},
        "sft": {"ndcg": 0.55, "ndcg_se": 0.012, "expected_clicks": 1.21, "expected_clicks_se": 0.03,
                "valid_rate": 0.9, "diversity": None, "count": 200, "valid_count": 180},
        "oracle": {"ndcg": 0.97, "ndcg_se": 0.004, "expected_clicks": 1.64, "expected_clicks_se": 0.03,
                   "valid_rate": 1.0, "diversity": 0.8, "count": 200, "valid_count": 200},
    },
    "invalid_reasons": {"sft": {"duplicate": 12, "no_eos": 8}},
    "notes": ["`oracle`: 3 of 200 pages came from beam search."],
}


@pytest.fixture()
def run_dir(tmp_path):
    run = tmp_path / "handmade"
    run.mkdir()
    (run / "recipe.yaml").write_text(RECIPE)
    (run / "data").mkdir()
    (run / "data" / "stats.json").write_text(json.dumps(
        {"train": {"rows": 3000, "mean_clicks": 0.8123}, "eval": {"rows": 200, "mean_clicks": 0.79}}))
    with MetricsLogger(run, tensorboard=False) as logger:
        for step in range(0, 50, 5):
            logger.log("sft", step, {"loss": 4.0 / (1 + step)})
        logger.log("eval", 0, {"sft/ndcg": 0.55})
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(json.dumps(RESULTS))
    return run


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def test_report_has_every_section_with_tables_and_plots(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.md"
    text = path.read_text()
    assert text.startswith("# Run report: handmade\n")

    recipe = _section(text, "Recipe")
    assert "- **run**: name=handmade, seed=7, stages=[synth, sft, eval]" in recipe
    assert "tiny.hidden_size=64" in recipe

    data = _section(text, "Data")
    assert "| statistic   | train  | eval |" in data
    assert "| mean_clicks | 0.8123 | 0.79 |" in data

    sft = _section(text, "SFT learning curve")
    assert "![sft loss](plots/sft_loss.png)" in sft
    assert "| 10     | 0          | 45        | 4          | 0.08696   | 0.08696  |" in sft

    evaluation = _section(text, "Evaluation")
    assert "ndcg@5" in evaluation
    assert "| `sft`    | 0.550 ± 0.012 | 1.210 ± 0.030   | 0.900      |" in evaluation
    assert "model_dir" not in evaluation.splitlines()[2]  # None context values are left out
    assert "![Expected clicks and NDCG per method](plots/eval_bars.png)" in evaluation
    assert "Simulator.score_page(request, page, k=5)" in evaluation
    assert "pagerl.eval.scoring.aggregate" in evaluation
    assert "duplicate: 12, no_eos: 8" in evaluation
    assert "3 of 200 pages came from beam search" in evaluation

    # Markdown tables: every row of a table has the same number of cells.
    for block in text.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            assert len({row.count(" | ") for row in rows if not row.startswith("|-")}) == 1, block

    for name in ("sft_loss.png", "eval_bars.png"):
        png = run_dir / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = imread(png)
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert image[..., :3].std() > 0.01  # something was drawn


def test_missing_inputs_skip_their_sections_with_a_note(tmp_path):
    text = write_report(tmp_path).read_text()
    assert text.startswith(f"# Run report: {tmp_path.name}\n")
    assert "## Recipe\n\n_Skipped: `recipe.yaml` not found" in text
    assert "## Data\n\n_Skipped: `data/stats.json` not found" in text
    assert "## SFT learning curve\n\n_Skipped: `metrics.jsonl` not found" in text
    assert "## Evaluation\n\n_Skipped: `eval/results.json` not found" in text
    assert not (tmp_path / "plots").exists()


def test_metrics_without_sft_loss_skip_the_curve(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log("eval", 0, {"sft/ndcg": 0.5})
    text = write_report(tmp_path).read_text()
    assert "_Skipped: no `loss` of stage `sft`" in text


def test_malformed_inputs_raise_naming_the_file(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text('{"methods": ')
    with pytest.raises(ValueError, match="results.json"):
        write_report(tmp_path)
    (tmp_path / "eval" / "results.json").write_text('{"methods": [1, 2]}')
    with pytest.raises(ValueError, match="results.json"):
        write_report(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        write_report(tmp_path / "nope")


def test_mixed_data_stats_get_a_per_part_table_and_a_key_value_table(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "stats.json").write_text(json.dumps(
        {"stats": {"train": {"rows": 400}, "eval": {"rows": 40}}, "loaded_rows": 400, "seconds": 1.25}))
    data = _section(write_report(tmp_path).read_text(), "Data")
    assert "`stats`:\n\n| statistic | train | eval |\n|-----------|-------|------|\n| rows      | 400   | 40   |" in data
    assert "| loaded_rows | 400   |" in data and "| seconds     | 1.25  |" in data


def test_time_section_sums_attempts_per_stage_and_rl_steps_per_phase(tmp_path):
    from pagerl.tracking.timings import read_stage_times, record_stage_time

    record_stage_time(tmp_path, "sft", 30.0, "stopped")
    record_stage_time(tmp_path, "sft", 50.0, "finished")
    record_stage_time(tmp_path, "rl", 20.0, "finished")
    assert [a["outcome"] for a in read_stage_times(tmp_path)["sft"]] == ["stopped", "finished"]
    with pytest.raises(ValueError, match="outcome"):
        record_stage_time(tmp_path, "rl", 1.0, "done")
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in (1, 2):
            logger.log("rl", step, {"reward_total": 1.0, "step_s": 4.0, "seconds_generate": 1.0, "seconds_reward": 0.5,
                                    "seconds_experience": 0.5, "seconds_train": 1.5, "seconds_sync": 0.5,
                                    "seconds_eval": 0.0})
        logger.log("rl", 2, {"reward_total": 1.0, "step_s": 6.0, "seconds_generate": 3.0, "seconds_reward": 0.5,
                             "seconds_experience": 0.5, "seconds_train": 1.5, "seconds_sync": 0.5,
                             "seconds_eval": 0.0})  # a resumed run re-logs step 2: the last row counts
    text = _section(write_report(tmp_path).read_text(), "Where the time went")
    assert "| `sft` | 2        | stopped, finished | 80.0    | 80.0% |" in text
    assert "| `rl`  | 1        | finished          | 20.0    | 20.0% |" in text
    assert "The 2 RL steps' 10.0 s by phase" in text
    assert "| `generate`   | 4.0     | 40.0%              |" in text
    assert "| `train`      | 3.0     | 30.0%              |" in text


def test_an_unreadable_timings_record_is_named(tmp_path):
    (tmp_path / "timings.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="timings.json"):
        write_report(tmp_path)
    (tmp_path / "timings.json").write_text('{"sft": [{"seconds": 3.0, "outcome": "finished"}, {"outcome": "stopped"}]}')
    with pytest.raises(ValueError, match=r"timings\.json: stage 'sft' attempt 1: expected"):
        write_report(tmp_path)
