"""The serialization settings a tokenizer carries with it.

``encode_prompt(tokenizer, request)`` takes no config, yet it must know how
many candidate index tokens exist, how long a prompt may be and how prices are
bucketed. Those settings travel *with the tokenizer*: they are stored in its
``init_kwargs`` under :data:`SETTINGS_KEY`, which ``save_pretrained`` writes
into ``tokenizer_config.json`` and ``from_pretrained`` reads back. A checkpoint
directory therefore serializes requests exactly as the run that trained it,
and no caller has to thread the model config through every call.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, List, Sequence

from pagerl.errors import PageRLError

SETTINGS_KEY = "pagerl_serialization"


class SerializationError(PageRLError, ValueError):
    """A request, page or tokenizer cannot be serialized as asked (bad input, not a bug)."""


@dataclass(frozen=True)
class SerializationSettings:
    """How a request becomes a prompt; mirrors the serialization keys of ``ModelConfig``."""

    max_candidates: int = 32
    max_prompt_tokens: int = 256
    price_bucket_edges: List[float] = field(
        default_factory=lambda: [10.0, 25.0, 50.0, 100.0, 200.0]
    )
    max_history_items: int = 16
    prompt_attrs: List[str] = field(default_factory=list)
    # Prompts are one user turn of the tokenizer's chat template (model.chat_template).
    chat_template: bool = False

    def __post_init__(self) -> None:
        if self.max_candidates < 1:
            raise SerializationError(
                f"model.max_candidates: expected at least 1, got {self.max_candidates}"
            )
        if self.max_prompt_tokens < 1:
            raise SerializationError(
                f"model.max_prompt_tokens: expected at least 1, got {self.max_prompt_tokens}"
            )
        edges = list(self.price_bucket_edges)
        if any(not math.isfinite(e) for e in edges) or edges != sorted(set(edges)):
            raise SerializationError(
                "model.price_bucket_edges: expected strictly increasing finite numbers, "
                f"got {edges}"
            )
        if self.max_history_items < 0:
            raise SerializationError(
                f"model.max_history_items: expected 0 or more, got {self.max_history_items}"
            )

    @classmethod
    def from_model_config(cls, model_cfg: Any) -> "SerializationSettings":
        """Read the serialization keys of a ``ModelConfig`` (dataclass or OmegaConf node)."""
        return cls(
            max_candidates=int(model_cfg.max_candidates),
            max_prompt_tokens=int(model_cfg.max_prompt_tokens),
            price_bucket_edges=[float(e) for e in model_cfg.price_bucket_edges],
            max_history_items=int(model_cfg.max_history_items),
            prompt_attrs=[str(a) for a in model_cfg.prompt_attrs],
            chat_template=bool(getattr(model_cfg, "chat_template", False)),
        )

    @property
    def num_price_buckets(self) -> int:
        return len(self.price_bucket_edges) + 1

    def price_bucket(self, price: float) -> int:
        """Index of the bucket ``price`` falls in: how many edges it reaches."""
        return sum(1 for edge in self.price_bucket_edges if price >= edge)


def attach_settings(tokenizer: Any, settings: SerializationSettings) -> None:
    """Store ``settings`` on ``tokenizer`` so that ``save_pretrained`` persists them."""
    tokenizer.init_kwargs[SETTINGS_KEY] = asdict(settings)


def stored_settings(tokenizer: Any) -> SerializationSettings | None:
    """The settings a tokenizer carries, or ``None`` for a tokenizer pagerl never prepared."""
    raw = getattr(tokenizer, "init_kwargs", {}).get(SETTINGS_KEY)
    return None if raw is None else SerializationSettings(**raw)


def settings_of(tokenizer: Any) -> SerializationSettings:
    """The settings a tokenizer carries; a clear error when it was not prepared by pagerl."""
    settings = stored_settings(tokenizer)
    if settings is None:
        raise SerializationError(
            f"tokenizer {type(tokenizer).__name__} has no pagerl serialization settings "
            f"({SETTINGS_KEY!r} in its init_kwargs): build it with "
            "pagerl.tokenization.build_tokenizer or load it with load_policy_tokenizer"
        )
    return settings


def candidate_token(index: int) -> str:
    """The text of the candidate-local index token for slot ``index`` of the candidate list."""
    return f"<c{index}>"


def candidate_tokens(n: int) -> Sequence[str]:
    return [candidate_token(i) for i in range(n)]
