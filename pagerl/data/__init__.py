"""Logged impressions: the data PageRL learns from (docs/data.md).

A data file holds one logged page per row: the request it was built for,
the page the logging policy showed, what the user did on each shown item and
the page's outcome. Files are JSONL (one JSON object per line) or Parquet
(same nested layout as Arrow structs and lists; see
:mod:`pagerl.data.formats`), chosen by extension (``.jsonl``, ``.parquet``).

Row layout (JSON)::

    {
      "request_id": str,
      "user": {"user_id": str,
               "features": [float, ...],           # optional, default []
               "history": [item_id, ...],          # optional, oldest first
               "history_categories": [str, ...]},  # optional; [] or one per history item
      "query": str | null,                         # optional, default null
      "page_size": int,                            # K >= 1
      "candidates": [{"item_id": str, "title": str, "category": str,
                      "price": float,              # >= 0
                      "attrs": {...}}, ...],       # optional free-form object
      "page": [item_id, ...],                      # K distinct candidate ids, slot order
      "feedback": [{"item_id": str,                # same items as "page", same order
                    "click": 0 | 1,
                    "purchase": 0 | 1,             # optional, default 0
                    "dwell": float}, ...],         # seconds, optional, default 0
      "page_outcome": {"gmv": float, "clicks": float, ...},   # more numeric keys allowed
      "propensity": float | null                   # P(page | logging policy), in (0, 1]
    }

Reading validates every row (:mod:`pagerl.data.validate`); a bad row is
reported with its file and line (JSONL, 1-based) or row (Parquet, 0-based
index) and either skipped with a count or fatal, as the recipe says
(``data.on_bad_row``, ``data.max_bad_fraction``).
"""

from pagerl.data.errors import DataError, RowError
from pagerl.data.io import LoadResult, iter_impressions, read_impressions, validate_file, write_impressions
from pagerl.data.rows import impression_to_row
from pagerl.data.types import Impression, Item, ItemFeedback, Request, User
from pagerl.data.validate import impression_from_row, validate_row

__all__ = [
    "DataError",
    "Impression",
    "Item",
    "ItemFeedback",
    "LoadResult",
    "Request",
    "RowError",
    "User",
    "impression_from_row",
    "impression_to_row",
    "iter_impressions",
    "read_impressions",
    "validate_file",
    "validate_row",
    "write_impressions",
]
