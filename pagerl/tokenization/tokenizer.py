"""Policy tokenizers: fitted locally for the tiny model, or loaded from a model directory.

Nothing here downloads anything. The tiny tokenizer is a word-level
``tokenizers`` model fitted on the words the prompts of the training data are
made of; a Hugging Face model's tokenizer is read from its local directory.
Either way the result is a ``PreTrainedTokenizerFast`` with the candidate index
tokens ``<c0>`` ... ``<c{max_candidates-1}>`` as special tokens, a pad token
distinct from EOS, and the serialization settings attached (see
:mod:`pagerl.tokenization.settings`), so ``save_pretrained`` /
``load_policy_tokenizer`` round-trip everything a run needs.

Why word-level for the tiny model: prompts are short lists of titles,
categories and price buckets over a closed vocabulary, so one token per word
gives the shortest prompts and the fastest CPU training; unseen words at
evaluation time become ``[UNK]``, which the model has to live with exactly as a
recommender lives with cold-start items.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable, List, Union

from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pagerl.config.model_source import ModelSourceError, resolve_source
from pagerl.data.types import Impression, Request
from pagerl.tokenization.serialize import chat_frame, price_tokens, prompt_segments
from pagerl.tokenization.settings import (
    SerializationError,
    SerializationSettings,
    attach_settings,
    candidate_tokens,
    stored_settings,
)

PAD, UNK, BOS, EOS = "<pad>", "[UNK]", "<bos>", "<eos>"


def _requests(impressions_or_requests: Iterable[Union[Impression, Request]]) -> List[Request]:
    requests = []
    for k, row in enumerate(impressions_or_requests):
        if isinstance(row, Impression):
            requests.append(row.request)
        elif isinstance(row, Request):
            requests.append(row)
        else:
            raise SerializationError(
                f"build_tokenizer: row {k} is a {type(row).__name__}, expected an Impression or a Request"
            )
    if not requests:
        raise SerializationError("build_tokenizer: no training impressions to fit the vocabulary on")
    return requests


def _word_pipeline(tok: Tokenizer) -> None:
    """Lowercase + split on whitespace and punctuation (``\\w+|[^\\w\\s]+``)."""
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()


def build_tokenizer(
    model_cfg: Any, impressions_or_requests: Iterable[Union[Impression, Request]]
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer for ``model.source: tiny``, fitted on the training prompts.

    Ids are assigned deterministically: special tokens first (pad 0, unk 1,
    bos 2, eos 3, then ``<c0>``...), then every price bucket word, then the
    prompt words by descending count, ties broken alphabetically. The same data
    therefore always gives the same vocabulary.
    """
    if str(model_cfg.source) != "tiny":
        raise SerializationError(
            f"build_tokenizer fits a tokenizer for model.source 'tiny', got {model_cfg.source!r}: "
            "use load_policy_tokenizer for a Hugging Face model directory"
        )
    settings = SerializationSettings.from_model_config(model_cfg)
    specials = [PAD, UNK, BOS, EOS, *candidate_tokens(settings.max_candidates)]

    probe = Tokenizer(WordLevel({UNK: 0}, unk_token=UNK))
    _word_pipeline(probe)
    counts: Counter = Counter()
    for request in _requests(impressions_or_requests):
        for segment in prompt_segments(request, settings):
            if isinstance(segment, str):
                normalized = probe.normalizer.normalize_str(segment)
                counts.update(w for w, _ in probe.pre_tokenizer.pre_tokenize_str(normalized))
    words = list(price_tokens(settings))
    taken = set(words) | set(specials)
    words += sorted((w for w in counts if w not in taken), key=lambda w: (-counts[w], w))
    vocab = {token: i for i, token in enumerate(specials + words)}

    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    _word_pipeline(tok)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=int(model_cfg.tiny.max_position_embeddings),
    )
    attach_settings(tokenizer, settings)
    return tokenizer


def _is_model_config(obj: Any) -> bool:
    return hasattr(obj, "source") and hasattr(obj, "max_candidates")


def load_policy_tokenizer(model_cfg_or_path: Any, model_cfg: Any = None) -> Any:
    """The tokenizer of a local model directory, prepared for page serialization.

    ``model_cfg_or_path`` is a ``ModelConfig`` (its ``source`` names the
    model, see :mod:`pagerl.config.model_source`: a directory, a GGUF file or a
    packaged model) or a directory path: a Hugging Face model directory or a
    checkpoint pagerl saved. Settings come from ``model_cfg`` (or the config
    passed first) when given, else from the tokenizer itself (a pagerl
    checkpoint), else the ``ModelConfig`` defaults. Missing ``<cI>`` tokens are
    added as special tokens and a ``<pad>`` is added when the tokenizer has no
    pad token or reuses EOS for it (padding must be distinguishable from the
    end of a page). Adding tokens grows the vocabulary: the model's embeddings
    must be resized to ``len(tokenizer)``, which ``build_policy`` does.
    """

    if _is_model_config(model_cfg_or_path):
        model_cfg = model_cfg if model_cfg is not None else model_cfg_or_path
        path, key = str(model_cfg_or_path.source), "model.source"
        try:
            source = resolve_source(path, key)
        except ModelSourceError as exc:
            raise SerializationError(str(exc)) from exc
    else:
        path, key = str(model_cfg_or_path), "path"
        source = None
    if path == "tiny":
        raise SerializationError(
            "model.source 'tiny' has no tokenizer directory: fit one with build_tokenizer "
            "(or load the tokenizer a run saved next to its checkpoint)"
        )
    if source is None:
        if not Path(path).is_dir():
            raise SerializationError(f"{key}: {path!r} is not a local model directory (nothing is downloaded)")
        directory, kwargs = path, {"local_files_only": True}
    else:
        directory, kwargs = source.directory, source.from_pretrained_kwargs()
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    except (OSError, ValueError) as exc:
        raise SerializationError(f"{key}: cannot load a tokenizer from {path!r}: {exc}") from exc

    if model_cfg is not None:
        settings = SerializationSettings.from_model_config(model_cfg)
    else:
        settings = stored_settings(tokenizer) or SerializationSettings()
    if tokenizer.eos_token_id is None:
        raise SerializationError(f"{key}: the tokenizer in {path!r} has no EOS token to end a page with")
    vocab = tokenizer.get_vocab()
    missing = [t for t in candidate_tokens(settings.max_candidates) if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD})
    attach_settings(tokenizer, settings)
    if settings.chat_template:
        chat_frame(tokenizer)  # fails now, naming model.chat_template, when there is no template
    return tokenizer
