"""Recipe loading: YAML layers merged over the typed schema, validated before any work.

A recipe is a YAML file whose sections mirror :class:`~pagerl.config.schema.RecipeConfig`.
It may name a ``base:`` recipe (a path relative to itself) that it extends; the
chain is merged base first, then the recipe, then command-line overrides
``section.key=value``. Each layer is checked on its own before it is merged,
so an error names the file (and line) or the override that introduced it:

- an unknown key, with the closest valid key suggested;
- a value of the wrong type;
- a required value (``???`` in the schema) that no layer sets;
- a value its field's own checks refuse (on the field in the schema:
  :mod:`pagerl.config.checks`);
- a name that is not an entry of the registry its field is marked with (one
  loop over every marked field: :func:`pagerl.config.checks.registry_findings`);
- an inconsistent combination (rules in :mod:`pagerl.config.rules`, and those the subsystems
  register there: :mod:`pagerl.app.recipes`); a rule's finding for a key
  already reported above is left out.

The field checks, the registry loop and the rules report every problem they
find at once.
- a path key naming an input that does not exist, or a URI (:mod:`pagerl.config.paths`).

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
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple, get_type_hints

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pagerl.config.checks import field_findings, registry_findings, registry_keys
from pagerl.config.paths import resolve_paths
from pagerl.config.rules import rule_findings
from pagerl.config.schema import RecipeConfig
from pagerl.errors import RecipeError

_RESOLVER = re.compile(r"\$\{\s*[\w.\-]+\s*:")


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


def _override_layer(overrides: Sequence[str]) -> Layer:
    values = OmegaConf.create({})
    texts: Dict[str, str] = {}
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise RecipeError(f"override '{item}': expected section.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise RecipeError(f"override '{item}': value is not a valid YAML scalar or list: {exc}") from None
        OmegaConf.update(values, key, value, merge=True, force_add=True)
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


def _check_keys(layer: Layer) -> None:
    """Refuse unknown keys and resolver interpolations, before merging."""

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node.keys():
            dotted = f"{prefix}{key}"
            if dotted not in _SCHEMA_KEYS:
                raise RecipeError(f"{layer.where(dotted)}: unknown key '{dotted}'{_suggest(dotted)}")
            value = node._get_node(key)
            if isinstance(value, DictConfig):
                if not is_dataclass(_SCHEMA_KEYS[dotted]):
                    raise RecipeError(
                        f"{layer.where(dotted)}: '{dotted}' expects a single value, got a mapping"
                    )
                walk(value, dotted + ".")
            else:
                raw = value._value() if hasattr(value, "_value") else value
                if isinstance(raw, str) and _RESOLVER.search(raw):
                    raise RecipeError(
                        f"{layer.where(dotted)}: '{dotted}' uses an OmegaConf resolver ({raw}); recipes may "
                        "only reference other keys (${section.key}), so that every input is in the recipe"
                    )

    walk(layer.values, "")


def _type_error_message(layer: Layer, exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", "") or ""
    expected = _SCHEMA_KEYS.get(key)
    exp = getattr(expected, "__name__", None) or str(expected).replace("typing.", "")
    value = OmegaConf.select(layer.values, key, default=None, throw_on_missing=False) if key else None
    return f"{layer.where(key)}: '{key}' expects {exp}, got {value!r}"


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
    and ``pagerl config show`` use.

    The registries the recipe's keys name must be loaded: commands load recipes
    through :func:`pagerl.app.recipes.load_recipe`, which imports them all.
    """
    layers = _file_chain(Path(path)) + ([_override_layer(overrides)] if overrides else [])
    merged = OmegaConf.structured(RecipeConfig)
    provenance: Dict[str, str] = {}
    for layer in layers:
        _check_keys(layer)
        try:
            merged = OmegaConf.merge(merged, layer.values)
        except OmegaConfBaseException as exc:
            raise RecipeError(_type_error_message(layer, exc)) from None
        for key in _flat_keys(layer.values):
            provenance[key] = layer.where(key)
    merged.base = None  # the chain is resolved; a saved recipe stands alone

    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise RecipeError(
            f"{path}: required key '{missing[0]}' is not set "
            f"(set it in the recipe or its base, or override it: {missing[0]}=...)"
        )
    try:
        OmegaConf.resolve(merged)
        recipe: RecipeConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or "?"
        raise RecipeError(f"{provenance.get(key, Path(path))}: '{key}': {exc.msg if hasattr(exc, 'msg') else exc}") from None
    where = lambda key: provenance.get(key, f"{path} (default of '{key}')")  # noqa: E731
    _check_values(recipe, where)
    resolve_paths(recipe, where)
    return recipe, provenance


def _check_values(recipe: RecipeConfig, where: Callable[[str], str]) -> None:
    """Run every field's checks, the registry loop and every rule; raise one :class:`RecipeError`
    listing every finding, each naming where its key was set (so a recipe with several mistakes is
    fixed in one pass, not one per run). A rule's finding for a key already refused is left out."""
    found = field_findings(recipe) + registry_findings(recipe, _REGISTRY_KEYS)
    refused = {key for key, _ in found}
    for finding in rule_findings(recipe):
        if finding[0] not in refused and finding not in found:
            found.append(finding)
    problems = [f"{where(key)}: '{key}': {message}" for key, message in found]
    if len(problems) == 1:
        raise RecipeError(problems[0])
    if problems:
        raise RecipeError(f"{len(problems)} problems in the recipe:\n" + "\n".join(f"  {p}" for p in problems))


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
