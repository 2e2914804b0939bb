"""Errors of the logged-impression data layer.

A bad row is described by a :class:`RowError` value rather than raised at
once, because the recipe decides what a bad row means: in ``skip`` mode the
loader counts and reports it and goes on, in ``error`` mode it raises a
:class:`DataError` built from it. Either way the user gets the same words:
which file, which line (JSONL, 1-based) or row (Parquet, 0-based index),
which field, and what was expected there.
"""

from __future__ import annotations

from dataclasses import dataclass


class DataError(ValueError):
    """A data file cannot be used: a bad row in ``error`` mode, too many bad
    rows in ``skip`` mode, an unreadable file or an unknown file type."""


@dataclass(frozen=True)
class RowError:
    """Why one row of a data file was rejected.

    ``line`` is the 1-based line number for JSONL files and the 0-based row
    index for Parquet files; ``unit`` says which ("line" or "row"), so that
    ``str(error)`` reads "train.jsonl line 7: ..." or "train.parquet row 6: ...".
    ``field`` is a path into the row such as ``candidates[3].price`` (empty
    when the row as a whole is wrong, e.g. malformed JSON).
    """

    file: str
    line: int
    field: str
    message: str
    unit: str = "line"

    @property
    def location(self) -> str:
        return f"{self.file} {self.unit} {self.line}"

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.location}: {where}{self.message}"
