"""Row-by-row validation: a decoded row (a dict in the JSON row layout of
:mod:`pagerl.data`) becomes an :class:`~pagerl.data.types.Impression` or a
:class:`~pagerl.data.errors.RowError`.

Why so strict: every later stage (prompt building, preference pairs, reward
training, IPS evaluation) silently assumes the invariants checked here. A
page item missing from the candidates would crash the tokenizer three stages
later with no hint of the file it came from; a click logged as ``"1"`` or
``2`` would quietly skew the engagement weights. Checking once, at the
border, lets the rest of the code trust its inputs and lets the user fix the
row the message points at.

Rules (the first broken rule of a row is reported):

- required: ``request_id`` (non-empty string), ``user.user_id``,
  ``page_size`` (integer >= 1), ``candidates``, ``page``, ``feedback``,
  ``page_outcome`` with numeric ``gmv`` and ``clicks``;
- optional: ``query`` (string or null), ``propensity`` (null or in (0, 1]),
  ``user.features`` / ``user.history`` / ``user.history_categories``
  (default empty; ``history_categories`` is empty or as long as ``history``),
  ``candidates[].attrs`` (object, default ``{}``), ``feedback[].purchase``
  (default 0), ``feedback[].dwell`` (default 0.0);
- numbers are JSON numbers (a string such as ``"12.5"`` or a boolean is
  rejected), finite; prices and dwell times are >= 0; ``click`` and
  ``purchase`` are the integers 0 or 1;
- candidate ids are unique; the page holds ``page_size`` distinct candidate
  ids; ``feedback`` lists the page's items in the page's slot order;
- keys not in the layout are ignored (the types have nowhere to keep them).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Union

from pagerl.data.errors import RowError
from pagerl.data.types import Impression, Item, ItemFeedback, Request, User


class FieldError(Exception):
    """Raised inside the checks below; turned into a RowError by the caller."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


