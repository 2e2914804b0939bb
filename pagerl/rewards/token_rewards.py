"""Mixed-grained token rewards: page and item rewards placed on a page's tokens.

A page's response is its K index tokens in slot order, then EOS (see
:mod:`pagerl.tokenization.serialize`): one token per item. The RL algorithms
take one reward per response token; this module builds it. It is the
environment's part of the reward only: the KL penalty to the reference policy
is added by the algorithm.

The exact formula (our design; the paper states only that page- and
item-level rewards are combined). Inputs for a batch of B pages: page rewards
p[b], item rewards I[b, k] (k < K), validity v[b], the response mask M[b, t],
and the ``rewards.*`` keys w_page, w_item, normalize, clip, invalid_penalty.

1. **Finiteness.** A NaN or infinite p[b] or I[b, k] of a valid page raises
   :class:`~pagerl.rewards.reward_sources.RewardError`: the run stops rather than
   train on it. Rewards of invalid pages are ignored (they may be anything).
2. **Normalisation**, of page rewards and of item rewards *separately* (they
   have different scales, so w_page and w_item keep their meaning), with
   statistics over valid pages only, eps = 1e-6:

   - ``none``:    p^ = p,  I^ = I;
   - ``running``: the running moments (count, mean, M2) of all page rewards
     seen so far, *this batch included* (updated first; across ranks when
     ``all_reduce``), give p^ = (p - mean_p) / (std_p + eps); the same with
     the item moments over every item reward for I^. std is the population
     standard deviation;
   - ``joint``:   the same running moments, but one scale for both: the
     page rewards' std, s = std_p + eps, so p^ = (p - mean_p) / s and
     I^ = (I - mean_I) / s. The page reward and the summed item rewards of a
     page are two estimates of one quantity (the page's clicks, in the learned
     and simulator sources alike), and this keeps them comparable: what
     ``page_reward: residual`` needs, and what makes w_page and w_item shares
     of one scale rather than weights of two unrelated ones;
   - ``group``:   pages with the same ``group_ids`` (the pages sampled for one
     request, as GRPO groups them): p^[b] = (p[b] - mean_g p) / (std_g p + eps)
     over the valid pages of b's group, I^ likewise over all item rewards of
     those pages. A group of one page, or of equal rewards, gives 0.

3. **Clipping**: p~ = clamp(p^, -clip, clip), I~ = clamp(I^, -clip, clip)
   (no clipping when clip = 0).
4. **The page reward** (``rewards.page_reward``, :data:`PAGE_REWARDS`):

   - ``whole``:    P~[b] = p~[b], the page reward as it is;
   - ``residual``: P~[b] = p~[b] - sum_k I~[b, k] when w_item > 0 (else
     p~[b]): what the page reward says beyond the item rewards in use.

   Why ``residual``: an RL estimator credits the page reward to every token
   of the page, so slot t's token is also credited with the value of the
   slots above it, which were laid out before t and which t cannot change.
   With ``rl.slot_credit: to_go`` the credit of slot t is then
   w_page * (p - sum_s I_s) + w_item * sum_{s >= t} I_s: at the first token
   (w_item = 1) the mix w_page * p + (1 - w_page) * sum I of the two
   page-value estimates, at slot t the items' reward-to-go plus the page
   reward's correction for what the items miss (page-level effects, and
   the item model's blind spot for items below a slot). Measured on the
   starting policy's own samples (:mod:`pagerl.rl.credit_fidelity`), this
   credit tracks the exact credit better than crediting the whole page
   reward to every token.
5. **Placement.** For a valid page let t_0 < t_1 < ... < t_K be its K + 1
   response positions (M[b, t] = 1; exactly K + 1 of them, else an error).
   The token reward is

       R[b, t_k] = w_item * I~[b, k]   for k < K   (item k's index token)
       R[b, t_K] = w_page * P~[b]                  (EOS)

   and 0 elsewhere.
6. **Invalid pages** (v[b] = 0): R[b, last response position] =
   -invalid_penalty, 0 elsewhere (no weights, normalisation or clipping).
   With constrained decoding there are none; without it this is what teaches
   the policy to produce valid pages.

Page-only (w_item = 0), item-only (w_page = 0) and mixed are this same code.

The mask may be in any frame (response-only, or the whole prompt+response
sequence): positions are taken from it as they are, and R has its shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from pagerl.config.schema import RewardConfig
from pagerl.registry import Registry, lookup, register
from pagerl.rewards.reward_sources import RewardError

EPS = 1e-6


# ----------------------------------------------------------- running moments


@dataclass
class RunningMoments:
    """Count, mean and sum of squared deviations (M2) of a stream of numbers.

    Merging two sets (Chan et al.): n = n_a + n_b, d = mean_b - mean_a,
    mean = mean_a + d n_b / n, M2 = M2_a + M2_b + d^2 n_a n_b / n; exact in any
    order and numerically stable, unlike sums of squares.

    Across ranks (:meth:`all_reduce`), with every rank holding its own set:
    one SUM all-reduce of (n_r, n_r mean_r) gives n and mean, a second of
    M2_r + n_r (mean_r - mean)^2 gives M2, which is the same merge written as
    sums. In training the *running* state is identical on every rank, so only
    each batch's moments are all-reduced and then merged into it
    (:meth:`update` with ``all_reduce=True``); all-reducing the running state
    itself would count the shared history once per rank.

    The state is three plain numbers (:meth:`state_dict`), so it goes into any
    checkpoint as JSON.
    """

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: torch.Tensor) -> "RunningMoments":
        """Moments of the numbers in ``values`` (any shape), in float64."""
        x = values.detach().reshape(-1).to(torch.float64)
        n = x.numel()
        if n == 0:
            return cls()
        mean = x.mean()
        return cls(float(n), float(mean), float(((x - mean) ** 2).sum()))

    def merge(self, other: "RunningMoments") -> "RunningMoments":
        n = self.count + other.count
        if other.count == 0:
            return RunningMoments(self.count, self.mean, self.m2)
        if self.count == 0:
            return RunningMoments(other.count, other.mean, other.m2)
        delta = other.mean - self.mean
        return RunningMoments(
            n,
            self.mean + delta * other.count / n,
            self.m2 + other.m2 + delta * delta * self.count * other.count / n,
        )

    def all_reduce(self, group: Any = None) -> "RunningMoments":
        """The moments of the union of every rank's set (collective: all ranks call it)."""
        import torch.distributed as dist

        first = torch.tensor([self.count, self.count * self.mean], dtype=torch.float64)
        dist.all_reduce(first, op=dist.ReduceOp.SUM, group=group)
        n = float(first[0])
        if n == 0:
            return RunningMoments()
        mean = float(first[1]) / n
        second = torch.tensor([self.m2 + self.count * (self.mean - mean) ** 2], dtype=torch.float64)
        dist.all_reduce(second, op=dist.ReduceOp.SUM, group=group)
        return RunningMoments(n, mean, float(second[0]))

    def update(self, values: torch.Tensor, all_reduce: bool = False, group: Any = None) -> None:
        """Add a batch (all ranks' batches when ``all_reduce``) to the running state."""
        batch = RunningMoments.of(values)
        if all_reduce:
            batch = batch.all_reduce(group)
        merged = self.merge(batch)
        self.count, self.mean, self.m2 = merged.count, merged.mean, merged.m2

    @property
    def var(self) -> float:
        """Population variance (0 before two numbers were seen)."""
        return self.m2 / self.count if self.count > 0 else 0.0

    @property
    def std(self) -> float:
        return self.var ** 0.5

    def state_dict(self) -> Dict[str, float]:
        return {"count": float(self.count), "mean": float(self.mean), "m2": float(self.m2)}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        missing = {"count", "mean", "m2"} - set(state)
        if missing:
            raise ValueError(f"RunningMoments state lacks {sorted(missing)}: got keys {sorted(state)}")
        self.count, self.mean, self.m2 = float(state["count"]), float(state["mean"]), float(state["m2"])


