"""A team's own reward function, as `rewards.function` names it in tests.

Business rule of the example: a click-like value per slot from the item's
price bucket and its position (cheaper items and higher slots earn more),
plus a page bonus for showing several categories. Deterministic, so a test
can compute the expected rewards directly.

The other functions return broken answers, for the error tests, or sleep,
so a test can kill a worker while it holds a batch.
"""

from __future__ import annotations

import math
import time
from typing import List, Tuple

from pagerl.data.types import Request


def business_reward(request: Request, page: List[str]) -> Tuple[float, List[float]]:
    price = {item.item_id: item.price for item in request.candidates}
    category = {item.item_id: item.category for item in request.candidates}
    items = [1.0 / (1.0 + slot) + 10.0 / (10.0 + price[i]) for slot, i in enumerate(page)]
    page_reward = sum(items) + 0.5 * len({category[i] for i in page})
    return page_reward, items


def slow_business_reward(request: Request, page: List[str]) -> Tuple[float, List[float]]:
    time.sleep(0.02)
    return business_reward(request, page)


def returns_one_number(request: Request, page: List[str]) -> float:
    return 1.0


def returns_too_few_items(request: Request, page: List[str]) -> Tuple[float, List[float]]:
    return 1.0, [0.0] * (len(page) - 1)


def returns_nan(request: Request, page: List[str]) -> Tuple[float, List[float]]:
    return math.nan, [0.0] * len(page)


def returns_text(request: Request, page: List[str]) -> Tuple[str, List[float]]:
    return "good page", [0.0] * len(page)


NOT_A_FUNCTION = 3
