"""Files of the run directory written and read whole: JSON records and text replaced atomically.

A run directory is read while it is written (the driver follows a stage's
progress, a person opens the report of a run that goes on) and may be cut off
at any moment, so a file is written to ``<name>.tmp`` and renamed over the old
one: a reader sees the old file or the new one, never half of either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

__all__ = ["jsonable", "read_json", "replace_text", "write_json"]


def jsonable(obj: Any) -> Any:
    """``obj`` with paths, tuples and numpy/torch scalars turned into JSON types."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return obj


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_json(path: Path, data: Any, allow_nan: bool = False) -> None:
    """``data`` as indented JSON, atomically. NaN is refused unless ``allow_nan`` (strict JSON
    readers cannot parse it): tables a person's tools read never carry it."""
    replace_text(path, json.dumps(jsonable(data), indent=2, allow_nan=allow_nan) + "\n")


def read_json(path: Path) -> Optional[Any]:
    """A JSON file of the run directory, None when absent; bad JSON names the file and line."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
