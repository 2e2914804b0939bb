"""In-memory types of the logged-impression schema (docs/data.md).

A row of a data file is one :class:`Impression`: the request a page was
built for (user, optional query, candidate items), the page the logging
policy showed (item ids in slot order), what the user did on each shown item,
and the page's outcome. Rows are validated by :mod:`pagerl.data.validate`
before they become these objects, so code downstream can trust the invariants
stated here: item ids are unique among candidates, the page holds distinct
candidates, and ``feedback`` is aligned with ``page``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class Item:
    item_id: str
    title: str
    category: str
    price: float
    # Free-form extra attributes (brand, rating, ...); kept, serialized as text.
    attrs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class User:
    user_id: str
    # Numeric user features, if the platform logs any.
    features: List[float] = field(default_factory=list)
    # Item ids the user engaged with before this request, oldest first.
    history: List[str] = field(default_factory=list)
    # Categories of the history items (denormalised: the catalogue is not
    # always available where the prompt is built).
    history_categories: List[str] = field(default_factory=list)


@dataclass
class Request:
    """What a page is built for: the prompt side of an example."""

    request_id: str
    user: User
    candidates: List[Item]
    page_size: int
    query: Optional[str] = None


@dataclass
class ItemFeedback:
    item_id: str
    click: int = 0
    purchase: int = 0
    dwell: float = 0.0


@dataclass
class Impression:
    """One logged page with its feedback: one row of a data file."""

    request: Request
    page: List[str]
    feedback: List[ItemFeedback]
    # Page-level outcome; at least "gmv" and "clicks".
    page_outcome: Dict[str, float] = field(default_factory=dict)
    # Probability of this page under the logging policy, where known.
    propensity: Optional[float] = None
