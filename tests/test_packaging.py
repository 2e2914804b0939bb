"""The `kernels/` folder never becomes a top-level `kernels` package (Hugging Face's kernel hub has that name)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_repo_root_on_sys_path_does_not_shadow_kernels_and_pagerl_kernels_is_the_installed_one():
    probe = (
        "import importlib.util, sys; sys.path.insert(0, sys.argv[1]);"
        "spec = importlib.util.find_spec('kernels');"
        "print(spec.origin if spec is not None and spec.origin else '-');"
        "import pagerl_kernels; print(pagerl_kernels.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(REPO)], capture_output=True, text=True, check=True)
    origin, location = out.stdout.split()
    # our folder is at most a namespace portion (no origin), which an installed `kernels` package wins over
    assert origin == "-" or not origin.startswith(str(REPO)), origin
    assert not (REPO / "kernels" / "__init__.py").exists()
    assert Path(location).parent.name == "pagerl_kernels"


def test_pyproject_lists_every_package_of_the_tree():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    tree = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "pagerl").rglob("__init__.py")}
    assert tree | {"pagerl_kernels"} == listed, sorted(tree ^ (listed - {"pagerl_kernels"}))
