"""The package's floor plan holds: no import circles, and no import from a lower layer to a higher one.

The layers are written once, in ``docs/architecture.md`` (the fenced block after "Layers", top floor
first); this test reads them from there. Imports are read from the source with ``ast``, wherever they
sit in a module (inside a function too), so a circle cannot hide behind a deferred import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pagerl"


def _layers() -> List[List[str]]:
    """The layer list of docs/architecture.md: one line per layer, top first; a line may name several
    parts (comma-separated) that stand side by side and do not import each other."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    match = re.search(r"```text layers\n(.*?)```", text, re.S)
    assert match, "docs/architecture.md has no ```text layers block"
    layers = []
    for line in match.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            layers.append([part.strip() for part in line.split(",")])
    return layers


def _modules() -> Dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> List[Tuple[str, int, bool]]:
    """(imported pagerl module, line, inside a function) for every import statement of the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nested: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested.update(id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    found = []
    for node in ast.walk(tree):
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
        for target in targets:
            if target.split(".")[0] != "pagerl":
                continue
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            found.append((target, node.lineno, id(node) in nested))
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_part_of_the_package_has_a_layer():
    named = {part for layer in _layers() for part in layer}
    parts = {_part(m) for m in MODULES if m != "pagerl"}
    assert parts <= named, f"parts of pagerl/ with no layer in docs/architecture.md: {sorted(parts - named)}"
    assert named <= parts, f"layers of docs/architecture.md that pagerl/ has no part for: {sorted(named - parts)}"


def test_no_import_runs_up_or_sideways():
    level = {part: i for i, layer in enumerate(_layers()) for part in layer}  # 0 is the top floor
    wrong = set()
    for module, imports in GRAPH.items():
        for target, line, _ in imports:
            a, b = _part(module), _part(target)
            if a == b or module == "pagerl" or target == "pagerl":
                continue
            if level[b] <= level[a]:
                how = "up" if level[b] < level[a] else "sideways"
                wrong.add(f"{MODULES[module].relative_to(REPO)}:{line}: {module} imports {target} ({how}: "
                             f"'{a}' sits below '{b}')" if how == "up" else
                             f"{MODULES[module].relative_to(REPO)}:{line}: {module} imports {target} "
                             f"(sideways: '{a}' and '{b}' share a layer)")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circles():
    edges = {m: sorted({t for t, _, _ in imports if t != m}) for m, imports in GRAPH.items()}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    circles: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


# Imports of the package that stay inside a function, each for a reason of its own: importing the
# target imports a large library that only that function's work needs.
DEFERRED = {
    ("pagerl.cli", "pagerl.app.commands"):
        "the commands import torch, transformers and DeepSpeed (seconds); `pagerl --help` and a mistyped "
        "argument answer before that",
    ("pagerl.rllib_baseline.ppo", "pagerl.rllib_baseline.scorer"):
        "the scorer subclasses RLlib's TorchRLModule, and importing RLlib takes seconds; only the rllib stage "
        "builds the module",
}


def test_imports_of_the_package_sit_at_the_top_of_modules():
    deferred = {f"{MODULES[m].relative_to(REPO)}:{line}: imports {t} inside a function"
                for m, imports in GRAPH.items() for t, line, nested in imports if nested and (m, t) not in DEFERRED}
    assert not deferred, "\n".join(sorted(deferred))
    used = {(m, t) for m, imports in GRAPH.items() for t, _, nested in imports if nested}
    assert set(DEFERRED) <= used, f"exceptions that no longer apply: {sorted(set(DEFERRED) - used)}"
