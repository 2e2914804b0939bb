"""Building and loading the policy model.

``model.source: tiny`` builds a small Llama- or Qwen2-style causal LM from
``model.tiny``, sized to the tokenizer (CPU runs and CI); any other source is
a pretrained causal LM (a local Hugging Face directory, a GGUF file, or a
packaged model: :mod:`pagerl.config.model_source`), whose embeddings are resized
to the tokenizer after the candidate index tokens were added. Checkpoints a run saved
are read back with :func:`load_policy` (safetensors only: no pickled weights
are ever loaded).

Model families and attention implementations are registries, so adding a
family is one decorated function, not another branch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Dict

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from pagerl.config.model_source import ModelSourceError, resolve_source
from pagerl.errors import PageRLError
from pagerl.models.candidates import enable_pointer
from pagerl.registry import Registry, register
from pagerl.tokenization.serialize import candidate_token_ids, response_marker_length


class ModelBuildError(PageRLError, ValueError):
    """The model config asks for something that cannot be built here (bad input, not a bug)."""


DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# family name -> function(tiny config, common config kwargs) -> untrained model; the registry of the
# recipe key ``model.tiny.family`` (the recipe loader checks the key against it).
FAMILIES: Registry = Registry("model.tiny.family")


def register_family(name: str) -> Callable:
    """Make a model family selectable as ``model.tiny.family: <name>`` (a name taken is refused)."""
    return register(FAMILIES, name)


def _shape_kwargs(tiny: Any) -> Dict[str, Any]:
    return dict(
        hidden_size=int(tiny.hidden_size),
        intermediate_size=int(tiny.intermediate_size),
        num_hidden_layers=int(tiny.num_layers),
        num_attention_heads=int(tiny.num_heads),
        num_key_value_heads=int(tiny.num_kv_heads),
        max_position_embeddings=int(tiny.max_position_embeddings),
        tie_word_embeddings=bool(tiny.tie_word_embeddings),
    )


@register_family("llama")
def _llama(tiny: Any, common: Dict[str, Any]) -> PreTrainedModel:
    return LlamaForCausalLM(LlamaConfig(**_shape_kwargs(tiny), **common))


@register_family("qwen2")
def _qwen2(tiny: Any, common: Dict[str, Any]) -> PreTrainedModel:
    return Qwen2ForCausalLM(Qwen2Config(**_shape_kwargs(tiny), **common))


def _flash_attention_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


# attn_implementation -> "can it run here?"
ATTENTION: Dict[str, Callable[[], bool]] = {
    "sdpa": lambda: True,
    "eager": lambda: True,
    "flash_attention_2": _flash_attention_available,
}


def resolve_attn_implementation(name: str) -> str:
    """Check ``model.attn_implementation`` can run on this machine; return it."""
    name = str(name)
    if name not in ATTENTION:
        raise ModelBuildError(
            f"model.attn_implementation: expected one of {', '.join(ATTENTION)}, got {name!r}"
        )
    if not ATTENTION[name]():
        raise ModelBuildError(
            f"model.attn_implementation: {name!r} needs a CUDA GPU and the flash_attn package "
            f"(CUDA available: {torch.cuda.is_available()}, flash_attn importable: "
            f"{importlib.util.find_spec('flash_attn') is not None}); install the `gpu` extra "
            "(pip install 'pagerl[gpu]') on a GPU machine, or set model.attn_implementation=sdpa"
        )
    return name


def resolve_dtype(name: str) -> torch.dtype:
    if str(name) not in DTYPES:
        raise ModelBuildError(f"model.dtype: expected one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[str(name)]


def _special_ids(tokenizer: Any) -> Dict[str, Any]:
    return dict(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _sync_special_ids(model: PreTrainedModel, tokenizer: Any) -> None:
    """Make the model's config and generation config agree with the tokenizer."""
    for key, value in _special_ids(tokenizer).items():
        setattr(model.config, key, value)
        if getattr(model, "generation_config", None) is not None:
            setattr(model.generation_config, key, value)