@dataclass
class RewardNormalizer:
    """The running moments of page rewards and of item rewards, kept apart."""

    page: RunningMoments = field(default_factory=RunningMoments)
    item: RunningMoments = field(default_factory=RunningMoments)

    def state_dict(self) -> Dict[str, Dict[str, float]]:
        return {"page": self.page.state_dict(), "item": self.item.state_dict()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, float]]) -> None:
        self.page.load_state_dict(state["page"])
        self.item.load_state_dict(state["item"])


# ------------------------------------------------------------ normalisation

# (page[B], items[B, K], valid[B], group_ids[B] or None, normalizer, all_reduce, group)
#   -> (page^, items^)
Normalize = Callable[..., Tuple[torch.Tensor, torch.Tensor]]
NORMALIZATIONS: Registry = Registry("rewards.normalize")


def register_normalization(name: str) -> Callable[[Normalize], Normalize]:
    """Make a normalisation selectable as ``rewards.normalize: <name>`` (a name taken is refused)."""
    return register(NORMALIZATIONS, name)


@register_normalization("none")
def _no_normalization(page, items, valid, group_ids, normalizer, all_reduce, group):
    return page, items


@register_normalization("running")
def _running(page, items, valid, group_ids, normalizer, all_reduce, group):
    if normalizer is None:
        raise ValueError("rewards.normalize=running needs a RewardNormalizer (it keeps the running moments)")
    normalizer.page.update(page[valid], all_reduce, group)
    normalizer.item.update(items[valid], all_reduce, group)
    p, i = normalizer.page, normalizer.item
    return (page - p.mean) / (p.std + EPS), (items - i.mean) / (i.std + EPS)


