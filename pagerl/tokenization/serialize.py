"""Requests and pages as token sequences (docs/method.md, "Serialization").

A prompt lists the user context and the candidates; each candidate sits behind
a *candidate-local* index token ``<c0>`` ... ``<cN-1>``, so the vocabulary
grows by ``model.max_candidates`` index tokens rather than by the catalogue,
and the same model handles any catalogue. Example (tiny tokenizer, lowercased)::

    <bos> user : shoes bags shoes | query : red sneakers |
      <c0> canvas sneaker shoes price_2 <c1> leather tote bags price_4 ... | page :

The response is the page: ``K`` index tokens in slot order, then EOS::

    <c3> <c0> <c7> <c1> <c5> <eos>

Design choices (ours; the paper gives no serialization):

- Index tokens are inserted as token ids, never written as text; the text parts
  are tokenized with ``split_special_tokens=True``, so a title that happens to
  contain ``<c3>`` or ``<eos>`` cannot forge a control token.
- Items show title, category and a price *bucket* (``price_<b>``, see
  ``model.price_bucket_edges``): raw prices would be split into many digit
  tokens and mean little to a small model; buckets keep prompts short.
- Item ids are not shown: they are catalogue-sized and carry no meaning the
  title does not. Pages are mapped back to ids through the candidate order.
- BOS is prepended when the tokenizer has one; special tokens are never added
  implicitly, so tiny and Hugging Face tokenizers serialize the same way.
- With ``model.chat_template`` (instruct models) the prompt is one user turn
  of the tokenizer's chat template instead: the template's text before the
  message (system turn, user header; it decides about BOS) and after it (end
  of turn, assistant header) are rendered once with a placeholder message and
  tokenized on their own, so every prompt ends with the same tokens and
  :func:`response_marker_length` stays exact.

The settings (limits, price buckets, attributes shown) are read from the
tokenizer itself, see :mod:`pagerl.tokenization.settings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple, Union

from pagerl.data.types import Request
from pagerl.tokenization.settings import (
    SerializationError,
    SerializationSettings,
    candidate_tokens,
    settings_of,
    stored_settings,
)

IGNORE_INDEX = -100

# The last text segment of every prompt: it marks where the page begins.
RESPONSE_MARKER = "| page :"

# A prompt is built from text segments and candidate slots (ints).
Segment = Union[str, int]

# Stable reason codes of an invalid page (ParsedPage.reason); "" means valid.
UNKNOWN_TOKEN = "unknown_token"  # a token that is neither a candidate index nor EOS
OUT_OF_RANGE = "out_of_range"  # an index token >= the request's number of candidates
DUPLICATE = "duplicate_item"  # the same candidate twice on one page
WRONG_LENGTH = "wrong_length"  # more or fewer than page_size items before EOS
NO_EOS = "no_eos"  # the response ended without EOS
AFTER_EOS = "tokens_after_eos"  # something other than padding after EOS
INVALID_REASONS = (UNKNOWN_TOKEN, OUT_OF_RANGE, DUPLICATE, WRONG_LENGTH, NO_EOS, AFTER_EOS)


@dataclass
class ParsedPage:
    """A response read back as a page.

    ``item_ids`` holds the items parsed before the first problem (all of them
    when ``valid``), so an invalid page can still be inspected. ``reason`` is
    one of :data:`INVALID_REASONS` (``""`` when valid), stable for counting;
    ``detail`` says where and what, for people.
    """

    item_ids: List[str]
    valid: bool
    reason: str
    detail: str = ""


def price_token(settings: SerializationSettings, price: float) -> str:
    return f"price_{settings.price_bucket(price)}"


def price_tokens(settings: SerializationSettings) -> List[str]:
    """Every price word a prompt can contain (the tiny vocabulary holds them all)."""
    return [f"price_{b}" for b in range(settings.num_price_buckets)]


def prompt_segments(request: Request, settings: SerializationSettings) -> List[Segment]:
    """The prompt as text segments and candidate slots, before tokenization.

    Shared by :func:`encode_prompt` and the tiny tokenizer's fitting, so the
    tiny vocabulary holds exactly the words prompts are made of.
    """
    history = list(request.user.history_categories)
    if settings.max_history_items < len(history):
        history = history[len(history) - settings.max_history_items :]
    head = "user : " + " ".join(history) + " |"
    if request.query:
        head += " query : " + request.query + " |"
    segments: List[Segment] = [head]
    for index, item in enumerate(request.candidates):
        words = [item.title, item.category, price_token(settings, item.price)]
        for key in settings.prompt_attrs:
            if key in item.attrs:
                words += [key, str(item.attrs[key])]
        segments += [index, " ".join(w for w in words if w)]
    segments.append(RESPONSE_MARKER)
    return segments


def candidate_token_ids(tokenizer: Any, n: int) -> List[int]:
    """Token ids of ``<c0>`` ... ``<c{n-1}>``; a clear error if the tokenizer lacks some."""
    tokens = candidate_tokens(n)
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    unk = getattr(tokenizer, "unk_token", None)
    for token, token_id in zip(tokens, ids):
        if token_id is None or (token_id == tokenizer.unk_token_id and token != unk):
            raise SerializationError(
                f"tokenizer has no candidate token {token!r} ({n} needed): candidates "
                "per request must not exceed model.max_candidates, whose index tokens "
                "build_tokenizer / load_policy_tokenizer add"
            )
    return list(ids)


def _check_request(request: Request, settings: SerializationSettings) -> None:
    n = len(request.candidates)
    where = f"request {request.request_id!r}"
    if n == 0:
        raise SerializationError(f"{where}: has no candidates")
    if n > settings.max_candidates:
        raise SerializationError(
            f"{where}: {n} candidates, but model.max_candidates is {settings.max_candidates} "
            "(one index token per candidate slot); raise model.max_candidates or send fewer candidates"
        )
    if not 1 <= request.page_size <= n:
        raise SerializationError(
            f"{where}: page_size must be between 1 and its {n} candidates, got {request.page_size}"
        )
    ids = [item.item_id for item in request.candidates]
    if len(set(ids)) != n:
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SerializationError(f"{where}: candidate item_id {dup!r} appears more than once")


def encode_prompt(tokenizer: Any, request: Request) -> List[int]:
    """Token ids of the prompt of ``request``, ending with the response marker."""
    settings = settings_of(tokenizer)
    _check_request(request, settings)
    segments = prompt_segments(request, settings)
    # Text segments after the first get a leading space, as words in running
    # text have: byte-level BPE tokenizers then produce their usual word tokens.
    texts = [s for s in segments if isinstance(s, str)]
    texts = texts[:1] + [" " + s for s in texts[1:]]
    encoded = iter(
        tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    )
    slot_ids = candidate_token_ids(tokenizer, len(request.candidates))
    if settings.chat_template:
        before, after = chat_frame(tokenizer)
        ids: List[int] = list(before)
    else:
        ids, after = ([] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]), []
    for segment in segments:
        if isinstance(segment, str):
            ids += next(encoded)
        else:
            ids.append(slot_ids[segment])
    ids += after
    if len(ids) > settings.max_prompt_tokens:
        raise SerializationError(
            f"request {request.request_id!r}: prompt is {len(ids)} tokens, more than "
            f"model.max_prompt_tokens ({settings.max_prompt_tokens}); raise it, shorten "
            "titles, or lower model.max_history_items"
        )
    return ids


_CHAT_PLACEHOLDER = "PAGERL_PROMPT_PLACEHOLDER"
_CHAT_FRAME_ATTR = "_pagerl_chat_frame"


def chat_frame(tokenizer: Any) -> Tuple[List[int], List[int]]:
    """Token ids the chat template puts before and after a user message (with the assistant header).

    Rendered once per tokenizer with a placeholder message; the two texts are
    tokenized with special tokens recognised (they hold the template's own
    control tokens, never request text).
    """
    cached = getattr(tokenizer, _CHAT_FRAME_ATTR, None)
    if cached is not None:
        return cached
    if not getattr(tokenizer, "chat_template", None):
        raise SerializationError(
            "model.chat_template is true, but the tokenizer has no chat template: set it false "
            "or use an instruct model whose tokenizer has one"
        )
    text = tokenizer.apply_chat_template([{"role": "user", "content": _CHAT_PLACEHOLDER}], tokenize=False,
                                         add_generation_prompt=True)
    if text.count(_CHAT_PLACEHOLDER) != 1:
        raise SerializationError("model.chat_template: the tokenizer's chat template does not show the "
                                 "user message exactly once")
    before, after = text.split(_CHAT_PLACEHOLDER)
    ids = tokenizer([before, after], add_special_tokens=False)["input_ids"]
    frame = (list(ids[0]), list(ids[1]))
    setattr(tokenizer, _CHAT_FRAME_ATTR, frame)
    return frame


def response_marker_length(tokenizer: Any) -> int:
    """Tokens of :data:`RESPONSE_MARKER` at the end of every prompt.

    Text segments are tokenized one by one (see :func:`encode_prompt`), so the
    marker is the same tokens in every prompt: the last candidate's words end
    this many tokens before the prompt does. With ``model.chat_template`` the
    template's closing tokens (end of turn, assistant header) follow the
    marker and count with it.
    """
    marker = len(tokenizer([" " + RESPONSE_MARKER], add_special_tokens=False,
                           split_special_tokens=True)["input_ids"][0])
    settings = stored_settings(tokenizer)
    if settings is not None and settings.chat_template:
        marker += len(chat_frame(tokenizer)[1])
    return marker


def encode_response(tokenizer: Any, request: Request, page_item_ids: Sequence[str]) -> List[int]:
    """Token ids of a page as a response: its index tokens in slot order, then EOS."""
    where = f"request {request.request_id!r}"
    position: Dict[str, int] = {item.item_id: i for i, item in enumerate(request.candidates)}
    if len(page_item_ids) != request.page_size:
        raise SerializationError(
            f"{where}: page has {len(page_item_ids)} items, expected page_size {request.page_size}"
        )
    if len(set(page_item_ids)) != len(page_item_ids):
        raise SerializationError(f"{where}: page repeats an item: {list(page_item_ids)}")
    missing = [i for i in page_item_ids if i not in position]
    if missing:
        raise SerializationError(f"{where}: page items {missing} are not among its candidates")
    if tokenizer.eos_token_id is None:
        raise SerializationError("tokenizer has no EOS token: a page could never end")
    slot_ids = candidate_token_ids(tokenizer, len(request.candidates))
    return [slot_ids[position[i]] for i in page_item_ids] + [tokenizer.eos_token_id]


def encode_example(
    tokenizer: Any, request: Request, page_item_ids: Sequence[str]
) -> Dict[str, List[int]]:
    """A supervised example: prompt + page, with the loss only on the page tokens.

    ``labels`` are aligned with ``input_ids`` (Hugging Face causal LMs shift
    them internally): ``-100`` on the prompt, the index tokens and EOS on the
    response.
    """
    prompt = encode_prompt(tokenizer, request)
    response = encode_response(tokenizer, request, page_item_ids)
    return {
        "input_ids": prompt + response,
        "labels": [IGNORE_INDEX] * len(prompt) + response,
    }


def decode_page(tokenizer: Any, request: Request, token_ids: Any) -> ParsedPage:
    """Parse a response (token ids after the prompt) back to item ids, checking validity.

    Valid means: exactly ``page_size`` distinct index tokens, each below the
    request's number of candidates, then EOS, then nothing but padding.
    ``token_ids`` may be a list or a 1-D tensor.
    """
    settings = settings_of(tokenizer)
    if hasattr(token_ids, "tolist"):
        token_ids = token_ids.tolist()
    token_ids = [int(t) for t in token_ids]
    slot_of = {t: i for i, t in enumerate(candidate_token_ids(tokenizer, settings.max_candidates))}
    n, k = len(request.candidates), request.page_size
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    items: List[str] = []
    seen: set = set()

    def invalid(reason: str, detail: str) -> ParsedPage:
        return ParsedPage(item_ids=items, valid=False, reason=reason, detail=detail)

    for pos, token in enumerate(token_ids):
        if token == eos:
            tail = [t for t in token_ids[pos + 1 :] if t not in (pad, eos)]
            if tail:
                return invalid(AFTER_EOS, f"token {tail[0]} after EOS at position {pos}")
            if len(items) != k:
                return invalid(WRONG_LENGTH, f"{len(items)} items before EOS, expected {k}")
            return ParsedPage(item_ids=items, valid=True, reason="")
        slot = slot_of.get(token)
        if slot is None:
            text = tokenizer.convert_ids_to_tokens(token) if 0 <= token < len(tokenizer) else None
            return invalid(UNKNOWN_TOKEN, f"token {token} ({text!r}) at position {pos}")
        if slot >= n:
            return invalid(OUT_OF_RANGE, f"<c{slot}> at position {pos}, only {n} candidates")
        if slot in seen:
            return invalid(DUPLICATE, f"<c{slot}> repeated at position {pos}")
        if len(items) == k:
            return invalid(WRONG_LENGTH, f"more than {k} items (position {pos} is not EOS)")
        seen.add(slot)
        items.append(request.candidates[slot].item_id)
    return invalid(NO_EOS, f"{len(items)} items and no EOS in {len(token_ids)} tokens")
