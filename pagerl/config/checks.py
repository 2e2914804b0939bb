"""Checks of single recipe keys, written on the schema fields they check.

A field of the schema (:mod:`pagerl.config.schema`) carries its own checks in
its dataclass metadata, built by the helpers here::

    num_workers: int = checked(2, at_least(1))
    backend: str = checked("auto", one_of("auto", "gloo", "nccl"))
    seeds: List[int] = checked(factory(lambda: [0, 1, 2]), check(lambda v: len(v) > 0, "a seed"))

A check is a function of the field's value alone that returns what was
expected and the value got (``"expected at least 1, got 0"``), or None when
the value is fine; a check the helpers do not cover is a small function
written beside its section in the schema. :func:`field_findings` walks the
loaded recipe once and runs every field's checks (the first one that fails
is reported for that key).

Conditions between several keys ("K must not exceed N") are rules
(:mod:`pagerl.config.rules`), not checks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, get_type_hints

# A check: the value of one field -> None when it is fine, else what was expected and what it got.
Check = Callable[[Any], Optional[str]]
# (dotted key, message) of one problem.
Problem = Tuple[str, str]

CHECKS = "checks"


# ------------------------------------------------------------ building fields

@dataclasses.dataclass(frozen=True)
class factory:
    """A default made by calling ``make`` for each recipe (a list), for :func:`checked`."""

    make: Callable[[], Any]


def checked(default: Any, *checks: Check) -> Any:
    """A dataclass field with ``default`` (a value, or a :class:`factory`) that carries ``checks``
    (run in order; the first that fails is reported)."""
    metadata: Dict[str, Any] = {CHECKS: tuple(checks)}
    if isinstance(default, factory):
        return dataclasses.field(default_factory=default.make, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ------------------------------------------------------------ checks

def check(ok: Callable[[Any], bool], expected: str) -> Check:
    """Fails with ``expected <expected>, got <value>`` when ``ok(value)`` is false."""

    def run(value: Any) -> Optional[str]:
        return None if ok(value) else f"expected {expected}, got {value!r}"

    run.__doc__ = f"expected {expected}"
    return run


def at_least(low: float, expected: Optional[str] = None) -> Check:
    """``value >= low``; ``expected`` says it in the field's words (default "at least 1", "0 or more")."""
    if expected is None:
        expected = "0 or more" if low == 0 else f"at least {low}"
    return check(lambda v: v >= low, expected)


def greater_than(low: float, expected: Optional[str] = None) -> Check:
    """``value > low`` (default wording "more than <low>")."""
    return check(lambda v: v > low, expected or f"more than {low}")


def positive(expected: str = "a positive number") -> Check:
    """``value > 0``, e.g. ``positive("a positive learning rate")``."""
    return check(lambda v: v > 0, expected)


def between(low: float, high: float, expected: Optional[str] = None, *, low_open: bool = False,
            high_open: bool = False) -> Check:
    """``low <= value <= high``; an open end excludes its bound (default wording "a value in [0, 1)")."""
    if expected is None:
        expected = f"a value in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def ok(v: Any) -> bool:
        return (low < v if low_open else low <= v) and (v < high if high_open else v <= high)

    return check(ok, expected)


def fraction(expected: str = "a fraction in [0, 1]") -> Check:
    """``0 <= value <= 1``."""
    return between(0.0, 1.0, expected)


def one_of(*choices: Any) -> Check:
    """The value is one of ``choices`` (``expected one of 'a', 'b', got 'c'``)."""
    return check(lambda v: v in choices, f"one of {', '.join(map(repr, choices))}")


def not_blank(expected: str) -> Check:
    """A string with something besides spaces, e.g. ``not_blank("a W&B project name")``."""
    return check(lambda v: bool(str(v).strip()), expected)


# ------------------------------------------------------------ running them

def schema_fields(cls: type, prefix: str = "") -> Iterator[Tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every field of the dataclass ``cls`` and of the sections under it."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        yield key, f
        if dataclasses.is_dataclass(hints.get(f.name)):
            yield from schema_fields(hints[f.name], key + ".")


def field_findings(recipe: Any, prefix: str = "") -> List[Problem]:
    """Run the checks of every field of ``recipe`` (a loaded dataclass) and of its sections."""
    found: List[Problem] = []
    for f in dataclasses.fields(recipe):
        key, value = f"{prefix}{f.name}", getattr(recipe, f.name)
        for run in f.metadata.get(CHECKS, ()):
            message = run(value)
            if message:
                found.append((key, message))
                break
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            found.extend(field_findings(value, key + "."))
    return found
