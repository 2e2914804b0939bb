"""Requests and pages as tokens: the policy tokenizer and the page serialization."""

from pagerl.tokenization.serialize import (
    IGNORE_INDEX,
    INVALID_REASONS,
    ParsedPage,
    candidate_token_ids,
    decode_page,
    encode_example,
    encode_prompt,
    encode_response,
)
from pagerl.tokenization.settings import SerializationError, SerializationSettings
from pagerl.tokenization.tokenizer import build_tokenizer, load_policy_tokenizer

__all__ = [
    "IGNORE_INDEX",
    "INVALID_REASONS",
    "ParsedPage",
    "SerializationError",
    "SerializationSettings",
    "build_tokenizer",
    "candidate_token_ids",
    "decode_page",
    "encode_example",
    "encode_prompt",
    "encode_response",
    "load_policy_tokenizer",
]
