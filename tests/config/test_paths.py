"""Every path a recipe carries is made absolute once, at load, against where the command started."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import get_type_hints

import pytest

from pagerl.app.recipes import load_recipe
from pagerl.config.paths import PATH_KEYS, path_keys
from pagerl.config.schema import RecipeConfig
from pagerl.envs.synth import synthesize
from pagerl.errors import RecipeError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path):
    """A user's project: a recipe that names its data by relative paths, and the data."""
    root = tmp_path / "project"
    (root / "recipes").mkdir(parents=True)
    recipe, _ = load_recipe(REPO / "recipes" / "ci_small.yaml", ["sim.num_train_requests=30", "sim.num_eval_requests=5"])
    synthesize(recipe.sim, recipe.run.seed, root / "logs", progress=False)
    (root / "recipes" / "mine.yaml").write_text(textwrap.dedent(f"""\
        base: {REPO / 'recipes' / 'ci_small.yaml'}
        run:
          name: mine
          output_dir: out
          stages: [eval]
        data:
          train_files: [logs/train.jsonl]
          eval_files: [logs/eval.jsonl]
        eval:
          num_requests: 5
          baselines: [random, oracle]
        """))
    return root


def test_relative_paths_are_resolved_against_the_starting_directory(project, monkeypatch):
    monkeypatch.chdir(project)
    recipe, _ = load_recipe("recipes/mine.yaml")
    assert recipe.run.output_dir == str(project / "out")
    assert recipe.data.train_files == [str(project / "logs" / "train.jsonl")]
    assert recipe.data.eval_files == [str(project / "logs" / "eval.jsonl")]
    assert recipe.model.source == "tiny"  # a name, not a path


def test_a_recipe_with_relative_data_run_from_another_directory_finds_it(project, tmp_path):
    """`pagerl run` started elsewhere: the data is found, the run lands where the user asked."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "logs").symlink_to(project / "logs")
    proc = subprocess.run([sys.executable, "-m", "pagerl.cli", "run", str(project / "recipes" / "mine.yaml")],
                          cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = elsewhere / "out" / "mine" / "eval" / "results.json"
    assert results.is_file()
    saved = (elsewhere / "out" / "mine" / "recipe.yaml").read_text()
    assert str(elsewhere / "logs" / "eval.jsonl") in saved and "output_dir: " + str(elsewhere / "out") in saved


def test_a_missing_input_fails_at_load_naming_the_key(project, monkeypatch):
    monkeypatch.chdir(project)
    with pytest.raises(RecipeError, match=r"override 'data.eval_files=\[nope.jsonl\]'.*'data.eval_files': file not found"):
        load_recipe("recipes/mine.yaml", ["data.eval_files=[nope.jsonl]"])
    with pytest.raises(RecipeError, match=r"'model.source': 'no/such/model' is not a model PageRL can load"):
        load_recipe("recipes/mine.yaml", ["model.source=no/such/model"])
    with pytest.raises(RecipeError, match=r"'rewards.python_path': directory not found"):
        load_recipe("recipes/mine.yaml", ["rewards.python_path=[missing_dir]"])


def test_uris_are_refused_with_the_key(project, monkeypatch):
    monkeypatch.chdir(project)
    with pytest.raises(RecipeError, match=r"'run.output_dir' is a URI \(s3://bucket/runs\).*mounted"):
        load_recipe("recipes/mine.yaml", ["run.output_dir=s3://bucket/runs"])


def test_every_path_like_schema_field_is_resolved():
    """A schema field whose name says it holds a path must be listed in PATH_KEYS."""
    keys = []

    def walk(cls, prefix):
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            elif any(word in f.name for word in ("dir", "file", "path")) or f.name == "source":
                keys.append(f"{prefix}{f.name}")

    walk(RecipeConfig, "")
    not_paths = {"rewards.source"}  # a registry name
    assert sorted(set(keys) - not_paths) == sorted(path_keys()), keys
    assert len(PATH_KEYS) == len(set(path_keys()))
