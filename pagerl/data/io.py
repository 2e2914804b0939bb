"""Reading and writing files of logged impressions (JSONL or Parquet).

Reading streams: JSONL line by line, Parquet in record batches, so a file
is validated without being loaded whole first. What happens to a bad row is
the recipe's choice (``data.on_bad_row``): ``"error"`` stops at the first one
with a :class:`DataError` naming file, line and field; ``"skip"`` keeps going,
counts it and reports it in :attr:`LoadResult.summary`, and still gives up
when the share of bad rows exceeds ``max_bad_fraction`` -- a file that is 30%
garbage is a wrong file, not a noisy one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, Optional, Sequence, TypeVar, Union

from pagerl.data.errors import DataError, RowError
from pagerl.data.formats import format_for
from pagerl.data.rows import impression_to_row
from pagerl.data.types import Impression
from pagerl.data.validate import FieldError, impression_from_row, validate_row

PathLike = Union[str, os.PathLike]
T = TypeVar("T")
ON_BAD_ROW = ("skip", "error")
# How many bad rows a summary or an error message quotes in full.
_QUOTED_ERRORS = 5


@dataclass
class LoadResult:
    """What a read produced: the good impressions and an account of the bad rows."""

    impressions: List[Impression] = field(default_factory=list)
    bad_rows: List[RowError] = field(default_factory=list)
    num_rows: int = 0
    files: List[str] = field(default_factory=list)

    @property
    def num_bad(self) -> int:
        return len(self.bad_rows)

    @property
    def bad_fraction(self) -> float:
        return self.num_bad / self.num_rows if self.num_rows else 0.0

    @property
    def summary(self) -> str:
        files = ", ".join(self.files) if len(self.files) <= 3 else f"{len(self.files)} files"
        text = (
            f"{self.num_rows} rows from {files}: {len(self.impressions)} ok, "
            f"{self.num_bad} bad ({100.0 * self.bad_fraction:.2f}%)"
        )
        if self.bad_rows:
            quoted = "; ".join(str(e) for e in self.bad_rows[:_QUOTED_ERRORS])
            more = f" (+{self.num_bad - _QUOTED_ERRORS} more)" if self.num_bad > _QUOTED_ERRORS else ""
            text += f". Bad rows: {quoted}{more}"
        return text

    def __str__(self) -> str:
        return self.summary


def _as_paths(paths: Union[PathLike, Sequence[PathLike]]) -> List[str]:
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]


def iter_impressions(path: PathLike, batch_size: int = 1024) -> Iterator[Union[Impression, RowError]]:
    """Stream one file: each row becomes an Impression or a RowError, in file order."""
    path = os.fspath(path)
    fmt = format_for(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such data file")
    for number, decoded in fmt.read_rows(path, batch_size=batch_size):
        if isinstance(decoded, RowError):
            yield decoded
        else:
            yield validate_row(decoded, path, number, unit=fmt.unit)


def read_impressions(
    paths: Union[PathLike, Sequence[PathLike]],
    on_bad_row: str = "skip",
    max_bad_fraction: float = 0.05,
    batch_size: int = 1024,
) -> LoadResult:
    """Read and validate impression files (JSONL or Parquet, by extension).

    ``on_bad_row="error"`` raises a DataError at the first bad row, naming its
    file and line; ``"skip"`` drops bad rows, keeps them in ``bad_rows`` and
    raises only if more than ``max_bad_fraction`` of all rows read are bad.
    """
    check_bad_row_policy(on_bad_row, max_bad_fraction)
    result = LoadResult(files=_as_paths(paths))
    for path in result.files:
        for entry in iter_impressions(path, batch_size=batch_size):
            impression = tally(result, entry, on_bad_row)
            if impression is not None:
                result.impressions.append(impression)
    check_bad_fraction(result, on_bad_row, max_bad_fraction)
    return result


def check_bad_row_policy(on_bad_row: str, max_bad_fraction: float) -> None:
    """Refuse settings of ``data.on_bad_row`` / ``data.max_bad_fraction`` that mean nothing."""
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"data.on_bad_row: expected one of {ON_BAD_ROW}, got {on_bad_row!r}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"data.max_bad_fraction: expected a share in [0, 1], got {max_bad_fraction!r}")


def tally(result: LoadResult, entry: Union[T, RowError], on_bad_row: str) -> Optional[T]:
    """Count one read row into ``result``: a RowError is kept in ``bad_rows`` (or raised when
    ``on_bad_row`` is ``"error"``) and gives None; a good row is returned for the caller to keep.

    Every reader of rows (impression files, :mod:`pagerl.data.obd`) goes
    through here, so a bad row is accounted the same way wherever it is read."""
    result.num_rows += 1
    if isinstance(entry, RowError):
        if on_bad_row == "error":
            raise DataError(f"bad row in {entry} (data.on_bad_row is 'error')")
        result.bad_rows.append(entry)
        return None
    return entry


def check_bad_fraction(result: LoadResult, on_bad_row: str, max_bad_fraction: float) -> None:
    """In ``skip`` mode, fail when more than ``max_bad_fraction`` of the rows read were bad."""
    if on_bad_row == "skip" and result.bad_fraction > max_bad_fraction:
        raise DataError(
            f"too many bad rows: {100.0 * result.bad_fraction:.2f}% > data.max_bad_fraction "
            f"{100.0 * max_bad_fraction:.2f}%. {result.summary}"
        )


def validate_file(path: PathLike, batch_size: int = 1024) -> LoadResult:
    """Check every row of a file and report all bad rows; never raises for bad rows."""
    return read_impressions(path, on_bad_row="skip", max_bad_fraction=1.0, batch_size=batch_size)


def write_impressions(
    path: PathLike, impressions: Iterable[Impression], validate: bool = True, batch_size: int = 1024
) -> int:
    """Write impressions as JSONL or Parquet (by extension); returns the row count.

    Each row is checked by the same rules the reader applies (``validate``),
    so a file this function writes always reads back: a broken impression is
    reported here, by its position, instead of in some later stage.
    The file appears under its name only once complete.
    """
    path = os.fspath(path)
    fmt = format_for(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)

    def rows():
        for index, imp in enumerate(impressions):
            row = impression_to_row(imp)
            if validate:
                try:
                    impression_from_row(row)
                except FieldError as err:
                    raise DataError(
                        f"{path}: impression {index} (request_id {imp.request.request_id!r}) is invalid: "
                        f"{err.field}: {err.message}"
                    ) from None
            yield row

    return fmt.write_rows(path, rows(), batch_size=batch_size)