@register_normalization("joint")
def _joint(page, items, valid, group_ids, normalizer, all_reduce, group):
    if normalizer is None:
        raise ValueError("rewards.normalize=joint needs a RewardNormalizer (it keeps the running moments)")
    normalizer.page.update(page[valid], all_reduce, group)
    normalizer.item.update(items[valid], all_reduce, group)
    scale = normalizer.page.std + EPS
    return (page - normalizer.page.mean) / scale, (items - normalizer.item.mean) / scale


@register_normalization("group")
def _per_group(page, items, valid, group_ids, normalizer, all_reduce, group):
    if group_ids is None:
        raise ValueError("rewards.normalize=group needs group_ids (which request each page was sampled for)")
    group_ids = torch.as_tensor(group_ids, device=page.device)
    if group_ids.shape != page.shape:
        raise ValueError(f"group_ids: expected shape {tuple(page.shape)}, got {tuple(group_ids.shape)}")
    out_page, out_items = torch.zeros_like(page), torch.zeros_like(items)
    for g in torch.unique(group_ids[valid]):
        rows = valid & (group_ids == g)
        pg, it = page[rows], items[rows]
        out_page[rows] = (pg - pg.mean()) / (pg.std(unbiased=False) + EPS)
        out_items[rows] = (it - it.mean()) / (it.std(unbiased=False) + EPS)
    return out_page, out_items


# ------------------------------------------------------------ page reward

# (page~[B], items~[B, K], w_item) -> P~[B]: what goes on EOS times w_page.
PAGE_REWARDS = Registry("rewards.page_reward")
# Page rewards that subtract item rewards, so both must be on one scale.
NEEDS_ONE_SCALE = ("residual",)
ONE_SCALE_NORMALIZATIONS = ("none", "joint")


@register(PAGE_REWARDS, "whole")
def _whole_page(page: torch.Tensor, items: torch.Tensor, w_item: float) -> torch.Tensor:
    return page


@register(PAGE_REWARDS, "residual")
def _residual_page(page: torch.Tensor, items: torch.Tensor, w_item: float) -> torch.Tensor:
    return page - items.sum(dim=1) if w_item > 0 else page


