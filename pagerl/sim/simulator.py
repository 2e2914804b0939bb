"""The whole-page user simulator: ground truth for logging, scoring and the oracle.

The exact model (our design; all symbols are ``sim.*`` config keys)
--------------------------------------------------------------------
Relevance. For user u and item i the score is

    s(u, i) = (category_weight * A[u, cat(i)] + latent_weight * <w_u, v_i> / sqrt(d)
               + quality_weight * q_i + query_boost * [cat(i) == query category])
              / sqrt(category_weight^2 + latent_weight^2 + quality_weight^2)

and the **true relevance** is the click probability of an examined item,
before page effects: p(u, i) = sigmoid(relevance_scale * s(u, i) + relevance_bias).
(A: per-user category affinities, zero mean, unit spread; w_u, v_i: latent
vectors; q_i: item quality. See :mod:`pagerl.sim.world` for what of this a
model can see in the prompt.)

A page is K distinct candidates (i_0 .. i_{K-1}) top to bottom. Its value is
not a sum over items, for three reasons:

- **Diversity bonus** (set effect): with D distinct categories on the page,
  every item's click probability is multiplied by
  m_div = 1 + diversity_bonus * (D - 1) / (K - 1)   (m_div = 1 when K = 1).
- **Redundancy penalty** (order effect): an item with r near-duplicates shown
  above it has its click probability multiplied by (1 - redundancy_penalty)^r.
- **Cascade**: so  c_k = min(1, p(u, i_k) * m_div * (1 - redundancy_penalty)^{r_k})
  is the click probability at slot k given examination. The user reads top
  down; a user still on the page examines slot k with probability
  e_k = 1 / (1 + k)^position_bias, clicks with c_k, and after a click stays
  with probability continue_after_click (without a click always stays).

Hence, exactly, with alive_0 = 1:

    E[clicks]  = sum_k alive_k e_k c_k
    E[GMV]     = sum_k alive_k e_k c_k b(u, i_k) price(i_k)
    alive_{k+1} = alive_k (1 - (1 - continue_after_click) e_k c_k)

where b(u, i) = min(1, 2 purchase_rate sigmoid(s(u, i) - lambda_u z_i)) is
P(purchase | click), lambda_u the user's price sensitivity and z_i in [-1, 1]
the item's log-price position in [price_min, price_max]. A purchase does not
change whether the user goes on. Dwell time (seconds, clicked items only) is
exp(log 20 + 0.5 s(u, i) + 0.5 eps), eps ~ N(0, 1); it carries no reward.

Page metrics reported by :meth:`Simulator.score_page`: expected clicks and
GMV as above; NDCG@k with gain p(u, i) and discount 1/log2(slot + 2) against
the ideal ordering of all candidates; diversity = D / K; redundancy = (items
with a near-duplicate above them) / (K - 1), 0 when K = 1.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from pagerl.data.types import ItemFeedback, Request
from pagerl.sim.click_model import expected_outcomes, page_structure, score_one_page, slot_click_one_page
from pagerl.sim.errors import SimulatorError
from pagerl.sim.logging_policies import get_logging_policy, plackett_luce_log_prob, plackett_luce_sample
from pagerl.sim.oracle import OraclePage, search
from pagerl.sim.resolve import ResolvedRequest, resolve_request
from pagerl.sim.world import World

# Resolved requests kept per simulator (scoring many pages of one request
# resolves it once).
_RESOLVE_CACHE_SIZE = 4096
_DWELL_MEDIAN_S = 20.0


@dataclass
class PageScore:
    """Exact ground-truth metrics of one page for one request.

    ``expected_gmv``, ``ndcg`` and ``redundancy`` are None where the
    environment that scored the page has no such quantity (an environment
    without prices, true relevances or near-duplicates: pagerl.envs)."""

    expected_clicks: float
    expected_gmv: Optional[float]
    ndcg: Optional[float]
    diversity: float
    redundancy: Optional[float]
    valid: bool
    # Why the page is invalid ("" when valid).
    reason: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _invalid(reason: str) -> PageScore:
    return PageScore(0.0, 0.0, 0.0, 0.0, 0.0, valid=False, reason=reason)


class Simulator:
    """Samples requests, logged pages and feedback; scores pages exactly."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.cfg = world.cfg
        self._logging_logits = get_logging_policy(self.cfg.logging_policy)
        self._resolved: "OrderedDict[tuple, ResolvedRequest]" = OrderedDict()
        # Item indices of each near-duplicate group with more than one member.
        members: Dict[int, List[int]] = {}
        for i, g in enumerate(world.item_group.tolist()):
            members.setdefault(g, []).append(i)
        self._group_members = {g: m for g, m in members.items() if len(m) > 1}

    @property
    def world_seed(self) -> int:
        """The seed the world was drawn from (as :attr:`pagerl.envs.PageEnv.world_seed`)."""
        return int(self.world.seed)

    # ------------------------------------------------------------- requests
    def resolve(self, request: Request) -> ResolvedRequest:
        """The request's indices and ground truth (cached by its content ids)."""
        key = (
            request.request_id,
            request.user.user_id,
            request.query,
            request.page_size,
            tuple(c.item_id for c in request.candidates),
        )
        hit = self._resolved.get(key)
        if hit is not None:
            self._resolved.move_to_end(key)
            return hit
        resolved = resolve_request(self.world, request)
        self._resolved[key] = resolved
        if len(self._resolved) > _RESOLVE_CACHE_SIZE:
            self._resolved.popitem(last=False)
        return resolved

    def sample_request(self, rng: np.random.Generator, request_id: str) -> Request:
        """A random user, maybe a query, and N candidates retrieved around the
        user's interests (category affinity and quality plus Gumbel noise of
        scale candidate_noise), never the user's history items. A retrieved
        item's near-duplicate comes along with probability
        candidate_duplicate_rate. Candidates are shuffled, so their order in
        the prompt says nothing about relevance."""
        world, cfg = self.world, self.cfg
        n = cfg.candidates_per_request
        user = int(rng.integers(world.num_users))
        affinity = world.user_affinity[user]
        ask = rng.random() < cfg.query_rate
        query_category = int(rng.choice(len(affinity), p=_softmax(affinity))) if ask else -1
        retrieval = affinity[world.item_category] + 0.5 * world.item_quality
        if query_category >= 0:
            retrieval = retrieval + 2.0 * (world.item_category == query_category)
        keys = retrieval + cfg.candidate_noise * rng.gumbel(size=world.num_items)
        keys[world.user_history[user]] = -np.inf
        dup_coins = rng.random(n)
        chosen: List[int] = []
        taken = set(int(i) for i in world.user_history[user])
        for index in np.argsort(-keys, kind="stable"):
            if len(chosen) == n:
                break
            index = int(index)
            if index in taken:
                continue
            chosen.append(index)
            taken.add(index)
            siblings = self._group_members.get(int(world.item_group[index]), [])
            free = [s for s in siblings if s not in taken]
            if free and len(chosen) < n and dup_coins[len(chosen) - 1] < cfg.candidate_duplicate_rate:
                chosen.append(free[0])
                taken.add(free[0])
        order = rng.permutation(len(chosen))
        return Request(
            request_id=request_id,
            user=world.user(user),
            candidates=[world.item(chosen[j]) for j in order],
            page_size=cfg.page_size,
            query=world.categories[query_category] if query_category >= 0 else None,
        )

    # -------------------------------------------------------------- logging
    def logging_page(self, request: Request, rng: np.random.Generator) -> Tuple[List[str], float]:
        """A page drawn from the logging policy and its exact probability."""
        req = self.resolve(request)
        logits = self._logging_logits(self.world, req)
        positions = plackett_luce_sample(logits, req.page_size, rng)
        propensity = float(np.exp(plackett_luce_log_prob(logits, positions)))
        return [req.item_ids[j] for j in positions], propensity

    def logging_propensity(self, request: Request, page: Sequence[str]) -> float:
        """P(page | logging policy) of any page (0.0 for an invalid one)."""
        req = self.resolve(request)
        positions, reason = self._positions(req, page)
        if reason:
            return 0.0
        return float(np.exp(plackett_luce_log_prob(self._logging_logits(self.world, req), positions)))

    def logging_logits(self, request: Request) -> np.ndarray:
        """The logging policy's Plackett-Luce logits, one per entry of ``resolve(request).item_ids``
        (for off-policy checks with a related target policy: :mod:`pagerl.eval.logs_ips`)."""
        return np.asarray(self._logging_logits(self.world, self.resolve(request)), dtype=np.float64)

    # ------------------------------------------------------------- feedback
    def sample_feedback(
        self, request: Request, page: Sequence[str], rng: np.random.Generator
    ) -> Tuple[List[ItemFeedback], Dict[str, float]]:
        """One user visit of the page, drawn from the model in the module doc."""
        req = self.resolve(request)
        positions, reason = self._positions(req, page)
        if reason:
            raise SimulatorError(f"request {req.request_id!r}: cannot show an invalid page: {reason}")
        model = req.model
        click_prob, _, _ = slot_click_one_page(model, positions)
        scores = self.world.score(req.user, req.items[positions], req.query_category)
        k = len(positions)
        uniform = rng.random((k, 4))
        noise = rng.standard_normal(k)
        feedback, alive = [], True
        clicks = purchases = 0
        gmv = 0.0
        for slot, j in enumerate(positions):
            click = purchase = 0
            dwell = 0.0
            if alive and uniform[slot, 0] < model.exam[slot] and uniform[slot, 1] < click_prob[slot]:
                click = 1
                clicks += 1
                dwell = round(float(np.exp(np.log(_DWELL_MEDIAN_S) + 0.5 * scores[slot] + 0.5 * noise[slot])), 2)
                if uniform[slot, 2] < model.purchase[j]:
                    purchase = 1
                    purchases += 1
                    gmv += float(model.price[j])
                alive = uniform[slot, 3] < model.continue_after_click
            feedback.append(ItemFeedback(item_id=req.item_ids[j], click=click, purchase=purchase, dwell=dwell))
        outcome = {"gmv": round(gmv, 2), "clicks": float(clicks), "purchases": float(purchases)}
        return feedback, outcome

    # -------------------------------------------------------------- scoring
    def score_page(self, request: Request, page: Sequence[str], k: Optional[int] = None) -> PageScore:
        """Exact metrics of a page (no sampling); an invalid page scores zero
        (``valid`` False, ``reason`` says why)."""
        req = self.resolve(request)
        cutoff = self._cutoff(req, k)
        positions, reason = self._positions(req, page)
        if reason:
            return _invalid(reason)
        clicks, gmv, distinct, dups, _ = score_one_page(req.model, positions)
        width = req.page_size
        gains = req.model.click
        dcg = sum(float(gains[j]) * d for j, d in zip(positions[:cutoff], dcg_discounts(cutoff)))
        return PageScore(
            expected_clicks=clicks,
            expected_gmv=gmv,
            ndcg=dcg / ideal_dcg(gains, cutoff),
            diversity=distinct / width,
            redundancy=sum(1 for r in dups if r > 0) / (width - 1) if width > 1 else 0.0,
            valid=True,
        )

    def score_pages(
        self, request: Request, pages: Sequence[Sequence[str]], k: Optional[int] = None
    ) -> List[PageScore]:
        """:meth:`score_page` for many pages of one request in one vectorised
        pass (the same numbers, to float rounding)."""
        req = self.resolve(request)
        cutoff = self._cutoff(req, k)
        scores: List[Optional[PageScore]] = []
        valid_rows: List[List[int]] = []
        for page in pages:
            positions, reason = self._positions(req, page)
            scores.append(_invalid(reason) if reason else None)
            if not reason:
                valid_rows.append(positions)
        if not valid_rows:
            return scores  # type: ignore[return-value]
        model, width = req.model, req.page_size
        rows = np.asarray(valid_rows, dtype=np.intp)
        clicks, gmv = expected_outcomes(model, rows)
        distinct, dups_above = page_structure(model, rows)
        shown = min(cutoff, width)
        dcg = (model.click[rows[:, :shown]] * np.asarray(dcg_discounts(shown))).sum(axis=1)
        ndcg = dcg / ideal_dcg(model.click, cutoff)
        redundancy = (dups_above > 0).sum(axis=1) / (width - 1) if width > 1 else np.zeros(len(rows))
        filled = iter(range(len(rows)))
        for i, entry in enumerate(scores):
            if entry is None:
                r = next(filled)
                scores[i] = PageScore(
                    expected_clicks=float(clicks[r]),
                    expected_gmv=float(gmv[r]),
                    ndcg=float(ndcg[r]),
                    diversity=float(distinct[r]) / width,
                    redundancy=float(redundancy[r]),
                    valid=True,
                )
        return scores  # type: ignore[return-value]

    def expected_slot_clicks(self, request: Request, page: Sequence[str]) -> List[float]:
        """Exact expected clicks of each slot of a valid page (they sum to
        ``expected_clicks``): the item-level ground truth of a page."""
        req = self.resolve(request)
        positions, reason = self._positions(req, page)
        if reason:
            raise SimulatorError(f"request {req.request_id!r}: invalid page: {reason}")
        return score_one_page(req.model, positions).slot_clicks

    def true_relevance(self, request: Request) -> Dict[str, float]:
        """p(u, i) of each candidate: P(click | examined) without page effects."""
        req = self.resolve(request)
        return {iid: float(p) for iid, p in zip(req.item_ids, req.model.click)}

    # ------------------------------------------------------ reference pages
    def oracle_page(self, request: Request, objective: str = "clicks") -> OraclePage:
        """The page with the highest expected clicks (or GMV); see pagerl.sim.oracle.

        Exact (exhaustive) while N!/(N-K)! <= sim.oracle_exhaustive_limit,
        otherwise beam search with ``.exact`` False on the result."""
        req = self.resolve(request)
        positions, value, exact, method = search(
            req.model, self.cfg.oracle_exhaustive_limit, self.cfg.oracle_beam_width, objective
        )
        return OraclePage([req.item_ids[j] for j in positions], value, exact, method, objective)

    def without_latent_taste(self) -> "Simulator":
        """This world with every user's hidden latent vector set to zero (cached).

        Its scores keep what a request shows or hints at exactly (category
        affinities, item quality, the query, position and page effects) and
        drop the user-item latent match, which the prompt never shows (user
        features are only a noisy copy of it). Its oracle is the best a policy
        could do that knew everything but the latent taste.
        """
        if not hasattr(self, "_blind"):
            self._blind = Simulator(dataclasses.replace(self.world, user_latent=np.zeros_like(self.world.user_latent)))
        return self._blind

    def greedy_page(self, request: Request) -> List[str]:
        """Candidates sorted by true relevance: the best page of an additive model."""
        req = self.resolve(request)
        order = np.argsort(-req.model.click, kind="stable")[: req.page_size]
        return [req.item_ids[j] for j in order]

    def popularity_page(self, request: Request) -> List[str]:
        """The K most popular candidates (catalogue-wide popularity), most popular first."""
        req = self.resolve(request)
        order = np.argsort(-self.world.item_popularity[req.items], kind="stable")[: req.page_size]
        return [req.item_ids[j] for j in order]

    def random_page(self, request: Request, rng: np.random.Generator) -> List[str]:
        """K distinct candidates uniformly at random, in random order."""
        req = self.resolve(request)
        return [req.item_ids[j] for j in rng.choice(len(req.item_ids), size=req.page_size, replace=False)]

    # -------------------------------------------------------------- helpers
    @staticmethod
    def _cutoff(req: ResolvedRequest, k: Optional[int]) -> int:
        if k is None:
            return req.page_size
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"score_page: k must be an integer >= 1 (or None for the page size), got {k!r}")
        return int(k)

    @staticmethod
    def _positions(req: ResolvedRequest, page: Sequence[str]) -> Tuple[List[int], str]:
        """Candidate positions of a page, or an empty list and why it is invalid."""
        if isinstance(page, np.ndarray):
            page = page.tolist()
        if isinstance(page, (str, bytes)) or not isinstance(page, Sequence):
            return [], f"expected a list of item ids, got {type(page).__name__}"
        if len(page) != req.page_size:
            return [], f"has {len(page)} items, expected {req.page_size}"
        positions = []
        for slot, item_id in enumerate(page):
            j = req.position.get(item_id) if isinstance(item_id, str) else None
            if j is None:
                return [], f"slot {slot}: {item_id!r} is not a candidate"
            positions.append(j)
        if len(set(positions)) != len(positions):
            return [], "repeats an item"
        return positions, ""


def dcg_discounts(n: int) -> List[float]:
    return [1.0 / math.log2(slot + 2) for slot in range(n)]


def ideal_dcg(gains: np.ndarray, cutoff: int) -> float:
    """DCG of the best ordering of all candidates by true relevance (> 0: gains are sigmoids)."""
    best = sorted(gains.tolist(), reverse=True)[:cutoff]
    return sum(g * d for g, d in zip(best, dcg_discounts(len(best))))


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()
