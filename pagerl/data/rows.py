"""Impression -> row dict in the JSON row layout (the inverse of
:func:`pagerl.data.validate.impression_from_row`).

Numbers are written as Python floats/ints so that JSON (which prints the
shortest repr that reads back to the same float) and Parquet float64 columns
both round-trip exactly.
"""

from __future__ import annotations

from typing import Any, Dict

from pagerl.data.types import Impression


def impression_to_row(imp: Impression) -> Dict[str, Any]:
    req = imp.request
    return {
        "request_id": req.request_id,
        "user": {
            "user_id": req.user.user_id,
            "features": [float(x) for x in req.user.features],
            "history": list(req.user.history),
            "history_categories": list(req.user.history_categories),
        },
        "query": req.query,
        "page_size": int(req.page_size),
        "candidates": [
            {
                "item_id": it.item_id,
                "title": it.title,
                "category": it.category,
                "price": float(it.price),
                "attrs": dict(it.attrs),
            }
            for it in req.candidates
        ],
        "page": list(imp.page),
        "feedback": [
            {"item_id": fb.item_id, "click": int(fb.click), "purchase": int(fb.purchase), "dwell": float(fb.dwell)}
            for fb in imp.feedback
        ],
        "page_outcome": {str(k): float(v) for k, v in imp.page_outcome.items()},
        "propensity": None if imp.propensity is None else float(imp.propensity),
    }
