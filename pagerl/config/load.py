"""Recipe loading: YAML layers merged over the typed schema, validated before any work.

A recipe is a YAML file whose sections mirror :class:`~pagerl.config.schema.RecipeConfig`.
It may name a ``base:`` recipe (a path relative to itself) that it extends; the
chain is merged base first, then the recipe, then command-line overrides
``section.key=value``. Each layer is checked on its own before it is merged,
so a problem is named with the file (and line) or the override that
introduced it. One load reports every problem it finds, in one
:class:`~pagerl.errors.RecipeError`, one line each (location, key, what was
expected), in this order:

- an unknown key, with the closest valid key suggested (every layer);
- a value of the wrong type for its key's annotation (every value; a bad one
  is left out of the merge, so the others are still checked);
- a required value (``???`` in the schema) that no layer sets;
- a value its field's own checks refuse (on the field in the schema:
  :mod:`pagerl.config.checks`);
- a name that is not an entry of the registry its field is marked with (one
  loop over every marked field: :func:`pagerl.config.checks.registry_findings`);
- an inconsistent combination of keys (rules in :mod:`pagerl.config.rules`, and
  those the subsystems register there: :mod:`pagerl.app.recipes`); a rule's
  finding for a key already reported above is left out;
- a path key naming an input that does not exist, or a URI (:mod:`pagerl.config.paths`).

Only a file that cannot be read (missing, not YAML, not a mapping, a ``base``
that is missing or forms a cycle) or an interpolation that cannot be
resolved stops the load before the later checks.

Every path key is made absolute against the directory the command was
started in, once, here (:mod:`pagerl.config.paths` says why).

Values are parsed as YAML scalars, never evaluated as code. OmegaConf
interpolations between keys (``${sim.page_size}``) are allowed; resolvers
(``${oc.env:HOME}`` and the like) are refused, because a recipe must say
everything a run depends on.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Set, Tuple, get_type_hints

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pagerl.config.checks import field_findings, registry_findings, registry_keys
from pagerl.config.paths import resolve_paths
from pagerl.config.rules import rule_findings
from pagerl.config.schema import RecipeConfig
from pagerl.errors import RecipeError

_RESOLVER = re.compile(r"\$\{\s*[\w.\-]+\s*:")
_ABSENT = object()


@dataclass
class Layer:
    """One source of recipe values: a file or the command-line overrides."""

    name: str  # file path, or "command line"
    values: DictConfig
    lines: Dict[str, int]  # dotted key -> 1-based line in the file (files only)
    overrides: Dict[str, str]  # dotted key -> the override text (command line only)

    def where(self, key: str) -> str:
        """Human-readable location of ``key`` in this layer, for error messages."""
        if key in self.overrides:
            return f"override '{self.overrides[key]}'"
        line = self.lines.get(key)
        return f"{self.name}:{line}" if line else self.name

    def position(self, key: str) -> int:
        """Where ``key`` comes in this layer (its line, or the place of its override), to report
        a layer's problems in the order they are written."""
        if key in self.overrides:
            return list(dict.fromkeys(self.overrides.values())).index(self.overrides[key])
        return self.lines.get(key, 0)


def _key_lines(text: str) -> Dict[str, int]:
    """Map each dotted key of a YAML document to the line it is written on."""
    lines: Dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = f"{prefix}{key_node.value}"
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key + ".")

    try:
        walk(yaml.compose(text), "")
    except yaml.YAMLError:
        pass  # reported with its own line by OmegaConf.load below
    return lines


def _read_file_layer(path: Path) -> Layer:
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    text = path.read_text()
    try:
        values = OmegaConf.create(yaml.safe_load(text) or {})
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(values, DictConfig):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(values).__name__}")
    return Layer(str(path), values, _key_lines(text), {})


def _override_layer(overrides: Sequence[str], problems: List[str]) -> Layer:
    """The command-line overrides as one layer; a malformed one is a problem, and left out."""
    values = OmegaConf.create({})
    texts: Dict[str, str] = {}
    for item in overrides:
        if "=" not in item or item.startswith("="):
            problems.append(f"override '{item}': expected section.key=value")
            continue
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            problems.append(f"override '{item}': value is not a valid YAML scalar or list: {exc}")
            continue
        try:
            OmegaConf.update(values, key, value, merge=True, force_add=True)
        except OmegaConfBaseException as exc:
            problems.append(f"override '{item}': cannot set '{key}': {_reason(exc)}")
            continue
        texts[key] = item
        # parents of an overridden key point at the same override
        parts = key.split(".")
        for i in range(1, len(parts)):
            texts.setdefault(".".join(parts[:i]), item)
    return Layer("command line", values, {}, texts)


