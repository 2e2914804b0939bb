"""The README's two commands are the ones CI and the quickstart test run, so they cannot drift apart."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command(readme):
    _, test_command = readme
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#") and not line.startswith("set ")
                and not line.startswith("cd ")]
    assert commands == [test_command], commands


def test_the_quickstart_test_runs_the_readme_main_command(readme):
    main_command, _ = readme
    install, _, run = main_command.rpartition("&&")
    assert run.strip() == "pagerl run recipes/quickstart.yaml", main_command
    assert install.strip().startswith("pip install torch==2.13.0 && pip install -e ."), install
    # The quickstart test takes its command from the README (the main_command fixture) and runs it
    # unchanged, in a shell, from a fresh copy of the repository (fresh_repo, typed).
    tree = ast.parse((REPO / "tests" / "test_quickstart.py").read_text())
    tests = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    assert tests and all({"main_command", "fresh_repo", "typed"} <= {a.arg for a in t.args.args} for t in tests)
    source = (REPO / "tests" / "test_quickstart.py").read_text()
    assert "output_dir=" not in source  # no override added to what the user types


def test_both_commands_install_torch_pinned_first(readme):
    for command in readme:
        assert command.startswith("pip install torch==2.13.0 && "), command