_MISSING = object()


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _get(obj: Dict[str, Any], key: str, path: str, default: Any = _MISSING) -> Any:
    if key in obj:
        return obj[key]
    if default is _MISSING:
        raise FieldError(path, "missing required field")
    return default


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _object(value: Any, path: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise FieldError(path, f"expected an object, got {_describe(value)}")
    return value


def _list(value: Any, path: str) -> List[Any]:
    if not isinstance(value, list):
        raise FieldError(path, f"expected a list, got {_describe(value)}")
    return value


def _string(value: Any, path: str, *, nonempty: bool = True) -> str:
    if not isinstance(value, str):
        raise FieldError(path, f"expected a string, got {_describe(value)}")
    if nonempty and not value:
        raise FieldError(path, "expected a non-empty string")
    return value


def _number(value: Any, path: str, *, minimum: Optional[float] = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(path, f"expected a number, got {_describe(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise FieldError(path, f"expected a finite number, got {value!r}")
    if minimum is not None and number < minimum:
        raise FieldError(path, f"expected a number >= {minimum:g}, got {value!r}")
    return number


def _integer(value: Any, path: str, *, minimum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(path, f"expected an integer, got {_describe(value)}")
    if minimum is not None and value < minimum:
        raise FieldError(path, f"expected an integer >= {minimum}, got {value}")
    return value


def _binary(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1):
        raise FieldError(path, f"expected 0 or 1, got {_describe(value)}")
    return value


def _user(value: Any, path: str) -> User:
    obj = _object(value, path)
    user_id = _string(_get(obj, "user_id", _join(path, "user_id")), _join(path, "user_id"))
    fpath, hpath, cpath = (_join(path, k) for k in ("features", "history", "history_categories"))
    features = [
        _number(v, f"{fpath}[{i}]") for i, v in enumerate(_list(_get(obj, "features", fpath, []), fpath))
    ]
    history = [
        _string(v, f"{hpath}[{i}]") for i, v in enumerate(_list(_get(obj, "history", hpath, []), hpath))
    ]
    categories = [
        _string(v, f"{cpath}[{i}]")
        for i, v in enumerate(_list(_get(obj, "history_categories", cpath, []), cpath))
    ]
    if categories and len(categories) != len(history):
        raise FieldError(
            cpath,
            f"has {len(categories)} entries but history has {len(history)} "
            "(expected one category per history item, or an empty list)",
        )
    return User(user_id=user_id, features=features, history=history, history_categories=categories)


def _item(value: Any, path: str) -> Item:
    obj = _object(value, path)
    apath = _join(path, "attrs")
    return Item(
        item_id=_string(_get(obj, "item_id", _join(path, "item_id")), _join(path, "item_id")),
        title=_string(_get(obj, "title", _join(path, "title")), _join(path, "title"), nonempty=False),
        category=_string(_get(obj, "category", _join(path, "category")), _join(path, "category")),
        price=_number(_get(obj, "price", _join(path, "price")), _join(path, "price"), minimum=0.0),
        attrs=dict(_object(_get(obj, "attrs", apath, {}), apath)),
    )


def _feedback(value: Any, path: str) -> ItemFeedback:
    obj = _object(value, path)
    return ItemFeedback(
        item_id=_string(_get(obj, "item_id", _join(path, "item_id")), _join(path, "item_id")),
        click=_binary(_get(obj, "click", _join(path, "click")), _join(path, "click")),
        purchase=_binary(_get(obj, "purchase", _join(path, "purchase"), 0), _join(path, "purchase")),
        dwell=_number(_get(obj, "dwell", _join(path, "dwell"), 0.0), _join(path, "dwell"), minimum=0.0),
    )


def _page_outcome(value: Any, path: str) -> Dict[str, float]:
    obj = _object(value, path)
    for key in ("gmv", "clicks"):
        _get(obj, key, _join(path, key))
    outcome = {}
    for key, v in obj.items():
        outcome[_string(key, path)] = _number(v, _join(path, key))
    return outcome


def impression_from_row(row: Any) -> Impression:
    """Check one decoded row and build its Impression; raises FieldError."""
    row = _object(row, "")
    request_id = _string(_get(row, "request_id", "request_id"), "request_id")
    user = _user(_get(row, "user", "user"), "user")
    query = _get(row, "query", "query", None)
    if query is not None:
        query = _string(query, "query", nonempty=False)
    page_size = _integer(_get(row, "page_size", "page_size"), "page_size", minimum=1)

    candidates = [
        _item(v, f"candidates[{i}]") for i, v in enumerate(_list(_get(row, "candidates", "candidates"), "candidates"))
    ]
    first_seen: Dict[str, int] = {}
    for i, item in enumerate(candidates):
        if item.item_id in first_seen:
            raise FieldError(
                f"candidates[{i}].item_id",
                f"duplicate candidate id {item.item_id!r} (also at candidates[{first_seen[item.item_id]}])",
            )
        first_seen[item.item_id] = i
    if page_size > len(candidates):
        raise FieldError("page_size", f"is {page_size} but there are only {len(candidates)} candidates")

    page = [_string(v, f"page[{i}]") for i, v in enumerate(_list(_get(row, "page", "page"), "page"))]
    shown: Dict[str, int] = {}
    for slot, item_id in enumerate(page):
        if item_id not in first_seen:
            raise FieldError(f"page[{slot}]", f"item {item_id!r} is not among the candidates")
        if item_id in shown:
            raise FieldError(
                f"page[{slot}]", f"item {item_id!r} appears twice in the page (also at page[{shown[item_id]}])"
            )
        shown[item_id] = slot
    if len(page) != page_size:
        raise FieldError("page", f"has {len(page)} items but page_size is {page_size}")

    feedback = [
        _feedback(v, f"feedback[{i}]") for i, v in enumerate(_list(_get(row, "feedback", "feedback"), "feedback"))
    ]
    if len(feedback) != len(page):
        raise FieldError(
            "feedback", f"has {len(feedback)} entries but the page has {len(page)} (expected one per shown item)"
        )
    for slot, (fb, item_id) in enumerate(zip(feedback, page)):
        if fb.item_id != item_id:
            raise FieldError(
                f"feedback[{slot}].item_id",
                f"is {fb.item_id!r} but page[{slot}] is {item_id!r} "
                "(expected feedback for the page's items in slot order)",
            )

    page_outcome = _page_outcome(_get(row, "page_outcome", "page_outcome"), "page_outcome")
    propensity = _get(row, "propensity", "propensity", None)
    if propensity is not None:
        propensity = _number(propensity, "propensity")
        if not 0.0 < propensity <= 1.0:
            raise FieldError("propensity", f"expected a probability in (0, 1], got {propensity!r}")

    request = Request(
        request_id=request_id, user=user, candidates=candidates, page_size=page_size, query=query
    )
    return Impression(
        request=request, page=page, feedback=feedback, page_outcome=page_outcome, propensity=propensity
    )


def validate_row(row: Any, file: str, line: int, unit: str = "line") -> Union[Impression, RowError]:
    """The Impression of a decoded row, or the RowError saying where it is wrong."""
    try:
        return impression_from_row(row)
    except FieldError as err:
        return RowError(file=file, line=line, field=err.field, message=err.message, unit=unit)
