"""Test-wide setup: every Ray cluster a test starts stays on loopback.

Ray reads its single-node switch when it is imported, so it is set here,
before any test module imports Ray.
"""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.pop("RAY_ADDRESS", None)


import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_commands():
    """The README's first two fenced bash blocks: (main command, test command)."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)
    if len(blocks) < 2:
        raise AssertionError("README.md must start with two ```bash blocks: the main command and the test command")
    return blocks[0].strip(), blocks[1].strip()


def main_command_after_install():
    """What the README's main command runs once the install part before it is done."""
    return readme_commands()[0].split("&&")[-1].strip()


def fresh_copy(dest: Path) -> Path:
    """A copy of the repository as a new user gets it: no run directories, no caches, no git."""
    ignore = shutil.ignore_patterns(".git", "runs", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis")
    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


def run_typed(command: str, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    """Run ``command`` as a person types it in a shell whose working directory is ``cwd``."""
    return subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def readme():
    """(main command, test command) as the README writes them."""
    return readme_commands()


@pytest.fixture
def main_command():
    """The README's main command without its install part (the test run installed already)."""
    return main_command_after_install()


@pytest.fixture
def fresh_repo(tmp_path):
    """A fresh copy of the repository, as a new user has it."""
    return fresh_copy(tmp_path / "pagerl")


@pytest.fixture
def typed():
    """``typed(command, cwd, timeout)``: run a command as a person types it in a shell."""
    return run_typed