def _check_positions(config: PretrainedConfig, model_cfg: Any, key: str) -> None:
    """A prompt plus the longest page (K <= N <= max_candidates) plus EOS must fit."""
    limit = getattr(config, "max_position_embeddings", None)
    need = int(model_cfg.max_prompt_tokens) + int(model_cfg.max_candidates) + 1
    if limit is not None and limit < need:
        raise ModelBuildError(
            f"{key}: the model handles {limit} positions, but model.max_prompt_tokens "
            f"({model_cfg.max_prompt_tokens}) + model.max_candidates ({model_cfg.max_candidates}) "
            f"+ EOS need {need}"
        )


def _forget_gguf(model: PreTrainedModel) -> None:
    """A model read from a GGUF file holds plain dequantised weights, saved as such.

    Transformers marks it as quantized (``quantization_config``: gguf), and
    ``save_pretrained`` would write that into config.json, so that loading
    the run's safetensors would ask for the GGUF file again.
    """
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None


def build_policy(model_cfg: Any, tokenizer: Any, seed: int) -> PreTrainedModel:
    """The policy to train: a fresh tiny model, or a local Hugging Face causal LM.

    ``seed`` fixes the random initialisation (tiny) or the rows added to the
    embeddings (Hugging Face dir); the global torch RNG is left untouched.
    """
    attn = resolve_attn_implementation(model_cfg.attn_implementation)
    dtype = resolve_dtype(model_cfg.dtype)
    source = str(model_cfg.source)
    if source == "tiny":
        family = str(model_cfg.tiny.family)
        if family not in FAMILIES:
            raise ModelBuildError(
                f"model.tiny.family: expected one of {', '.join(FAMILIES)}, got {family!r}"
            )
        common = dict(vocab_size=len(tokenizer), attn_implementation=attn, **_special_ids(tokenizer))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = FAMILIES[family](model_cfg.tiny, common)
        model = model.to(dtype)
        _check_positions(model.config, model_cfg, "model.tiny.max_position_embeddings")
    else:
        try:
            resolved = resolve_source(source)
        except ModelSourceError as exc:
            raise ModelBuildError(str(exc)) from exc
        try:
            model = AutoModelForCausalLM.from_pretrained(
                resolved.directory, dtype=dtype, attn_implementation=attn, **resolved.from_pretrained_kwargs()
            )
        except (OSError, ValueError) as exc:
            raise ModelBuildError(f"model.source: cannot load a causal LM from {source!r}: {exc}") from exc
        if resolved.gguf_file is not None:
            _forget_gguf(model)
        model = model.to(dtype)
        _check_positions(model.config, model_cfg, "model.max_prompt_tokens")
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            # Grow only: a model whose embedding matrix is already padded past
            # the tokenizer (as Qwen's are) keeps its shape. New rows are drawn
            # around the mean of the old embeddings: random, hence seeded locally.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model.resize_token_embeddings(len(tokenizer))
    _sync_special_ids(model, tokenizer)
    if model_cfg.candidate_pointer:
        enable_pointer(model.config, candidate_token_ids(tokenizer, int(model_cfg.max_candidates)),
                       response_marker_length(tokenizer))
    return model


def load_policy(path: str | Path, model_cfg: Any) -> PreTrainedModel:
    """A policy checkpoint saved by a run (``save_pretrained`` with safetensors)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelBuildError(f"checkpoint {str(path)!r} is not a directory")
    if not any(path.glob("*.safetensors")):
        raise ModelBuildError(
            f"checkpoint {str(path)!r} holds no *.safetensors weights; pagerl loads safetensors only "
            "(save with save_pretrained(..., safe_serialization=True))"
        )
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(path),
            local_files_only=True,
            use_safetensors=True,
            dtype=resolve_dtype(model_cfg.dtype),
            attn_implementation=resolve_attn_implementation(model_cfg.attn_implementation),
        )
    except (OSError, ValueError) as exc:
        raise ModelBuildError(f"checkpoint {str(path)!r}: cannot load the policy: {exc}") from exc