def _schema_keys(cls: type, prefix: str = "") -> Dict[str, Any]:
    """Every dotted key of the schema, mapped to its type annotation."""
    out: Dict[str, Any] = {}
    hints = get_type_hints(cls)
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        out[key] = hints[f.name]
        if is_dataclass(hints[f.name]):
            out.update(_schema_keys(hints[f.name], key + "."))
    return out


_SCHEMA_KEYS = _schema_keys(RecipeConfig)
# Dotted key -> registry key of every field whose value names registry entries.
_REGISTRY_KEYS = registry_keys(RecipeConfig)


def _suggest(key: str) -> str:
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = [k for k in _SCHEMA_KEYS if k.startswith(parent) and "." not in k[len(parent):]]
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6) or difflib.get_close_matches(
        key, list(_SCHEMA_KEYS), n=1, cutoff=0.6
    )
    if close:
        return f"; did you mean '{close[0]}'?"
    names = ", ".join(sorted(k[len(parent):] for k in siblings))
    return f"; valid keys here: {names}"


def _check_keys(layer: Layer) -> List[Tuple[str, str]]:
    """(key, problem) of every unknown key, mapping where a value is expected, and resolver
    interpolation of ``layer``; each such key is taken out of the layer, so the rest merges."""
    found: List[Tuple[str, str]] = []

    def walk(node: DictConfig, prefix: str) -> None:
        for key in list(node.keys()):
            dotted = f"{prefix}{key}"
            value = node._get_node(key)
            if dotted not in _SCHEMA_KEYS:
                found.append((dotted, f"{layer.where(dotted)}: unknown key '{dotted}'{_suggest(dotted)}"))
            elif isinstance(value, DictConfig):
                if is_dataclass(_SCHEMA_KEYS[dotted]):
                    walk(value, dotted + ".")
                    continue
                found.append((dotted, f"{layer.where(dotted)}: '{dotted}' expects a single value, got a mapping"))
            else:
                raw = value._value() if hasattr(value, "_value") else value
                if not (isinstance(raw, str) and _RESOLVER.search(raw)):
                    continue
                found.append((dotted, (
                    f"{layer.where(dotted)}: '{dotted}' uses an OmegaConf resolver ({raw}); recipes may only "
                    "reference other keys (${section.key}), so that every input is in the recipe")))
            del node[key]

    walk(layer.values, "")
    return found


def _field_key(full_key: str) -> str:
    """The schema key an OmegaConf error's key falls under (``ablation.seeds[1]`` -> ``ablation.seeds``)."""
    return full_key.split("[", 1)[0]


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is None:
        return getattr(annotation, "__name__", str(annotation))
    args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
    origin = getattr(annotation, "_name", None) or _type_name(typing.get_origin(annotation))
    return f"{origin}[{args}]"


def _reason(exc: OmegaConfBaseException) -> str:
    return str(getattr(exc, "msg", None) or exc).splitlines()[0]


def _merge(merged: DictConfig, layer: Layer, found: List[Tuple[str, str]]) -> DictConfig:
    """``merged`` with ``layer`` merged over it. A value of the wrong type is a problem (added to
    ``found`` as (key, problem)) and is taken out of the layer, and the merge tried again, so every
    wrong value of the layer is reported."""
    for _ in range(len(_flat_keys(layer.values)) + 1):
        try:
            return OmegaConf.merge(merged, layer.values)
        except OmegaConfBaseException as exc:
            key = _field_key(getattr(exc, "full_key", "") or "")
            node = OmegaConf.select(layer.values, key, default=_ABSENT, throw_on_missing=False) if key else _ABSENT
            if node is _ABSENT:  # not a value of this layer: say what OmegaConf says, keep the layer out
                found.append((key, f"{layer.name}: {key and repr(key) + ': '}{_reason(exc)}"))
                return merged
            value = OmegaConf.to_container(node) if isinstance(node, (DictConfig, ListConfig)) else node
            expected = _type_name(_SCHEMA_KEYS.get(key))
            found.append((key, f"{layer.where(key)}: '{key}' expects {expected}, got {value!r}"))
            parent, _, name = key.rpartition(".")
            del (OmegaConf.select(layer.values, parent) if parent else layer.values)[name]
    return merged


