"""Row validation: every kind of bad row is reported with file, line, field and
what was expected; good rows become Impressions."""

from __future__ import annotations

import copy
import json

import pytest

from pagerl.data import DataError, Impression, read_impressions, validate_file


def good_row(request_id: str = "r1") -> dict:
    return {
        "request_id": request_id,
        "user": {
            "user_id": "u1",
            "features": [0.5, -1.0],
            "history": ["h1", "h2"],
            "history_categories": ["books", "toys"],
        },
        "query": None,
        "page_size": 2,
        "candidates": [
            {"item_id": "a", "title": "deluxe books kit", "category": "books", "price": 10.5, "attrs": {"rating": 4.1}},
            {"item_id": "b", "title": "basic toys box", "category": "toys", "price": 3, "attrs": {}},
            {"item_id": "c", "title": "premium garden set", "category": "garden", "price": 99.99},
        ],
        "page": ["b", "a"],
        "feedback": [
            {"item_id": "b", "click": 1, "purchase": 0, "dwell": 12.5},
            {"item_id": "a", "click": 0, "purchase": 0, "dwell": 0.0},
        ],
        "page_outcome": {"gmv": 0.0, "clicks": 1.0},
        "propensity": 0.25,
    }


def _set(row: dict, path: str, value) -> dict:
    """Set (or delete, with value=KeyError) a nested field given as 'a.b[1].c'."""
    row = copy.deepcopy(row)
    parts = path.replace("]", "").replace("[", ".").split(".")
    target = row
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last = parts[-1]
    key = int(last) if last.isdigit() else last
    if value is KeyError:
        del target[key]
    else:
        target[key] = value
    return row


# (mutation path, new value, field reported, words the message must contain)
BAD_ROWS = [
    ("page_size", KeyError, "page_size", "missing required field"),
    ("user.user_id", KeyError, "user.user_id", "missing required field"),
    ("candidates[1].price", "3.50", "candidates[1].price", "expected a number, got str"),
    ("candidates[0].price", -1.0, "candidates[0].price", ">= 0"),
    ("candidates[0].price", float("nan"), "candidates[0].price", "finite"),
    ("candidates[2].category", 7, "candidates[2].category", "expected a string"),
    ("candidates[2].item_id", "a", "candidates[2].item_id", "duplicate candidate id 'a'"),
    ("candidates[0].attrs", [1, 2], "candidates[0].attrs", "expected an object"),
    ("feedback[0].click", 2, "feedback[0].click", "expected 0 or 1"),
    ("feedback[0].click", "1", "feedback[0].click", "expected 0 or 1"),
    ("feedback[0].click", True, "feedback[0].click", "expected 0 or 1"),
    ("feedback[1].purchase", 0.5, "feedback[1].purchase", "expected 0 or 1"),
    ("feedback[0].dwell", -3.0, "feedback[0].dwell", ">= 0"),
    ("page[1]", "zz", "page[1]", "'zz' is not among the candidates"),
    ("page[1]", "b", "page[1]", "appears twice in the page"),
    ("page", ["b"], "page", "has 1 items but page_size is 2"),
    ("page_size", 4, "page_size", "only 3 candidates"),
    ("page_size", 2.0, "page_size", "expected an integer"),
    ("feedback[0].item_id", "a", "feedback[0].item_id", "slot order"),
    ("feedback", [{"item_id": "b", "click": 1}], "feedback", "has 1 entries but the page has 2"),
    ("propensity", 0.0, "propensity", "(0, 1]"),
    ("propensity", 1.5, "propensity", "(0, 1]"),
    ("page_outcome", {"clicks": 1.0}, "page_outcome.gmv", "missing required field"),
    ("page_outcome.gmv", "12", "page_outcome.gmv", "expected a number"),
    ("query", 5, "query", "expected a string"),
    ("user.history_categories", ["books"], "user.history_categories", "one category per history item"),
    ("user.features[1]", None, "user.features[1]", "got null"),
    ("candidates", {"a": 1}, "candidates", "expected a list"),
]


def write_jsonl(path, rows) -> None:
    with open(path, "w") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


@pytest.mark.parametrize("mutation,value,field,words", BAD_ROWS, ids=[f"{m}={v!r}" for m, v, _, _ in BAD_ROWS])
def test_bad_row_is_reported_with_file_line_and_field(tmp_path, mutation, value, field, words):
    path = tmp_path / "logs.jsonl"
    write_jsonl(path, [good_row("r1"), _set(good_row("r2"), mutation, value), good_row("r3")])
    result = validate_file(path)
    assert result.num_rows == 3 and len(result.impressions) == 2
    (error,) = result.bad_rows
    assert (error.file, error.line, error.field) == (str(path), 2, field)
    assert words in error.message
    assert str(error).startswith(f"{path} line 2: {field}: ")


