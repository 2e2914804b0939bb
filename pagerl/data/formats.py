"""File formats of logged impressions, registered by file extension.

Each format knows how to stream decoded rows out of a file (yielding the row
number and either a dict in the JSON row layout or a RowError when the row
cannot even be decoded) and how to write rows. Adding a format is adding one
decorated class; :mod:`pagerl.data.io` never branches on the extension.

Parquet layout: nested fields are real Arrow types, so the files are
queryable with any Arrow tool -- ``user`` a struct, ``candidates`` and
``feedback`` lists of structs, ``page`` a list of strings, ``page_outcome`` a
map<string, double>. The one exception is a candidate's free-form ``attrs``,
stored as a JSON string because its keys differ from item to item and an
Arrow struct needs one schema for the whole column. On read, any of the
nested columns may also be a JSON string (files written by other tools with
one JSON column per field), so both styles load.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterable, Iterator, Tuple, Type, Union

from pagerl.data.errors import DataError, RowError

DecodedRow = Tuple[int, Union[Dict[str, Any], RowError]]

FORMATS: Dict[str, "RowFormat"] = {}


def register_format(*extensions: str) -> Callable[[Type["RowFormat"]], Type["RowFormat"]]:
    def wrap(cls: Type[RowFormat]) -> Type[RowFormat]:
        instance = cls()
        for ext in extensions:
            FORMATS[ext] = instance
        return cls

    return wrap


def format_for(path: str) -> "RowFormat":
    """The format registered for the file's extension, or a DataError."""
    lowered = str(path).lower()
    for ext, fmt in FORMATS.items():
        if lowered.endswith(ext):
            return fmt
    known = ", ".join(sorted(FORMATS))
    raise DataError(f"{path}: unknown file type (expected one of the extensions {known})")


class RowFormat:
    """A file format of impression rows."""

    # How a row number is said in messages: "line" (1-based) or "row" (0-based).
    unit = "line"

    def read_rows(self, path: str, batch_size: int = 1024) -> Iterator[DecodedRow]:
        raise NotImplementedError

    def write_rows(self, path: str, rows: Iterable[Dict[str, Any]], batch_size: int = 1024) -> int:
        raise NotImplementedError


def _atomic_target(path: str) -> str:
    """A temporary name next to ``path``: a crash mid-write never leaves a
    truncated file under the real name (resumed runs trust existing files)."""
    return f"{path}.tmp-{os.getpid()}"


@register_format(".jsonl")
class JsonlFormat(RowFormat):
    unit = "line"

    def read_rows(self, path: str, batch_size: int = 1024) -> Iterator[DecodedRow]:
        # Blank lines are held back until a non-blank line follows: trailing
        # blank lines at the end of the file are harmless, blank lines between
        # rows are reported (they usually mean a truncated or spliced file).
        pending_blank = []
        with open(path, "rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                if not raw.strip():
                    pending_blank.append(lineno)
                    continue
                for blank in pending_blank:
                    yield blank, RowError(
                        path, blank, "", "blank line between rows (expected one JSON object per line)"
                    )
                pending_blank.clear()
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    yield lineno, RowError(path, lineno, "", f"not valid UTF-8 ({err.reason} at byte {err.start})")
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as err:
                    yield lineno, RowError(path, lineno, "", f"malformed JSON: {err.msg} at column {err.colno}")
                    continue
                yield lineno, row

    def write_rows(self, path: str, rows: Iterable[Dict[str, Any]], batch_size: int = 1024) -> int:
        tmp = _atomic_target(path)
        count = 0
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False, allow_nan=False))
                    handle.write("\n")
                    count += 1
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return count


def _arrow_schema():
    import pyarrow as pa

    item = pa.struct(
        [
            ("item_id", pa.string()),
            ("title", pa.string()),
            ("category", pa.string()),
            ("price", pa.float64()),
            ("attrs", pa.string()),  # JSON text: free-form keys
        ]
    )
    feedback = pa.struct(
        [("item_id", pa.string()), ("click", pa.int64()), ("purchase", pa.int64()), ("dwell", pa.float64())]
    )
    user = pa.struct(
        [
            ("user_id", pa.string()),
            ("features", pa.list_(pa.float64())),
            ("history", pa.list_(pa.string())),
            ("history_categories", pa.list_(pa.string())),
        ]
    )
    return pa.schema(
        [
            ("request_id", pa.string()),
            ("user", user),
            ("query", pa.string()),
            ("page_size", pa.int64()),
            ("candidates", pa.list_(item)),
            ("page", pa.list_(pa.string())),
            ("feedback", pa.list_(feedback)),
            ("page_outcome", pa.map_(pa.string(), pa.float64())),
            ("propensity", pa.float64()),
        ]
    )


_NESTED_COLUMNS = ("user", "candidates", "page", "feedback", "page_outcome")


def _from_arrow_row(path: str, index: int, row: Dict[str, Any]) -> Union[Dict[str, Any], RowError]:
    """Undo the Arrow encoding of one row: JSON-text columns and attrs are
    parsed, a map column (a list of key/value pairs) becomes a dict."""
    for key in _NESTED_COLUMNS:
        if isinstance(row.get(key), str):
            try:
                row[key] = json.loads(row[key])
            except json.JSONDecodeError as err:
                return RowError(path, index, key, f"malformed JSON text in column: {err.msg}", unit="row")
    outcome = row.get("page_outcome")
    if isinstance(outcome, list) and all(isinstance(kv, tuple) and len(kv) == 2 for kv in outcome):
        row["page_outcome"] = dict(outcome)
    candidates = row.get("candidates")
    if isinstance(candidates, list):
        for i, cand in enumerate(candidates):
            if isinstance(cand, dict) and isinstance(cand.get("attrs"), str):
                try:
                    cand["attrs"] = json.loads(cand["attrs"])
                except json.JSONDecodeError as err:
                    return RowError(path, index, f"candidates[{i}].attrs", f"malformed JSON text: {err.msg}", unit="row")
    return row


@register_format(".parquet", ".pq")
class ParquetFormat(RowFormat):
    unit = "row"

    def read_rows(self, path: str, batch_size: int = 1024) -> Iterator[DecodedRow]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            source = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({err})") from err
        index = 0
        for batch in source.iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                yield index, _from_arrow_row(path, index, row)
                index += 1

    def write_rows(self, path: str, rows: Iterable[Dict[str, Any]], batch_size: int = 1024) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _arrow_schema()
        tmp = _atomic_target(path)
        count = 0

        def flush(writer, chunk):
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))

        try:
            with pq.ParquetWriter(tmp, schema) as writer:
                chunk = []
                for row in rows:
                    row = dict(row)
                    row["candidates"] = [
                        {**c, "attrs": json.dumps(c.get("attrs", {}), ensure_ascii=False, allow_nan=False)}
                        for c in row["candidates"]
                    ]
                    chunk.append(row)
                    count += 1
                    if len(chunk) >= batch_size:
                        flush(writer, chunk)
                        chunk = []
                if chunk:
                    flush(writer, chunk)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return count
