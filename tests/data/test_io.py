"""Writing and reading impression files: exact round trips in JSONL and Parquet,
Parquet bad rows reported by row index, streaming across record batches."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pagerl.config.schema import SimConfig
from pagerl.data import (
    DataError,
    Impression,
    Item,
    ItemFeedback,
    Request,
    User,
    impression_to_row,
    iter_impressions,
    read_impressions,
    validate_file,
    write_impressions,
)
from pagerl.sim import Simulator, World


def handmade(i: int, *, query=None, propensity=None) -> Impression:
    """An impression with awkward values: unicode, nested attrs, ints where floats go."""
    candidates = [
        Item("a", "çafé “deluxe” kit", "kitchen", 12, {"rating": 4.5, "tags": ["x", "y"], "dims": {"w": 1}}),
        Item("b", "", "toys", 0.1 + 0.2, {}),
        Item("c", "plain", "toys", 1e-7, {"flag": True, "none": None}),
    ]
    request = Request(
        request_id=f"req-{i}",
        user=User("u", [0.1, -2, 1e300], ["h"], ["toys"]),
        candidates=candidates,
        page_size=2,
        query=query,
    )
    return Impression(
        request=request,
        page=["c", "a"],
        feedback=[ItemFeedback("c", 1, 1, 3.25), ItemFeedback("a", 0, 0, 0.0)],
        page_outcome={"gmv": 1e-7, "clicks": 1.0, "extra": -0.5},
        propensity=propensity,
    )


def simulated(n: int, seed: int = 0):
    cfg = SimConfig(num_items=80, num_users=20, candidates_per_request=8, page_size=4)
    sim = Simulator(World.from_config(cfg, seed))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        request = sim.sample_request(rng, f"s{i}")
        page, propensity = sim.logging_page(request, rng)
        feedback, outcome = sim.sample_feedback(request, page, rng)
        out.append(Impression(request, page, feedback, outcome, propensity))
    return out


@pytest.mark.parametrize("ext", [".jsonl", ".parquet"])
def test_round_trip_is_exact(tmp_path, ext):
    impressions = [handmade(0), handmade(1, query="red mug", propensity=1.0), handmade(2, propensity=3e-9)]
    impressions += simulated(25)
    path = tmp_path / f"data{ext}"
    assert write_impressions(path, impressions) == len(impressions)
    result = read_impressions(path, on_bad_row="error")
    assert result.num_rows == len(impressions) and not result.bad_rows
    assert result.impressions == impressions
    # Exact, not approximate: the float repr survives and the rows are identical.
    assert [impression_to_row(x) for x in result.impressions] == [impression_to_row(x) for x in impressions]
    assert result.impressions[0].request.candidates[1].price == 0.1 + 0.2


def test_jsonl_and_parquet_hold_the_same_rows(tmp_path):
    impressions = simulated(10, seed=3)
    write_impressions(tmp_path / "a.jsonl", impressions)
    write_impressions(tmp_path / "a.parquet", impressions)
    from_jsonl = read_impressions(tmp_path / "a.jsonl").impressions
    from_parquet = read_impressions(tmp_path / "a.parquet").impressions
    assert from_jsonl == from_parquet == impressions


def test_parquet_uses_nested_arrow_types(tmp_path):
    path = tmp_path / "t.parquet"
    write_impressions(path, simulated(3))
    schema = pq.read_schema(path)
    assert pa.types.is_struct(schema.field("user").type)
    assert pa.types.is_list(schema.field("candidates").type)
    assert pa.types.is_map(schema.field("page_outcome").type)
    assert schema.field("propensity").type == pa.float64()


def test_parquet_bad_rows_are_reported_by_row_index_across_batches(tmp_path):
    impressions = simulated(12, seed=1)
    impressions[5].page[1] = "not-a-candidate"  # invariants broken on purpose
    impressions[9].feedback = impressions[9].feedback[:-1]
    path = tmp_path / "bad.parquet"
    write_impressions(path, impressions, validate=False, batch_size=4)  # three row groups
    entries = list(iter_impressions(path, batch_size=3))  # batches do not align with row groups
    assert len(entries) == 12
    result = validate_file(path, batch_size=3)
    assert [(e.line, e.field) for e in result.bad_rows] == [(5, "page[1]"), (9, "feedback")]
    assert str(result.bad_rows[0]).startswith(f"{path} row 5: page[1]: ")
    with pytest.raises(DataError, match=rf"{path} row 5"):
        read_impressions(path, on_bad_row="error")


def test_parquet_with_wrong_types_from_another_tool(tmp_path):
    """A file whose nested columns are JSON text and whose price is a string
    is read row by row; the bad row is named, the good one loads."""
    good = impression_to_row(simulated(1)[0])
    bad = json.loads(json.dumps(good))
    bad["candidates"][0]["price"] = "12.00"
    table = pa.table(
        {
            "request_id": [good["request_id"], "bad-1"],
            "user": [json.dumps(good["user"]), json.dumps(bad["user"])],
            "query": [None, None],
            "page_size": [good["page_size"], bad["page_size"]],
            "candidates": [json.dumps(good["candidates"]), json.dumps(bad["candidates"])],
            "page": [json.dumps(good["page"]), json.dumps(bad["page"])],
            "feedback": [json.dumps(good["feedback"]), json.dumps(bad["feedback"])],
            "page_outcome": [json.dumps(good["page_outcome"]), "{not json"],
            "propensity": [good["propensity"], None],
        }
    )
    path = tmp_path / "other.parquet"
    pq.write_table(table, path)
    result = validate_file(path)
    assert len(result.impressions) == 1
    assert result.impressions[0].page == good["page"]
    (error,) = result.bad_rows
    assert (error.line, error.field, error.unit) == (1, "page_outcome", "row")


def test_parquet_missing_column_is_a_missing_field(tmp_path):
    rows = [impression_to_row(x) for x in simulated(2)]
    for row in rows:
        row["candidates"] = json.dumps(row["candidates"])
        row["user"] = json.dumps(row["user"])
        row["feedback"] = json.dumps(row["feedback"])
        row["page_outcome"] = json.dumps(row["page_outcome"])
        del row["page"]
    path = tmp_path / "nopage.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    result = validate_file(path)
    assert [(e.line, e.field, e.message) for e in result.bad_rows] == [
        (0, "page", "missing required field"),
        (1, "page", "missing required field"),
    ]


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_text("hello")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_impressions(path)


def test_write_refuses_an_invalid_impression_and_leaves_no_file(tmp_path):
    impressions = simulated(4)
    impressions[2].page = impressions[2].page[:1] + impressions[2].page[:1] + impressions[2].page[2:]
    path = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match=r"impression 2 \(request_id 's2'\) is invalid: page\[1\]: .*twice"):
        write_impressions(path, impressions)
    assert os.listdir(tmp_path) == []  # no partial file, no temporary left behind


def test_read_many_files_in_order(tmp_path):
    first, second = simulated(3, seed=4), simulated(2, seed=5)
    write_impressions(tmp_path / "one.jsonl", first)
    write_impressions(tmp_path / "two.parquet", second)
    result = read_impressions([tmp_path / "one.jsonl", tmp_path / "two.parquet"])
    assert result.impressions == first + second and result.num_rows == 5
    assert "5 ok, 0 bad" in result.summary