def test_good_row_becomes_an_impression(tmp_path):
    path = tmp_path / "ok.jsonl"
    write_jsonl(path, [good_row()])
    (imp,) = read_impressions(path, on_bad_row="error").impressions
    assert isinstance(imp, Impression)
    assert imp.page == ["b", "a"] and imp.request.page_size == 2
    assert imp.request.candidates[1].price == 3.0 and isinstance(imp.request.candidates[1].price, float)
    assert imp.request.candidates[2].attrs == {}  # optional attrs default
    assert imp.feedback[0].click == 1 and imp.feedback[0].dwell == 12.5
    assert imp.propensity == 0.25 and imp.request.query is None


def test_optional_fields_take_defaults(tmp_path):
    row = good_row()
    for key in ("query", "propensity"):
        del row[key]
    for fb in row["feedback"]:
        del fb["purchase"], fb["dwell"]
    row["user"] = {"user_id": "u9"}
    path = tmp_path / "min.jsonl"
    write_jsonl(path, [row])
    (imp,) = read_impressions(path, on_bad_row="error").impressions
    assert imp.propensity is None and imp.request.query is None
    assert imp.request.user.history == [] and imp.feedback[1].purchase == 0


def test_malformed_json_and_non_object_lines(tmp_path):
    path = tmp_path / "broken.jsonl"
    write_jsonl(path, [good_row(), '{"request_id": "r2", "user": ', "[1, 2, 3]", good_row("r4")])
    result = validate_file(path)
    assert [(e.line, e.field) for e in result.bad_rows] == [(2, ""), (3, "")]
    assert "malformed JSON" in result.bad_rows[0].message
    assert "expected an object" in result.bad_rows[1].message
    assert len(result.impressions) == 2


def test_blank_lines_between_rows_are_bad_but_trailing_ones_are_fine(tmp_path):
    path = tmp_path / "blank.jsonl"
    text = json.dumps(good_row("r1")) + "\n\n  \n" + json.dumps(good_row("r2")) + "\n\n\n"
    path.write_text(text)
    result = validate_file(path)
    assert [(e.line, e.field) for e in result.bad_rows] == [(2, ""), (3, "")]
    assert all("blank line" in e.message for e in result.bad_rows)
    assert len(result.impressions) == 2 and result.num_rows == 4


def test_invalid_utf8_line_is_reported(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(json.dumps(good_row()).encode() + b"\n\xff\xfe{}\n")
    (error,) = validate_file(path).bad_rows
    assert error.line == 2 and "UTF-8" in error.message


def test_error_mode_raises_at_first_bad_row_naming_file_and_line(tmp_path):
    path = tmp_path / "logs.jsonl"
    rows = [good_row("r1"), good_row("r2"), _set(good_row("r3"), "page[0]", "nope"), _set(good_row("r4"), "page", [])]
    write_jsonl(path, rows)
    with pytest.raises(DataError) as info:
        read_impressions(path, on_bad_row="error")
    message = str(info.value)
    assert f"{path} line 3" in message and "page[0]" in message and "not among the candidates" in message


def test_skip_mode_counts_bad_rows_and_gives_up_past_the_threshold(tmp_path):
    path = tmp_path / "logs.jsonl"
    rows = [good_row(f"r{i}") for i in range(18)] + [_set(good_row("x"), "feedback[0].click", 3)] * 2
    write_jsonl(path, rows)
    result = read_impressions(path, on_bad_row="skip", max_bad_fraction=0.2)
    assert (result.num_rows, len(result.impressions), result.num_bad) == (20, 18, 2)
    assert result.bad_fraction == pytest.approx(0.1)
    assert "2 bad (10.00%)" in result.summary and f"{path} line 19" in result.summary
    with pytest.raises(DataError, match=r"too many bad rows: 10.00% > data.max_bad_fraction 5.00%"):
        read_impressions(path, on_bad_row="skip", max_bad_fraction=0.05)


def test_bad_arguments_are_named(tmp_path):
    path = tmp_path / "logs.jsonl"
    write_jsonl(path, [good_row()])
    with pytest.raises(ValueError, match="data.on_bad_row"):
        read_impressions(path, on_bad_row="ignore")
    with pytest.raises(DataError, match="unknown file type"):
        read_impressions(tmp_path / "logs.csv")
    with pytest.raises(DataError, match="no such data file"):
        read_impressions(tmp_path / "missing.jsonl")
