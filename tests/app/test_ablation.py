"""The reward ablation: its table against hand-computed figures and its recipe checks. A whole
ablation runs end to end as a cluster job in tests/cluster/test_job_submit.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pagerl.app.ablation import shared_stages
from pagerl.app.ablation_table import AblationError, ablation_table, format_markdown
from pagerl.app.recipes import load_recipe
from pagerl.errors import RecipeError

REPO = Path(__file__).resolve().parents[2]


def _write_pages(run_dir: Path, method: str, clicks, ndcg, ids=None) -> None:
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    ids = ids or [f"r{i}" for i in range(len(clicks))]
    with open(run_dir / "eval" / "pages.jsonl", "w") as f:
        for rid, c, n in zip(ids, clicks, ndcg):
            f.write(json.dumps({"request_id": rid, "pages": {method: {"expected_clicks": c, "ndcg": n}}}) + "\n")


def _recipe(*overrides):
    return load_recipe(REPO / "recipes" / "ci_small.yaml",
                       ["run.stages=[synth,sft,rm,rl,eval]", "eval.bootstrap_resamples=4000", *overrides])[0]


def test_the_table_matches_figures_computed_by_hand(tmp_path):
    recipe = _recipe("ablation.seeds=[0,1]",
                     'ablation.variants=[{name: mixed}, {name: item_only, overrides: ["rewards.w_page=0"]}]')
    base = tmp_path / "base"
    sft = [1.0, 2.0, 1.0, 2.0]
    _write_pages(base, "sft", sft, [0.5] * 4)
    runs = {"mixed": {}, "item_only": {}}
    # mixed: seed 0 is sft + 0.2 everywhere, seed 1 sft + 0.4 -> the seed mean is sft + 0.3
    for seed, gain in ((0, 0.2), (1, 0.4)):
        runs["mixed"][seed] = tmp_path / f"mixed-seed{seed}"
        _write_pages(runs["mixed"][seed], "rl", [c + gain for c in sft], [0.6] * 4)
    # item_only: sft + 0.1 on both seeds
    for seed in (0, 1):
        runs["item_only"][seed] = tmp_path / f"item_only-seed{seed}"
        _write_pages(runs["item_only"][seed], "rl", [c + 0.1 for c in sft], [0.55] * 4)

    table = ablation_table(recipe, base, "sft", runs)
    mixed, item = table["variants"]["mixed"]["expected_clicks"], table["variants"]["item_only"]["expected_clicks"]
    assert mixed["mean"] == pytest.approx(1.5 + 0.3)
    assert mixed["seed_means"] == pytest.approx([1.7, 1.9])
    assert mixed["seed_sd"] == pytest.approx(np.std([1.7, 1.9], ddof=1))
    # a constant per-request difference: the interval is the point itself
    assert mixed["vs_start"]["diff"] == pytest.approx(0.3)
    assert mixed["vs_start"]["diff_ci"] == pytest.approx([0.3, 0.3])
    assert mixed["vs_start"]["relative"] == pytest.approx(0.3 / 1.5)
    assert mixed["vs_reference"] is None
    assert item["vs_reference"]["diff"] == pytest.approx(-0.2)
    assert item["vs_reference"]["relative"] == pytest.approx(-0.2 / 1.8)
    assert table["variants"]["item_only"]["ndcg"]["vs_reference"]["relative"] == pytest.approx(-0.05 / 0.6)

    holds = {(c["claim"], c["metric"]): c["holds"] for c in table["claims"]}
    assert holds[("mixed ahead of item_only", "expected_clicks")]
    assert holds[("item_only ahead of sft", "ndcg")] and holds[("mixed ahead of sft", "expected_clicks")]
    rows = {}
    for line in format_markdown(table):  # the first row a variant has is its row of the main table
        if line.startswith("| `"):
            rows.setdefault(line.split("|")[1].strip(), [c.strip() for c in line.split("|")[2:-1]])
    assert rows["`item_only`"][:2] == ["`rewards.w_page=0`", "1.6000 (seed sd 0.0000)"]
    assert rows["`item_only`"][3].startswith("-11.1% [")  # item_only vs mixed in expected clicks


def test_the_why_table_shows_credit_fidelity_and_the_last_rl_figures(tmp_path):
    recipe = _recipe("ablation.seeds=[0,1]", 'ablation.variants=[{name: mixed}, {name: page_only}]')
    base = tmp_path / "base"
    _write_pages(base, "sft", [1.0, 2.0], [0.5, 0.5])
    runs = {"mixed": {}, "page_only": {}}
    for variant, kl in (("mixed", (0.1, 0.3)), ("page_only", (0.02, 0.04))):
        for seed in (0, 1):
            run = runs[variant][seed] = tmp_path / f"{variant}-seed{seed}"
            _write_pages(run, "rl", [1.5, 2.5], [0.6, 0.6])
            (run / "rl").mkdir()
            (run / "rl" / "summary.json").write_text(json.dumps({"last": {"reward_total": 1.0 + seed, "kl": kl[seed]}}))
    (base / "ablation").mkdir()
    (base / "ablation" / "credit_fidelity.json").write_text(json.dumps({
        "requests": 200, "samples": 4, "estimator": "rloo",
        "settings": {"mixed": {"pooled": 0.47, "per_slot": [0.52, 0.39]},
                     "page_only": {"pooled": 0.12, "per_slot": [0.48, -0.02]}}}))
    lines = format_markdown(ablation_table(recipe, base, "sft", runs))
    why = lines[next(i for i, line in enumerate(lines) if line.startswith("Why, per variant")):]
    assert "200 requests × 4 pages" in why[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in why if line.startswith("| `")}
    assert rows["`mixed`"] == ["0.470", "0.52 / 0.39", "1.5000", "0.2000"]
    assert rows["`page_only`"] == ["0.120", "0.48 / -0.02", "1.5000", "0.0300"]


def test_the_report_sums_each_variants_runs_in_where_the_time_went(tmp_path):
    from pagerl.app.report import write_report
    from pagerl.tracking.timings import record_stage_time

    recipe = _recipe("ablation.seeds=[0,1]", 'ablation.variants=[{name: mixed}, {name: item_only}]')
    base = tmp_path / "base"
    _write_pages(base, "sft", [1.0, 2.0], [0.5, 0.5])
    record_stage_time(base, "sft", 40.0, "finished")
    runs = {"mixed": {}, "item_only": {}}
    for variant, seconds in (("mixed", (10.0, 12.5)), ("item_only", (7.0, 8.0))):
        for seed in (0, 1):
            run = runs[variant][seed] = tmp_path / f"{variant}-seed{seed}"
            _write_pages(run, "rl", [1.5, 2.5], [0.6, 0.6])
            record_stage_time(run, "rl", seconds[seed], "finished")
            record_stage_time(run, "eval", 1.0, "finished")
    (base / "ablation").mkdir()
    (base / "ablation" / "ablation.json").write_text(json.dumps(ablation_table(recipe, base, "sft", runs)))
    text = write_report(base).read_text()
    time = text[text.index("## Where the time went"):]
    assert "| `sft` | 1        | finished | 40.0    | 100.0% |" in time
    assert "| `mixed`     | 2    | 24.5    |" in time and "| `item_only` | 2    | 17.0    |" in time


def test_runs_scoring_other_requests_are_refused(tmp_path):
    recipe = _recipe("ablation.seeds=[0]", "ablation.variants=[{name: mixed}]")
    _write_pages(tmp_path / "base", "sft", [1.0, 2.0], [0.5, 0.5])
    _write_pages(tmp_path / "m", "rl", [1.0, 2.0], [0.5, 0.5], ids=["r0", "other"])
    with pytest.raises(AblationError, match="same held-out requests"):
        ablation_table(recipe, tmp_path / "base", "sft", {"mixed": {0: tmp_path / "m"}})


@pytest.mark.parametrize(
    "override, key",
    [
        ('ablation.variants=[{name: mixed}, {name: fast, overrides: ["rl.steps=1"]}]', "ablation.variants"),
        ('ablation.variants=[{name: mixed}, {name: other, overrides: ["sft.lr=1"]}]', "ablation.variants"),
        ("ablation.variants=[{name: mixed}, {name: mixed}]", "ablation.variants"),
        ("ablation.reference=joint", "ablation.reference"),
        ("ablation.seeds=[1,1]", "ablation.seeds"),
    ],
)
def test_a_variant_that_breaks_the_shared_budget_is_refused_naming_the_key(override, key):
    with pytest.raises(RecipeError) as err:
        _recipe(override)
    assert f"'{key}'" in str(err.value)


def test_an_ablation_needs_rl_after_a_policy_stage():
    with pytest.raises(AblationError, match="expected 'rl' in run.stages"):
        shared_stages(_recipe("run.stages=[synth,sft,eval]"))
    with pytest.raises(AblationError, match="policy stage"):
        shared_stages(_recipe("run.stages=[synth,rm,rl,eval]"))
    assert shared_stages(_recipe()) == (["synth", "sft", "rm"], "sft")


def test_seeds_move_only_the_rl_streams():
    """rl.seed 0 is run.seed itself (earlier runs repeat); another value moves RL's seed and
    leaves the world, and so the data, SFT and reward models, where they were."""
    from pagerl.rl import rl_seed
    from pagerl.rl.controller import PromptCursor
    from pagerl.sim import World

    zero, two = _recipe(), _recipe("rl.seed=2")
    assert rl_seed(zero) == zero.run.seed and rl_seed(two) != rl_seed(zero)
    first = [PromptCursor(400, 8, rl_seed(r)).next() for r in (zero, two)]
    assert list(first[0]) != list(first[1])
    worlds = [World.from_config(r.sim, r.run.seed) for r in (zero, two)]
    assert worlds[0].item_titles == worlds[1].item_titles
    assert np.array_equal(worlds[0].user_latent, worlds[1].user_latent)
