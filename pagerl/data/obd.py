"""The Open Bandit Dataset (OBD) sample that obp ships, read as logged impressions.

Why: it is real logged feedback -- ZOZOTOWN's fashion recommendations under
two logging policies (uniform random and Bernoulli Thompson sampling), with
each shown item's true propensity -- where everything else PageRL reads was
written by its own simulator.

What a row is: one CSV row of ``{policy}/{campaign}/{campaign}.csv`` is ONE
item shown at ONE of three positions (1, 2, 3: left, centre, right) with its
click and the logging policy's probability of that item at that position
(``propensity_score``; the OBD README calls it ``action_prob``). The page
the other two positions belonged to cannot be rebuilt: the shipped sample is
10,000 rows drawn from the whole log, and in each file at most 11 timestamps
hold two rows (at different positions) and none holds three, so grouping by
timestamp would build partial pages for at most 0.22% of the rows and leave
the rest alone. So each row becomes one
:class:`~pagerl.data.types.Impression` of page size 1:

- candidates: the campaign's items from ``item_context.csv`` (every item the
  logging policy chose among, so the propensity is the probability of this
  one-slot page among them), or only the shown item with ``candidates="shown"``
  (a compact file whose pages cannot be learned from);
- page and feedback: the shown item and its click; ``page_outcome`` is
  ``{"gmv": 0.0, "clicks": click}``: OBD logs no purchases, so the GMV the
  schema requires is 0.0 and means "not logged", not "no sale";
- propensity: ``propensity_score``;
- request_id ``obd/<policy>/<campaign>/line-<n>/position-<p>``: the CSV line
  and the position, which the schema has no field for;
- user: OBD has no user id. ``user_id`` is ``segment-<hash>`` of the four
  hashed ``user_feature_*`` columns (rows with the same user features share
  it: a segment, not a person), ``user.features`` the user-item affinities
  (``user-item_affinity_<j>``, one per campaign item, derived from past
  clicks); there is no history and no query;
- items carry no text: the title is ``"item <j>"``, the category a short
  prefix of the hashed ``item_feature_1`` (which of the hashed features is a
  category is not published; this one puts the items of the ``all``,
  ``men`` and ``women`` campaigns in 12, 7 and 10 groups), the price 0.0
  (not logged); all four item features are kept in ``attrs``.

Lost on the way: the position (except in the request id), the timestamp, the
hashed user features' values, and any page structure. The rows as read are
kept beside the impressions (:class:`ObdLog`), so the position-aware
estimators of :mod:`pagerl.eval.obd_bts` use them directly.

A row that cannot be converted (a missing or malformed field, an item not
in ``item_context.csv``, a propensity outside (0, 1], a click other than 0 or
1) is a :class:`~pagerl.data.errors.RowError` naming file, line and column,
counted and reported through :func:`pagerl.data.io.tally` exactly as bad rows
of impression files are (``on_bad_row``, ``max_bad_fraction``).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from pagerl.data.errors import DataError, RowError
from pagerl.data.io import LoadResult, PathLike, check_bad_fraction, check_bad_row_policy, tally, write_impressions
from pagerl.data.types import Impression, Item, ItemFeedback, Request, User
from pagerl.data.validate import FieldError

BEHAVIOR_POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
POSITIONS = (1, 2, 3)
CANDIDATES = ("all", "shown")
REQUIRED_COLUMNS = ("timestamp", "item_id", "position", "click", "propensity_score")
ITEM_COLUMNS = ("item_id", "item_feature_0", "item_feature_1", "item_feature_2", "item_feature_3")
USER_FEATURE_PREFIX = "user_feature_"
AFFINITY_PREFIX = "user-item_affinity_"
# Hex digits of a hashed feature kept in a category name: short for the prompt, checked distinct.
CATEGORY_PREFIX_LENGTH = 8
INSTALL_HINT = "the OBD sample ships inside obp: pip install 'pagerl[obp]' (or pip install obp==0.4.1)"


@dataclass(frozen=True)
class ObdRow:
    """One CSV row as logged: what the Impression keeps and what it cannot hold."""

    line: int
    timestamp: str
    item: int
    position: int  # as logged: 1, 2 or 3 (left, centre, right)
    click: int
    propensity: float
    user_features: Tuple[str, ...]
    affinity: Tuple[float, ...]


@dataclass
class ObdLog:
    """One campaign file: its impressions (``result``, with the bad-row account) and the
    rows they came from, aligned one to one with ``result.impressions``."""

    behavior_policy: str
    campaign: str
    items: List[Item]
    rows: List[ObdRow]
    result: LoadResult

    @property
    def impressions(self) -> List[Impression]:
        return self.result.impressions

    @property
    def clicks(self) -> np.ndarray:
        return np.array([r.click for r in self.rows], dtype=np.float64)

    @property
    def propensities(self) -> np.ndarray:
        return np.array([r.propensity for r in self.rows], dtype=np.float64)

    @property
    def item_indices(self) -> np.ndarray:
        return np.array([r.item for r in self.rows], dtype=np.int64)

    @property
    def slots(self) -> np.ndarray:
        """0-based positions (the logged position minus one)."""
        return np.array([r.position - 1 for r in self.rows], dtype=np.int64)


def obp_package_dir() -> Path:
    """The installed obp package's folder, found without importing obp (which pulls torch,
    scikit-learn and seaborn); a DataError saying how to install it otherwise."""
    spec = importlib.util.find_spec("obp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"obp is not installed and no data_dir was given: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def shipped_obd_dir() -> Path:
    """The ``obp/dataset/obd`` folder of the installed obp: the 10,000-row sample of each campaign."""
    return obp_package_dir() / "dataset" / "obd"


def campaign_files(behavior_policy: str, campaign: str, data_dir: Optional[PathLike] = None) -> Tuple[Path, Path]:
    """``(rows CSV, item_context.csv)`` of one campaign under ``data_dir`` (default: obp's sample)."""
    if behavior_policy not in BEHAVIOR_POLICIES:
        raise ValueError(f"behavior_policy: expected one of {BEHAVIOR_POLICIES}, got {behavior_policy!r}")
    if campaign not in CAMPAIGNS:
        raise ValueError(f"campaign: expected one of {CAMPAIGNS}, got {campaign!r}")
    folder = (Path(data_dir) if data_dir is not None else shipped_obd_dir()) / behavior_policy / campaign
    paths = (folder / f"{campaign}.csv", folder / "item_context.csv")
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: no such OBD file (expected <data_dir>/<policy>/<campaign>/{path.name})")
    return paths


def read_item_context(path: PathLike, category_feature: str = "item_feature_1") -> List[Item]:
    """The campaign's items, by item id. A broken row here is fatal (a DataError naming its
    line): without the catalogue no impression of the campaign can be built."""
    if category_feature not in ITEM_COLUMNS[2:]:
        raise ValueError(f"category_feature: expected one of {ITEM_COLUMNS[2:]}, got {category_feature!r}")
    path = os.fspath(path)
    items: Dict[int, Item] = {}
    for line, record in _records(path, ITEM_COLUMNS):
        if isinstance(record, RowError):
            raise DataError(f"{record} (item_context.csv must be complete)")
        try:
            j = _integer(record["item_id"], "item_id", minimum=0)
            numeric = _finite(record["item_feature_0"], "item_feature_0")
            hashed = {c: _text(record[c], c) for c in ITEM_COLUMNS[2:]}
        except FieldError as err:
            raise DataError(f"{path} line {line}: {err.field}: {err.message}") from None
        if j in items:
            raise DataError(f"{path} line {line}: item_id: item {j} appears twice")
        items[j] = Item(
            item_id=f"item-{j}",
            title=f"item {j}",
            category=f"c-{hashed[category_feature][:CATEGORY_PREFIX_LENGTH]}",
            price=0.0,
            attrs={"obd_item_id": j, "item_feature_0": numeric, **hashed},
        )
    if not items:
        raise DataError(f"{path}: no items")
    _check_category_prefixes(path, items.values(), category_feature)
    return [items[j] for j in sorted(items)]


def iter_obd_rows(path: PathLike, item_ids: Sequence[int]) -> Iterator[Union[ObdRow, RowError]]:
    """Each data row of a campaign CSV as an :class:`ObdRow`, or the RowError naming its line and column."""
    path = os.fspath(path)
    known = set(item_ids)
    for line, record in _records(path, REQUIRED_COLUMNS):
        if isinstance(record, RowError):
            yield record
            continue
        try:
            yield _row(line, record, known)
        except FieldError as err:
            yield RowError(file=path, line=line, field=err.field, message=err.message)


def load_obd(
    behavior_policy: str,
    campaign: str,
    data_dir: Optional[PathLike] = None,
    candidates: str = "all",
    category_feature: str = "item_feature_1",
    on_bad_row: str = "skip",
    max_bad_fraction: float = 0.05,
) -> ObdLog:
    """One campaign's rows as one-slot impressions (see the module docstring for the mapping)."""
    if candidates not in CANDIDATES:
        raise ValueError(f"candidates: expected one of {CANDIDATES}, got {candidates!r}")
    check_bad_row_policy(on_bad_row, max_bad_fraction)
    rows_path, items_path = campaign_files(behavior_policy, campaign, data_dir)
    items = read_item_context(items_path, category_feature)
    by_index = {item.attrs["obd_item_id"]: item for item in items}
    log = ObdLog(behavior_policy, campaign, items, [], LoadResult(files=[os.fspath(rows_path)]))
    for entry in iter_obd_rows(rows_path, list(by_index)):
        row = tally(log.result, entry, on_bad_row)
        if row is not None:
            log.rows.append(row)
            shown = by_index[row.item]
            log.result.impressions.append(
                _impression(row, shown, items if candidates == "all" else [shown], behavior_policy, campaign)
            )
    check_bad_fraction(log.result, on_bad_row, max_bad_fraction)
    return log


def write_obd_jsonl(log: ObdLog, path: PathLike, limit: Optional[int] = None) -> int:
    """Write the log's impressions (the first ``limit``, if given) with the project's
    writer, so ``pagerl data validate`` reads them back; returns the row count."""
    impressions = log.impressions if limit is None else log.impressions[: int(limit)]
    return write_impressions(path, impressions)


# ----------------------------------------------------------------------------- rows
def _impression(row: ObdRow, shown: Item, candidates: Sequence[Item], policy: str, campaign: str) -> Impression:
    segment = hashlib.sha1("\x1f".join(row.user_features).encode("utf-8")).hexdigest()[:12]
    request = Request(
        request_id=f"obd/{policy}/{campaign}/line-{row.line}/position-{row.position}",
        user=User(user_id=f"segment-{segment}", features=list(row.affinity)),
        candidates=list(candidates),
        page_size=1,
    )
    return Impression(
        request=request,
        page=[shown.item_id],
        feedback=[ItemFeedback(item_id=shown.item_id, click=row.click)],
        page_outcome={"gmv": 0.0, "clicks": float(row.click)},
        propensity=row.propensity,
    )


def _row(line: int, record: Dict[str, str], known_items: set) -> ObdRow:
    item = _integer(record["item_id"], "item_id", minimum=0)
    if item not in known_items:
        raise FieldError("item_id", f"item {item} is not in item_context.csv")
    position = _integer(record["position"], "position")
    if position not in POSITIONS:
        raise FieldError("position", f"expected one of {POSITIONS}, got {position}")
    click = _integer(record["click"], "click")
    if click not in (0, 1):
        raise FieldError("click", f"expected 0 or 1, got {click}")
    propensity = _finite(record["propensity_score"], "propensity_score")
    if not 0.0 < propensity <= 1.0:
        raise FieldError("propensity_score", f"expected a probability in (0, 1], got {propensity!r}")
    columns = list(record)
    return ObdRow(
        line=line,
        timestamp=_text(record["timestamp"], "timestamp"),
        item=item,
        position=position,
        click=click,
        propensity=propensity,
        user_features=tuple(_text(record[c], c) for c in columns if c.startswith(USER_FEATURE_PREFIX)),
        affinity=tuple(_finite(record[c], c) for c in columns if c.startswith(AFFINITY_PREFIX)),
    )


def _records(path: str, required: Sequence[str]) -> Iterator[Tuple[int, Union[Dict[str, str], RowError]]]:
    """``(line, {column: text})`` per data row of a CSV (line 1 is the header), or a RowError for a
    row whose field count is off. Blank lines are reported when a row follows them (a spliced file)
    and ignored at the end."""
    try:
        handle = open(path, newline="", encoding="utf-8")
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file (expected a header line)")
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path} line 1: missing column(s) {missing} in the header")
        blank: List[int] = []
        try:
            for fields in reader:
                line = reader.line_num
                if not fields:
                    blank.append(line)
                    continue
                for at in blank:
                    yield at, RowError(file=path, line=at, field="", message="blank line between rows")
                blank = []
                if len(fields) != len(header):
                    message = f"has {len(fields)} fields, the header has {len(header)}"
                    yield line, RowError(file=path, line=line, field="", message=message)
                    continue
                yield line, dict(zip(header, fields))
        except (csv.Error, UnicodeDecodeError) as err:
            raise DataError(f"{path} line {reader.line_num + 1}: unreadable CSV ({err})") from None


def _text(value: str, column: str) -> str:
    if not value:
        raise FieldError(column, "expected a non-empty value")
    return value


def _integer(value: str, column: str, minimum: Optional[int] = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise FieldError(column, f"expected an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise FieldError(column, f"expected an integer >= {minimum}, got {number}")
    return number


def _finite(value: str, column: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise FieldError(column, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise FieldError(column, f"expected a finite number, got {value!r}")
    return number


def _check_category_prefixes(path: str, items: Sequence[Item], feature: str) -> None:
    """Two different hashed values must not share a category name."""
    seen: Dict[str, str] = {}
    for item in items:
        full = item.attrs[feature]
        if seen.setdefault(item.category, full) != full:
            raise DataError(
                f"{path}: {feature} values {seen[item.category]!r} and {full!r} share the prefix "
                f"{item.category!r}; raise CATEGORY_PREFIX_LENGTH"
            )
