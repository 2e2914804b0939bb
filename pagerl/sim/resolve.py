"""From a Request (possibly read back from a data file) to the world's indices
and ground-truth arrays.

Evaluation never keeps simulator objects around: it reads requests from
``eval.jsonl`` and asks the simulator to score pages for them. So every id in
a request is looked up in the world here, and the candidates' category and
price are checked against the catalogue: a file generated with another sim
config or seed fails loudly instead of being scored against the wrong truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from pagerl.data.types import Request
from pagerl.sim.click_model import CandidateModel, examination
from pagerl.sim.errors import SimulatorError
from pagerl.sim.world import World


@dataclass
class ResolvedRequest:
    request_id: str
    user: int
    items: np.ndarray  # (N,) world item index of each candidate, in candidate order
    item_ids: List[str]
    position: Dict[str, int]  # candidate id -> candidate position
    query_category: int  # -1 without a query
    page_size: int
    model: CandidateModel


def _mismatch(request: Request, what: str) -> SimulatorError:
    return SimulatorError(
        f"request {request.request_id!r}: {what}. The request does not belong to this world "
        "(was the data generated with the same sim config and seed?)"
    )


def resolve_request(world: World, request: Request) -> ResolvedRequest:
    user = world.user_index.get(request.user.user_id)
    if user is None:
        raise _mismatch(request, f"unknown user id {request.user.user_id!r} (the world has {world.num_users} users)")
    items = np.empty(len(request.candidates), dtype=np.int64)
    position: Dict[str, int] = {}
    for j, cand in enumerate(request.candidates):
        index = world.item_index.get(cand.item_id)
        if index is None:
            raise _mismatch(request, f"unknown item id {cand.item_id!r} at candidates[{j}]")
        category = world.categories[int(world.item_category[index])]
        if cand.category != category or float(cand.price) != float(world.item_price[index]):
            raise _mismatch(
                request,
                f"candidates[{j}] ({cand.item_id}) has category {cand.category!r} and price {cand.price!r}, "
                f"the world's item has {category!r} and {float(world.item_price[index])!r}",
            )
        if cand.item_id in position:
            raise _mismatch(request, f"candidate id {cand.item_id!r} appears twice")
        items[j] = index
        position[cand.item_id] = j
    if not 1 <= request.page_size <= len(items):
        raise SimulatorError(
            f"request {request.request_id!r}: page_size {request.page_size} must be between 1 and the "
            f"number of candidates ({len(items)})"
        )
    query_category = -1
    if request.query is not None:
        if request.query not in world.category_index:
            raise _mismatch(
                request, f"query {request.query!r} is not a category name (expected one of {world.categories})"
            )
        query_category = world.category_index[request.query]

    cfg = world.cfg
    model = CandidateModel(
        click=world.click_probability(user, items, query_category),
        purchase=world.purchase_probability(user, items, query_category),
        price=world.item_price[items],
        category=world.item_category[items],
        group=world.item_group[items],
        exam=examination(request.page_size, cfg.position_bias),
        page_size=request.page_size,
        diversity_bonus=cfg.diversity_bonus,
        redundancy_penalty=cfg.redundancy_penalty,
        continue_after_click=cfg.continue_after_click,
    )
    return ResolvedRequest(
        request_id=request.request_id,
        user=user,
        items=items,
        item_ids=[c.item_id for c in request.candidates],
        position=position,
        query_category=query_category,
        page_size=request.page_size,
        model=model,
    )
