"""Every path a recipe carries, resolved once, when the recipe is loaded.

Why here and nowhere else: a recipe travels to Ray actors and Ray Train
workers, and Ray Train changes each worker's working directory to the run's
storage directory, so a relative path that a worker receives points somewhere
else than it did for the user who typed it. Resolving every path key to an
absolute path at load, against the directory the command was started in,
leaves no code after the loader that depends on its current directory; the
run directory keeps this resolved recipe, so it records where every input was.

``PATH_KEYS`` lists every recipe key that holds a path (or a list of paths),
with whether it must already exist when the recipe loads. A key added to the
schema that holds a path must be added here; ``tests/config/test_paths.py``
checks that no schema field whose name says "dir", "file" or "path" is missing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, List, Optional

from pagerl.config.model_source import is_source_name
from pagerl.errors import RecipeError

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")


@dataclass(frozen=True)
class PathKey:
    """One recipe key that holds a path (``many``: a list of paths)."""

    key: str
    many: bool = False
    # "file", "dir", "any" (either) or "" (need not exist yet: the run creates it).
    must_exist: str = ""
    # Values that are names, not paths (``model.source: tiny``).
    names: tuple = ()
    # Or a predicate saying which values are names (packaged models of model.source).
    is_name: Optional[Callable[[str], bool]] = None
    # Resolve only when this returns True for the recipe (e.g. rewards.model_dir when set).
    when: Optional[Callable[[object], bool]] = None


def _is_model_source_name(value: str) -> bool:
    return is_source_name(value)


PATH_KEYS = (
    PathKey("run.output_dir"),
    PathKey("data.train_files", many=True, must_exist="file"),
    PathKey("data.eval_files", many=True, must_exist="file"),
    # tiny, a packaged model (pagerl.config.model_source), a model directory or a .gguf file.
    PathKey("model.source", must_exist="any", names=("tiny",), is_name=_is_model_source_name),
    # Filled by the rm stage of the same run when empty; a set one must exist
    # unless this run trains it.
    PathKey("rewards.model_dir", must_exist="dir",
            when=lambda r: "rm" not in r.run.stages),
    PathKey("rewards.python_path", many=True, must_exist="dir"),
    PathKey("rl.init_policy_dir", must_exist="dir"),
)


def resolve_paths(recipe: object, where: Callable[[str], str], base: Optional[Path] = None,
                  problems: Optional[List[str]] = None, skip: Collection[str] = ()) -> None:
    """Make every path key of ``recipe`` absolute, in place; refuse missing inputs and URIs.

    ``base`` is the directory relative paths are taken from (default: the
    current directory, i.e. where the command was started). ``where(key)``
    says where a key was set, for the error message. With a ``problems`` list,
    every refused key adds its message there instead of raising at the first;
    keys in ``skip`` (already reported) are left as they are.
    """
    base = Path(base) if base is not None else Path.cwd()
    for spec in PATH_KEYS:
        if spec.key in skip:
            continue
        section, name = spec.key.split(".")
        holder = getattr(recipe, section)
        value = getattr(holder, name)
        try:
            if spec.many:
                setattr(holder, name, [_resolve_one(spec, v, recipe, base, where) for v in value])
            elif value:
                setattr(holder, name, _resolve_one(spec, value, recipe, base, where))
        except RecipeError as exc:
            if problems is None:
                raise
            problems.append(str(exc))


def _resolve_one(spec: PathKey, value: str, recipe: object, base: Path, where: Callable[[str], str]) -> str:
    if value in spec.names or (spec.is_name is not None and spec.is_name(value)):
        return value
    if _URI.match(value):
        raise RecipeError(
            f"{where(spec.key)}: '{spec.key}' is a URI ({value}); PageRL reads and writes local or mounted "
            "paths only (on a multi-node cluster, a shared mount that every node sees)"
        )
    path = Path(os.path.expanduser(value))
    # abspath, not resolve(): symlinks stay as the user named them.
    path = Path(os.path.abspath(path if path.is_absolute() else base / path))
    check = spec.must_exist if (spec.when is None or spec.when(recipe)) else ""
    if check == "file" and not path.is_file():
        raise RecipeError(f"{where(spec.key)}: '{spec.key}': file not found: {value} (looked for {path})")
    if check == "any" and not path.exists():
        raise RecipeError(f"{where(spec.key)}: '{spec.key}': not found: {value} (looked for {path})")
    if check == "dir" and not path.is_dir():
        raise RecipeError(f"{where(spec.key)}: '{spec.key}': directory not found: {value} (looked for {path})")
    return str(path)


def path_keys() -> List[str]:
    return [spec.key for spec in PATH_KEYS]