def _file_chain(path: Path) -> List[Layer]:
    """The recipe and the bases it extends, base-most first."""
    chain: List[Layer] = []
    seen: List[Path] = []
    current = path
    while True:
        resolved = current.resolve()
        if resolved in seen:
            cycle = " -> ".join(str(p) for p in seen + [resolved])
            raise RecipeError(f"{current}: 'base' forms a cycle: {cycle}")
        seen.append(resolved)
        layer = _read_file_layer(current)
        chain.append(layer)
        base = layer.values.get("base")
        if base is None:
            break
        if not isinstance(base, str):
            raise RecipeError(f"{layer.where('base')}: 'base' expects a path to a recipe file, got {base!r}")
        current = (current.parent / base)
        if not current.is_file():
            raise RecipeError(f"{layer.where('base')}: base recipe '{base}' not found (looked for {current})")
    return list(reversed(chain))


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Tuple[RecipeConfig, Dict[str, str]]:
    """Load, merge and validate a recipe.

    Returns the recipe as plain dataclasses (picklable, so it can travel to Ray
    workers) and a provenance map from every key a layer set to where it was set
    ("recipes/quickstart.yaml:12", "override 'sft.lr=0.1'"), which error messages
    and ``pagerl config show`` use. Raises one :class:`RecipeError` naming every
    problem found (the module docstring lists them).

    The registries the recipe's keys name must be loaded: commands load recipes
    through :func:`pagerl.app.recipes.load_recipe`, which imports them all.
    """
    problems: List[str] = []
    bad: Set[str] = set()  # keys already reported: later checks and rules say nothing more about them
    layers = _file_chain(Path(path)) + ([_override_layer(overrides, problems)] if overrides else [])
    merged = OmegaConf.structured(RecipeConfig)
    provenance: Dict[str, str] = {}
    for layer in layers:
        found = _check_keys(layer)
        merged = _merge(merged, layer, found)
        problems.extend(problem for _, problem in sorted(found, key=lambda kp: layer.position(kp[0])))
        bad.update(key for key, _ in found)
        for key in _flat_keys(layer.values):
            provenance[key] = layer.where(key)
    merged.base = None  # the chain is resolved; a saved recipe stands alone

    try:
        missing = sorted(OmegaConf.missing_keys(merged))
    except OmegaConfBaseException as exc:  # an interpolation that cannot be resolved
        problems.append(_unresolved(exc, provenance, path))
        raise _error(problems) from None
    for key in missing:
        problems.append(f"{path}: required key '{key}' is not set "
                        f"(set it in the recipe or its base, or override it: {key}=...)")
        bad.add(_field_key(key))
        try:  # a stand-in, so that the other keys are still checked
            OmegaConf.update(merged, key, "", merge=False)
        except OmegaConfBaseException:
            raise _error(problems) from None
    try:
        OmegaConf.resolve(merged)
        recipe: RecipeConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        problems.append(_unresolved(exc, provenance, path))
        raise _error(problems) from None

    where = lambda key: provenance.get(key, f"{path} (default of '{key}')")  # noqa: E731
    checked = field_findings(recipe) + registry_findings(recipe, _REGISTRY_KEYS)
    for key, message in checked:
        problems.append(f"{where(key)}: '{key}': {message}")
    bad.update(key for key, _ in checked)
    seen: Set[Tuple[str, str]] = set()
    for key, message in rule_findings(recipe):
        if key not in bad and (key, message) not in seen:
            seen.add((key, message))
            problems.append(f"{where(key)}: '{key}': {message}")
    resolve_paths(recipe, where, problems=problems, skip=bad | {key for key, _ in seen})
    if problems:
        raise _error(problems)
    return recipe, provenance


def _unresolved(exc: OmegaConfBaseException, provenance: Dict[str, str], path: str | Path) -> str:
    key = getattr(exc, "full_key", "") or "?"
    return f"{provenance.get(key, Path(path))}: '{key}': {exc.msg if hasattr(exc, 'msg') else exc}"


def _error(problems: List[str]) -> RecipeError:
    """One error for every problem: a single one as it is, several one per line."""
    if len(problems) == 1:
        return RecipeError(problems[0])
    return RecipeError(f"{len(problems)} problems in the recipe:\n" + "\n".join(f"  {p}" for p in problems))


def _flat_keys(node: DictConfig, prefix: str = "") -> List[str]:
    keys = []
    for key in node.keys():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            keys.extend(_flat_keys(child, dotted + "."))
    return keys


def recipe_to_yaml(recipe: RecipeConfig) -> str:
    """The resolved recipe as YAML: what ``pagerl config show`` prints and every run keeps."""
    return OmegaConf.to_yaml(OmegaConf.structured(recipe))


def save_recipe(recipe: RecipeConfig, path: str | Path) -> None:
    Path(path).write_text(recipe_to_yaml(recipe))
