"""Inverse-propensity scoring by hand on a fixed sample; the Open Bandit Dataset loader on a small
handmade campaign (every bad row counted with its file and line) and on the CSVs obp ships; the
BTS-versus-random sanity check; and loaded impressions written as JSONL that `pagerl data validate`
reads back."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys

import numpy as np
import pytest

from pagerl.cli import _main as cli
from pagerl.data import DataError
from pagerl.data.obd import load_obd, write_obd_jsonl
from pagerl.eval.ips import ips_estimate

HAS_OBP = importlib.util.find_spec("obp") is not None
requires_obp = pytest.mark.skipif(
    not HAS_OBP,
    reason="the Open Bandit Dataset sample ships inside obp, which is not installed (pip install 'pagerl[obp]')",
)


# ------------------------------------------------------------------ IPS by hand
def test_ips_on_a_fixed_sample_matches_the_hand_computation():
    # weights 0.5/0.25=2, 0.2/0.5=0.4, 0.1/0.2=0.5, 0.4/0.4=1; terms w*r = 2, 0, 0.5, 0
    est = ips_estimate([1, 0, 1, 0], [0.5, 0.2, 0.1, 0.4], [0.25, 0.5, 0.2, 0.4])
    assert est.value == pytest.approx(0.625)
    # deviations 1.375, -0.625, -0.125, -0.625: squares sum 2.6875, / 3, sqrt, / sqrt(4)
    se = math.sqrt(2.6875 / 3) / 2
    assert est.se == pytest.approx(se) and est.se == pytest.approx(0.4732424, abs=1e-7)
    assert est.ci == pytest.approx((0.625 - 1.959964 * se, 0.625 + 1.959964 * se), abs=1e-6)
    assert est.n == 4 and est.max_weight == 2.0
    assert est.effective_sample_size == pytest.approx(3.9**2 / (4 + 0.16 + 0.25 + 1))
    wider = ips_estimate([1, 0, 1, 0], [0.5, 0.2, 0.1, 0.4], [0.25, 0.5, 0.2, 0.4], level=0.99)
    assert wider.ci[0] < est.ci[0] and wider.ci[1] > est.ci[1]
    assert "0.62500 ± 0.47324 (95% CI" in str(est)


def test_ips_of_the_logging_policy_itself_is_the_plain_mean_of_clicks():
    clicks = [1, 0, 0, 1, 0, 0, 0, 1]
    logging = [0.1, 0.3, 0.2, 0.05, 0.5, 0.9, 0.01, 0.25]
    est = ips_estimate(clicks, logging, logging)
    assert est.value == pytest.approx(3 / 8)
    assert est.se == pytest.approx(np.std(clicks, ddof=1) / math.sqrt(8))
    assert est.effective_sample_size == pytest.approx(8) and est.max_weight == pytest.approx(1.0)
    assert ips_estimate([1], [0.5], [0.5]).se is None  # one impression: no standard error


@pytest.mark.parametrize(
    "clicks, target, logging, problem",
    [
        ([1, 0], [0.5], [0.5, 0.5], "2 clicks, 1 target and 2 logging"),
        ([1, 0], [0.5, 0.5], [0.5, 0.0], r"logging_propensities\[1\] is 0.0: expected a probability in \(0, 1\]"),
        ([1, 0], [0.5, 1.5], [0.5, 0.5], r"target_propensities\[1\] is 1.5: expected a probability in \[0, 1\]"),
        ([1, float("nan")], [0.5, 0.5], [0.5, 0.5], r"clicks\[1\] is nan"),
        ([], [], [], "no logged impressions"),
    ],
)
def test_ips_refuses_inputs_naming_the_entry(clicks, target, logging, problem):
    with pytest.raises(ValueError, match=problem):
        ips_estimate(clicks, target, logging)


# ------------------------------------------------------------------ loader, handmade campaign
HEADER = ["", "timestamp", "item_id", "position", "click", "propensity_score", "user_feature_0", "user_feature_1",
          "user-item_affinity_0", "user-item_affinity_1", "user-item_affinity_2"]
GOOD = [
    ["0", "2019-11-24 00:00:01+00:00", "2", "1", "0", "0.3333", "ua", "ub", "0.0", "1.0", "0.0"],
    ["1", "2019-11-24 00:00:02+00:00", "0", "3", "1", "0.25", "ua", "uc", "0.0", "0.0", "2.0"],
]


def _campaign(tmp_path, rows, policy="random", campaign="men"):
    folder = tmp_path / policy / campaign
    folder.mkdir(parents=True)
    with open(folder / "item_context.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", "item_id", "item_feature_0", "item_feature_1", "item_feature_2", "item_feature_3"])
        for j in range(3):
            writer.writerow([j, j, 0.5 * j - 0.5, f"{'ab' if j < 2 else 'cd'}12345678ff", "h2", "h3"])
    with open(folder / f"{campaign}.csv", "w", newline="") as handle:
        for row in rows:
            handle.write(",".join(row) + "\n")
    return folder / f"{campaign}.csv"


def test_rows_become_one_slot_impressions_of_the_campaigns_items(tmp_path):
    _campaign(tmp_path, [HEADER] + GOOD)
    log = load_obd("random", "men", data_dir=tmp_path)
    assert log.result.num_rows == 2 and log.result.num_bad == 0
    first, second = log.impressions
    assert [c.item_id for c in first.request.candidates] == ["item-0", "item-1", "item-2"]
    assert first.request.page_size == 1 and first.page == ["item-2"]
    assert first.feedback[0].item_id == "item-2" and first.feedback[0].click == 0 and second.feedback[0].click == 1
    assert first.propensity == 0.3333 and first.page_outcome == {"gmv": 0.0, "clicks": 0.0}
    assert first.request.request_id == "obd/random/men/line-2/position-1"
    assert second.request.request_id == "obd/random/men/line-3/position-3"
    assert first.request.user.features == [0.0, 1.0, 0.0]
    users = [imp.request.user.user_id for imp in (first, second)]
    assert all(u.startswith("segment-") for u in users) and users[0] != users[1]  # user_feature_1 differs
    item = first.request.candidates[2]
    assert (item.title, item.category, item.price) == ("item 2", "c-cd123456", 0.0)
    assert item.attrs["item_feature_0"] == 0.5 and item.attrs["item_feature_1"] == "cd12345678ff"
    assert np.array_equal(log.slots, [0, 2]) and np.array_equal(log.item_indices, [2, 0])
    assert np.array_equal(log.clicks, [0, 1]) and np.allclose(log.propensities, [0.3333, 0.25])
    shown = load_obd("random", "men", data_dir=tmp_path, candidates="shown")
    assert [c.item_id for c in shown.impressions[0].request.candidates] == ["item-2"]


def test_every_row_that_cannot_be_converted_is_counted_with_its_file_and_line(tmp_path):
    bad = [
        ["2", "t", "7", "1", "0", "0.2", "ua", "ub", "0", "0", "0"],  # line 4: unknown item
        ["3", "t", "1", "4", "0", "0.2", "ua", "ub", "0", "0", "0"],  # line 5: position 4
        ["4", "t", "1", "1", "2", "0.2", "ua", "ub", "0", "0", "0"],  # line 6: click 2
        ["5", "t", "1", "1", "0", "0", "ua", "ub", "0", "0", "0"],  # line 7: propensity 0
        ["6", "t", "1", "1"],  # line 8: too few fields
        [],  # line 9: blank between rows
        ["7", "t", "1", "1", "0", "0.2", "ua", "ub", "0", "nan", "0"],  # line 10: affinity nan
    ]
    path = _campaign(tmp_path, [HEADER] + GOOD + bad + [GOOD[0]])
    log = load_obd("random", "men", data_dir=tmp_path, max_bad_fraction=1.0)
    assert log.result.num_rows == 10 and len(log.impressions) == 3 == len(log.rows)
    messages = [str(e) for e in log.result.bad_rows]
    assert messages == [
        f"{path} line 4: item_id: item 7 is not in item_context.csv",
        f"{path} line 5: position: expected one of (1, 2, 3), got 4",
        f"{path} line 6: click: expected 0 or 1, got 2",
        f"{path} line 7: propensity_score: expected a probability in (0, 1], got 0.0",
        f"{path} line 8: has 4 fields, the header has 11",
        f"{path} line 9: blank line between rows",
        f"{path} line 10: user-item_affinity_1: expected a finite number, got 'nan'",
    ]
    assert "10 rows" in log.result.summary and "7 bad" in log.result.summary
    with pytest.raises(DataError, match="too many bad rows: 70.00%"):
        load_obd("random", "men", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"line 4: item_id: item 7 .*on_bad_row is 'error'"):
        load_obd("random", "men", data_dir=tmp_path, on_bad_row="error")


def test_missing_files_columns_and_names_are_refused_clearly(tmp_path):
    with pytest.raises(DataError, match="no such OBD file"):
        load_obd("random", "men", data_dir=tmp_path)
    _campaign(tmp_path, [[c for c in HEADER if c != "click"]] + [GOOD[0][:4] + GOOD[0][5:]])
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) \['click'\]"):
        load_obd("random", "men", data_dir=tmp_path)
    with pytest.raises(ValueError, match="behavior_policy: expected one of"):
        load_obd("greedy", "men", data_dir=tmp_path)
    with pytest.raises(ValueError, match="candidates: expected one of"):
        load_obd("random", "men", data_dir=tmp_path, candidates="some")


def test_written_impressions_are_validated_by_pagerl_data_validate(tmp_path, capsys):
    _campaign(tmp_path, [HEADER] + GOOD)
    out = tmp_path / "obd.jsonl"
    assert write_obd_jsonl(load_obd("random", "men", data_dir=tmp_path), out) == 2
    assert cli(["data", "validate", str(out)]) == 0
    assert f"{out}: 2 rows from {out}: 2 ok, 0 bad (0.00%)" in capsys.readouterr().out


# ------------------------------------------------------------------ the CSVs obp ships
@requires_obp
@pytest.mark.parametrize("policy", ["random", "bts"])
def test_the_shipped_sample_loads_whole(policy):
    log = load_obd(policy, "all")
    assert log.result.num_rows == 10_000 and log.result.num_bad == 0 and len(log.items) == 80
    assert len(log.impressions[0].request.candidates) == 80 and len(log.impressions[0].request.user.features) == 80
    with open(log.result.files[0], newline="") as handle:
        reader = csv.DictReader(handle)
        first = next(reader)
    row = log.rows[0]
    assert (row.item, row.position, row.click, row.propensity) == (
        int(first["item_id"]), int(first["position"]), int(first["click"]), float(first["propensity_score"])
    )
    assert log.impressions[0].page == [f"item-{row.item}"] and row.line == 2
    if policy == "random":
        assert np.allclose(log.propensities, 1 / 80)  # uniform over the campaign's 80 items, per position
        assert log.clicks.sum() == 38


@requires_obp
def test_shipped_sample_written_as_jsonl_validates_row_for_row(tmp_path, capsys):
    log = load_obd("random", "men")
    out = tmp_path / "men.jsonl"
    assert write_obd_jsonl(log, out, limit=300) == 300
    assert cli(["data", "validate", str(out)]) == 0
    assert f"{out}: 300 rows from {out}: 300 ok, 0 bad (0.00%)" in capsys.readouterr().out


@requires_obp
def test_bts_action_dist_counts_what_obps_bernoulli_ts_counts():
    from obp.policy import BernoulliTS

    from pagerl.eval.obd_bts import bts_action_dist

    ours = bts_action_dist("men", n_sim=3000, seed=5)
    policy = BernoulliTS(n_actions=34, len_list=3, is_zozotown_prior=True, campaign="men", random_state=5)
    assert np.array_equal(ours, policy.compute_batch_action_dist(n_rounds=1, n_sim=3000)[0])
    assert np.allclose(ours.sum(axis=0), 1.0)


@requires_obp
def test_bts_estimated_from_the_random_log_agrees_with_its_on_policy_click_rate():
    from pagerl.eval.obd_bts import bts_check

    check = bts_check("all")
    # obp's README: this IPS estimate is 1.198126... times the random policy's click rate
    assert check["bts_ips_relative_to_random"] == pytest.approx(1.198126, abs=1e-6)
    estimate, on_policy = check["bts_ips_on_random_log"], check["bts_on_policy"]
    assert check["random_on_policy"].value == pytest.approx(0.0038) and on_policy.value == pytest.approx(0.0042)
    assert estimate.ci[0] < on_policy.value < estimate.ci[1]
    difference_se = math.hypot(estimate.se, on_policy.se)
    assert abs(estimate.value - on_policy.value) < 2 * difference_se


def test_without_obp_and_without_a_data_dir_the_loader_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "obp", None)  # importlib then finds no obp
    with pytest.raises(DataError, match=r"obp is not installed and no data_dir was given: .*pip install 'pagerl\[obp\]'"):
        load_obd("random", "all")
