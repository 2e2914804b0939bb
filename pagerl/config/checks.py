"""Checks of single recipe keys, written on the schema fields they check.

A field of the schema (:mod:`pagerl.config.schema`) carries its own checks in
its dataclass metadata, built by the helpers here::

    num_workers: int = checked(2, at_least(1))
    backend: str = checked("auto", one_of("auto", "gloo", "nccl"))
    algorithm: str = registered("rl.algorithm", "grpo")
    stages: List[str] = registered("run.stages", factory(lambda: ["synth", "sft", "eval"]))

A check is a function of the field's value alone that returns what was
expected and the value got (``"expected at least 1, got 0"``), or None when
the value is fine; a check the helpers do not cover is a small function
written beside its section in the schema. :func:`field_findings` walks the
loaded recipe once and runs every field's checks (the first one that fails
is reported for that key).

A field marked with :func:`registered` holds a name (or, for a list, names)
of an entry of the :class:`~pagerl.registry.Registry` with that key;
:func:`registry_findings` checks every marked field against the registry of
its key (:data:`pagerl.registry.REGISTRIES`) in one loop, listing the valid
names. The registries are filled by the subsystems that own them, above
``config``, so they exist only once those modules are imported:
:func:`pagerl.app.recipes.load_recipe` imports them all. A marked key whose
registry does not exist when the loop runs is a programming error
(:class:`RegistryNotLoadedError`), not a mistake in the recipe.

Conditions between several keys ("K must not exceed N") are rules
(:mod:`pagerl.config.rules`), not checks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, get_type_hints

from pagerl.registry import registry_of

# A check: the value of one field -> None when it is fine, else what was expected and what it got.
Check = Callable[[Any], Optional[str]]
# (dotted key, message) of one problem.
Problem = Tuple[str, str]

CHECKS = "checks"
REGISTRY = "registry"


class RegistryNotLoadedError(RuntimeError):
    """A schema field names a registry that no imported module has created (a bug, not bad input)."""


# ------------------------------------------------------------ building fields

@dataclasses.dataclass(frozen=True)
class factory:
    """A default made by calling ``make`` for each recipe (a list), for :func:`checked`."""

    make: Callable[[], Any]


def checked(default: Any, *checks: Check, registry: Optional[str] = None) -> Any:
    """A dataclass field with ``default`` (a value, or a :class:`factory`) that carries ``checks``
    (run in order; the first that fails is reported) and, with ``registry``, the key of the
    registry its value names an entry of."""
    metadata: Dict[str, Any] = {CHECKS: tuple(checks)}
    if registry is not None:
        metadata[REGISTRY] = registry
    if isinstance(default, factory):
        return dataclasses.field(default_factory=default.make, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def registered(registry: str, default: Any, *checks: Check) -> Any:
    """A field whose value is the name of an entry of the registry with key ``registry`` (the
    field's own recipe key); a list-valued field holds names, each of which must be an entry."""
    return checked(default, *checks, registry=registry)


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


def registry_keys(cls: type) -> Dict[str, str]:
    """Dotted key -> registry key of every field of ``cls`` marked with :func:`registered`."""
    return {key: f.metadata[REGISTRY] for key, f in schema_fields(cls) if REGISTRY in f.metadata}


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


def registry_findings(recipe: Any, marked: Dict[str, str]) -> List[Problem]:
    """Check every key of ``marked`` (dotted key -> registry key) in ``recipe`` against the registry
    of that key: a name, or each name of a list, must be an entry.

    Raises :class:`RegistryNotLoadedError` for a registry that does not exist yet."""
    found: List[Problem] = []
    for key, registry_key in marked.items():
        registry = registry_of(registry_key)
        if registry is None:
            raise RegistryNotLoadedError(
                f"'{key}' names an entry of the registry {registry_key!r}, which is not loaded: the module "
                "that creates it has not been imported. Load recipes through pagerl.app.recipes.load_recipe, "
                "which imports every registry (through pagerl.stages); a new registry's module must be imported "
                "from there."
            )
        value = _value_at(recipe, key)
        choices = ", ".join(map(repr, sorted(registry)))
        if isinstance(value, str):
            if value not in registry:
                found.append((key, f"expected one of {choices}, got {value!r}"))
        else:
            unknown = [name for name in value if name not in registry]
            if unknown:
                found.append((key, f"expected names from {choices}; unknown: {', '.join(map(repr, unknown))}"))
    return found


def _value_at(recipe: Any, key: str) -> Any:
    value = recipe
    for part in key.split("."):
        value = getattr(value, part)
    return value