def shaped_rewards(
    page: torch.Tensor,
    items: torch.Tensor,
    valid: torch.Tensor,
    cfg: RewardConfig,
    normalizer: Optional[RewardNormalizer] = None,
    group_ids: Optional[torch.Tensor] = None,
    all_reduce: bool = False,
    process_group: Any = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Steps 2-4 of the module doc: ``(P~[B], I~[B, K])``, the page and item rewards the
    weights multiply. The RL controller and :func:`assemble_token_rewards` both call this,
    so the estimators and the token rewards start from the same numbers."""
    normalize = NORMALIZATIONS.get(cfg.normalize)
    if normalize is None:
        raise ValueError(f"rewards.normalize: unknown {cfg.normalize!r}; expected one of {sorted(NORMALIZATIONS)}")
    page_reward = lookup(PAGE_REWARDS, cfg.page_reward)
    if cfg.page_reward in NEEDS_ONE_SCALE and cfg.normalize not in ONE_SCALE_NORMALIZATIONS:
        raise ValueError(f"rewards.page_reward={cfg.page_reward} subtracts item rewards from page rewards: "
                         f"expected rewards.normalize in {ONE_SCALE_NORMALIZATIONS}, got {cfg.normalize!r}")
    page, items = normalize(page, items, valid, group_ids, normalizer, all_reduce, process_group)
    if cfg.clip > 0:
        page, items = page.clamp(-cfg.clip, cfg.clip), items.clamp(-cfg.clip, cfg.clip)
    return page_reward(page, items, float(cfg.w_item)), items


# ----------------------------------------------------------------- assembly


def response_positions(response_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row: the positions of its response tokens in order (padded with -1)
    as (B, L), and how many there are (B,)."""
    mask = response_mask.to(torch.bool)
    b, t = mask.shape
    counts = mask.sum(dim=1)
    # Stable sort of "not in response" puts response positions first, in order.
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    width = int(counts.max()) if b else 0
    positions = order[:, :width].clone()
    positions[torch.arange(width, device=mask.device)[None, :] >= counts[:, None]] = -1
    return positions, counts


def _check_finite(page: torch.Tensor, items: torch.Tensor, valid: torch.Tensor) -> None:
    for name, values in (("page", page[valid]), ("item", items[valid])):
        if not torch.isfinite(values).all():
            rows = torch.nonzero(valid).reshape(-1)
            bad = ~torch.isfinite(values.reshape(len(rows), -1)).all(dim=1)
            index = int(rows[bad][0])
            raise RewardError(
                f"non-finite {name} reward for page {index} of the batch "
                f"({(page if name == 'page' else items)[index].tolist()}); "
                "stopping rather than training on it (check the reward source)"
            )


def assemble_token_rewards(
    page_rewards: torch.Tensor,
    item_rewards: torch.Tensor,
    valid: torch.Tensor,
    response_mask: torch.Tensor,
    cfg: RewardConfig,
    normalizer: Optional[RewardNormalizer] = None,
    group_ids: Optional[torch.Tensor] = None,
    all_reduce: bool = False,
    process_group: Any = None,
) -> torch.Tensor:
    """Token rewards R[B, T] by the formula in the module doc.

    ``page_rewards`` (B,), ``item_rewards`` (B, K), ``valid`` (B,) bool,
    ``response_mask`` (B, T) 1 on response tokens. ``normalizer`` carries the
    running moments (needed for ``normalize=running``, updated in place);
    ``group_ids`` (B,) for ``normalize=group``; ``all_reduce`` merges the
    batch moments over ``process_group`` first (every rank must call).
    R has ``page_rewards``' float dtype (float32 for integer input).
    """
    if page_rewards.dim() != 1 or item_rewards.dim() != 2 or item_rewards.shape[0] != page_rewards.shape[0]:
        raise ValueError(
            f"expected page_rewards (B,) and item_rewards (B, K), got {tuple(page_rewards.shape)} "
            f"and {tuple(item_rewards.shape)}"
        )
    b, k = item_rewards.shape
    if tuple(valid.shape) != (b,) or response_mask.dim() != 2 or response_mask.shape[0] != b:
        raise ValueError(
            f"expected valid ({b},) and response_mask ({b}, T), got {tuple(valid.shape)} and "
            f"{tuple(response_mask.shape)}"
        )
    dtype = page_rewards.dtype if page_rewards.is_floating_point() else torch.float32
    valid = valid.to(torch.bool)
    _check_finite(page_rewards, item_rewards, valid)
    # Invalid pages' rewards are never read; zero them so no NaN leaks through arithmetic.
    page = torch.where(valid, page_rewards.to(dtype), torch.zeros((), dtype=dtype))
    items = torch.where(valid[:, None], item_rewards.to(dtype), torch.zeros((), dtype=dtype))

    page, items = shaped_rewards(page, items, valid, cfg, normalizer, group_ids, all_reduce, process_group)

    positions, counts = response_positions(response_mask)
    rewards = torch.zeros(response_mask.shape, dtype=dtype, device=page.device)
    wrong = valid & (counts != k + 1)
    if wrong.any():
        row = int(torch.nonzero(wrong)[0])
        raise ValueError(
            f"page {row} is valid but its response mask has {int(counts[row])} tokens; a page of "
            f"{k} items has {k + 1} (its index tokens, then EOS)"
        )
    empty = ~valid & (counts == 0)
    if empty.any():
        raise ValueError(f"page {int(torch.nonzero(empty)[0])} has an empty response mask: nowhere to put its penalty")
    rows = torch.nonzero(valid).reshape(-1)
    if len(rows):
        slots = positions[rows, : k + 1]
        values = torch.cat([cfg.w_item * items[rows], cfg.w_page * page[rows, None]], dim=1)
        rewards[rows[:, None], slots] = values
    bad = torch.nonzero(~valid).reshape(-1)
    if len(bad):
        last = positions[bad, counts[bad] - 1]
        rewards[bad, last] = -float(cfg.invalid_penalty)
    return rewards
