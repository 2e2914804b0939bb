"""docs/architecture.md's map of the package matches the tree: every package has a row in the layout
table, and every path of the package the docs name exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _layout_rows() -> list:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = text[text.index("| path | what lives there |"):]
    table = table[: table.index("\n\n")]
    return [line for line in table.splitlines()[2:]]


def test_every_package_of_the_tree_has_a_row_in_the_layout_table():
    named = {path.rstrip("/") for row in _layout_rows() for path in re.findall(r"`(pagerl/[\w/]*)`", row.split("|")[1])}
    packages = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "pagerl").rglob("__init__.py")}
    packages.discard("pagerl")
    assert packages <= named, f"packages without a row in docs/architecture.md: {sorted(packages - named)}"


def test_every_path_of_the_package_the_docs_name_exists():
    missing = []
    for doc in DOCS:
        for path in set(re.findall(r"(?<![\w/.])((?:pagerl|kernels|benchmarks|recipes|cluster|tests)/[\w/.\-]*\w)", doc.read_text(encoding="utf-8"))):
            if re.search(r"-v\d+$", path):
                continue  # a gymnasium id (pagerl/PageSim-v0), not a path
            if not (REPO / path).exists():
                missing.append(f"{doc.relative_to(REPO)}: {path}")
    assert not missing, "\n".join(sorted(missing))


def _top_level_names(path: Path) -> set:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def test_every_dotted_name_of_the_package_in_docs_and_code_resolves():
    """``pagerl.rl.roles.local.local_roles`` in a doc, docstring or comment names a module that exists
    and, after it, a name that module defines: a module that moved leaves no stale name behind."""
    sources = DOCS + sorted((REPO / "pagerl").rglob("*.py")) + sorted((REPO / "tests").rglob("*.py")) \
        + sorted((REPO / "benchmarks").rglob("*.py"))
    # Not module names: the tags the MLflow sink puts on a run (pagerl.tracking.sinks).
    tags = {"pagerl.run", "pagerl.run_dir", "pagerl.stage"}
    stale = []
    for source in sources:
        for dotted in set(re.findall(r"(?<![\w.])pagerl(?:\.\w+)+", source.read_text(encoding="utf-8"))) - tags:
            parts = dotted.split(".")
            for n in range(len(parts), 0, -1):
                base = REPO.joinpath(*parts[:n])
                module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
                if module.is_file():
                    break
            else:
                stale.append(f"{source.relative_to(REPO)}: {dotted}")
                continue
            rest = parts[n:]
            if n == 1 or (rest and rest[0] not in _top_level_names(module)
                          and not (module.name == "__init__.py" and (module.parent / rest[0]).exists())):
                stale.append(f"{source.relative_to(REPO)}: {dotted}")
    assert not stale, "names that no module defines:\n" + "\n".join(sorted(stale))
