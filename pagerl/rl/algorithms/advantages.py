"""Advantage estimators for mixed-grained page rewards, with per-slot credit.

Notation. Row b of a batch is one page in the response frame: its K_b index
tokens at positions t = 0 .. K_b - 1 (slot t), EOS at t = K_b, padding after;
m[b, t] = 1 exactly on t <= K_b. Inputs (:class:`AdvantageInputs`): page
rewards p[b], item rewards I[b, t] (read only at t < K_b), the weights w_page
and w_item, group ids g[b] (the pages sampled for one request share one),
kl[b, t] (the ``kl_penalty`` input: -coef * KL[b, t] when ``rl.kl.mode =
reward``, else 0) and, for gae, values V[b, t] (the critic's value of the
state before token t). eps = 1e-6; means and stds are population statistics;
every output is 0 where m = 0. This is our own design (the paper gives none).

Token rewards:

    r[b, t] = w_item I[b, t] [t < K_b] + w_page p[b] [t = K_b] + kl[b, t]

Why per slot: item rewards fall with the slot (position bias), so a baseline
pooled over slots makes whatever sits in slot 0 look good. With
``baseline_scope = per_slot`` every baseline / normalisation statistic of an
item reward is computed among rewards at the *same slot position*; with
``pooled`` over all slots together (kept for comparison). The page reward is
credited to every token of its page.

Group estimators (``grpo``, ``rloo``; the group of b is G(b) = {b' : g[b'] = g[b]}).
The item set of (b, k), k < K_b, is

    per_slot  S(b, k) = {I[b', k]  : b' in G(b), k < K_b'}
    pooled    S(b, k) = {I[b', k'] : b' in G(b), k' < K_b'}

and S_-(b, k) is its part with b' != b (all of page b's entries left out).

    grpo  P[b]     = (p[b] - mean_{G(b)} p) / (std_{G(b)} p + eps)
          Ia[b, k] = (I[b, k] - mean S(b, k)) / (std S(b, k) + eps)
    rloo  P[b]     = p[b] - mean {p[b'] : b' in G(b), b' != b}
          Ia[b, k] = I[b, k] - mean S_-(b, k)

(rloo: 0 where the set left over is empty.) A group of one page, or of equal
rewards, gives 0 for that part. ``slot_credit`` turns item advantages into
the credit of token t:

    own    C[b, t] = Ia[b, t]                     (t < K_b)
    to_go  C[b, t] = sum_{s=t}^{K_b - 1} Ia[b, s] (t < K_b)
           C[b, K_b] = 0

    A[b, t] = w_page P[b] + w_item C[b, t] + sum_{s=t}^{K_b} kl[b, s]   (t <= K_b)

and no returns (None).

Return estimators (``slot_credit`` is not read: the return G[b, t] already
credits token t with the rewards of s >= t; gamma = 0 is "own", gamma = 1
"to_go"):

    G[b, t] = sum_{s=t}^{K_b} gamma^(s - t) r[b, s]

    whiten(x)[b, t] = (x[b, t] - mean_t x) / (std_t x + eps), the statistics
        over {x[b', t] : m[b', t] = 1} (the batch at position t) for
        per_slot, over every token with m = 1 for pooled.

    reinforce_pp           A = whiten(G); returns G.
    reinforce_pp_baseline  A[b, t] = (G[b, t] - mu_t) / (sigma_t + eps), mu_t and
                           sigma_t the running mean and std of G at position t
                           (pooled: over all positions) of every batch so far,
                           *this one included* (:class:`SlotBaseline`,
                           updated first); returns G.
    gae                    V'[b, t] = V[b, t] m[b, t] (V' = 0 beyond EOS),
                           delta[b, t] = r[b, t] + gamma V'[b, t+1] - V'[b, t],
                           Ahat[b, t] = sum_{l=0}^{K_b - t} (gamma lam)^l delta[b, t+l],
                           returns = Ahat + V' (the critic's targets),
                           A = whiten(Ahat).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from pagerl.config.schema import RLConfig
from pagerl.registry import Registry, lookup, register
from pagerl.rl.algorithms.advantage_baselines import (
    BASELINE_SCOPES,
    SlotBaseline,
    dense_groups,
    leave_one_out,
    standardize,
)
from pagerl.rl.algorithms.checks import optional_shape, require_frame, require_shape

Result = Tuple[torch.Tensor, Optional[torch.Tensor]]
AdvantageEstimator = Callable[..., Result]
ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
# (Ia[B, T] float64, zero off the slots) -> C[B, T]
SLOT_CREDITS = Registry("rl.slot_credit")


@dataclass
class AdvantageInputs:
    """One batch of pages in the response frame (shapes in the module doc; checked here)."""

    page_rewards: torch.Tensor
    item_rewards: torch.Tensor
    mask: torch.Tensor
    w_page: float = 1.0
    w_item: float = 1.0
    group_ids: Optional[torch.Tensor] = None
    kl_penalty: Optional[torch.Tensor] = None
    values: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        require_frame(self.mask)
        b, t = self.mask.shape
        require_shape("page_rewards", self.page_rewards, (b,))
        require_shape("item_rewards", self.item_rewards, (b, t))
        if self.group_ids is not None:
            self.group_ids = torch.as_tensor(self.group_ids, device=self.mask.device)
            if self.group_ids.is_floating_point() or self.group_ids.is_complex():
                raise ValueError(f"group_ids: expected integer ids, got dtype {self.group_ids.dtype}")
        optional_shape("group_ids", self.group_ids, (b,))
        optional_shape("kl_penalty", self.kl_penalty, (b, t))
        optional_shape("values", self.values, (b, t))
        for name in ("page_rewards", "item_rewards", "kl_penalty", "values"):
            x = getattr(self, name)
            if x is not None and not torch.isfinite(x[self.mask.bool()] if x.dim() == 2 else x).all():
                raise ValueError(f"{name}: non-finite entries on response tokens")

    @property
    def dtype(self) -> torch.dtype:
        return self.page_rewards.dtype if self.page_rewards.is_floating_point() else torch.float32


class _Frame:
    """The masks and float64 rewards every estimator needs."""

    def __init__(self, x: AdvantageInputs) -> None:
        self.keep = x.mask.to(torch.bool)
        b, t = self.keep.shape
        self.length = t
        eos = self.keep.sum(dim=1) - 1
        positions = torch.arange(t, device=self.keep.device)[None, :]
        self.slots = positions < eos[:, None]
        self.eos = positions == eos[:, None]
        zero = torch.zeros((), dtype=torch.float64, device=self.keep.device)
        self.zero = zero
        self.page = x.page_rewards.to(torch.float64)
        self.items = torch.where(self.slots, x.item_rewards.to(torch.float64), zero)
        kl = x.kl_penalty if x.kl_penalty is not None else torch.zeros_like(self.items)
        self.kl = torch.where(self.keep, kl.to(torch.float64), zero)
        self.rewards = (
            x.w_item * self.items + torch.where(self.eos, x.w_page * self.page[:, None], zero) + self.kl
        )

    def masked(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.where(self.keep, x, self.zero).to(dtype)


def _to_go(x: torch.Tensor) -> torch.Tensor:
    """sum_{s >= t} x[b, s] along the last dim."""
    return x.flip(1).cumsum(1).flip(1)


def _discounted_to_go(x: torch.Tensor, factor: float) -> torch.Tensor:
    """sum_{s >= t} factor^(s - t) x[b, s] along the last dim."""
    out = torch.zeros_like(x)
    running = torch.zeros_like(x[:, 0])
    for t in range(x.shape[1] - 1, -1, -1):
        running = x[:, t] + factor * running
        out[:, t] = running
    return out


@register(SLOT_CREDITS, "own")
def own_credit(item_advantages: torch.Tensor) -> torch.Tensor:
    return item_advantages


@register(SLOT_CREDITS, "to_go")
def to_go_credit(item_advantages: torch.Tensor) -> torch.Tensor:
    return _to_go(item_advantages)


def _whiten(x: torch.Tensor, frame: _Frame, scope: str) -> torch.Tensor:
    groups = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    return standardize(x, lookup(BASELINE_SCOPES, scope)(groups, frame.length), frame.keep)


def _groups(x: AdvantageInputs, estimator: str) -> torch.Tensor:
    if x.group_ids is None:
        raise ValueError(
            f"group_ids: {estimator} needs them (which request each page was sampled for), got None"
        )
    return dense_groups(x.group_ids)


def _compose(x: AdvantageInputs, frame: _Frame, page_adv: torch.Tensor, item_adv: torch.Tensor, slot_credit: str):
    credit = lookup(SLOT_CREDITS, slot_credit)(item_adv)
    credit = torch.where(frame.slots, credit, frame.zero)
    adv = x.w_page * page_adv[:, None] + x.w_item * credit + _to_go(frame.kl)
    return frame.masked(adv, x.dtype), None


def _check_options(baseline_scope: str, slot_credit: str, gamma: float, lam: float) -> None:
    lookup(BASELINE_SCOPES, baseline_scope)
    lookup(SLOT_CREDITS, slot_credit)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"rl.gamma: expected in [0, 1], got {gamma}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"rl.lam: expected in [0, 1], got {lam}")


@register(ADVANTAGE_ESTIMATORS, "grpo")
def grpo(
    x: AdvantageInputs,
    *,
    baseline_scope: str = "per_slot",
    slot_credit: str = "own",
    gamma: float = 1.0,
    lam: float = 0.95,
    baseline: Optional[SlotBaseline] = None,
) -> Result:
    """Group-standardised page and item advantages (module doc)."""
    _check_options(baseline_scope, slot_credit, gamma, lam)
    frame, groups = _Frame(x), _groups(x, "grpo")
    page_adv = standardize(frame.page[:, None], groups[:, None], torch.ones_like(frame.page[:, None], dtype=torch.bool))
    cells = lookup(BASELINE_SCOPES, baseline_scope)(groups, frame.length)
    return _compose(x, frame, page_adv[:, 0], standardize(frame.items, cells, frame.slots), slot_credit)


@register(ADVANTAGE_ESTIMATORS, "rloo")
def rloo(
    x: AdvantageInputs,
    *,
    baseline_scope: str = "per_slot",
    slot_credit: str = "own",
    gamma: float = 1.0,
    lam: float = 0.95,
    baseline: Optional[SlotBaseline] = None,
) -> Result:
    """Leave-one-out page and item advantages, no std scaling (module doc)."""
    _check_options(baseline_scope, slot_credit, gamma, lam)
    frame, groups = _Frame(x), _groups(x, "rloo")
    rows = torch.arange(groups.shape[0], device=groups.device)
    everyone = torch.ones_like(frame.page[:, None], dtype=torch.bool)
    page_adv = leave_one_out(frame.page[:, None], groups[:, None], everyone, rows[:, None])[:, 0]
    cells = lookup(BASELINE_SCOPES, baseline_scope)(groups, frame.length)
    item_adv = leave_one_out(frame.items, cells, frame.slots, rows[:, None].expand_as(cells))
    return _compose(x, frame, page_adv, item_adv, slot_credit)


@register(ADVANTAGE_ESTIMATORS, "reinforce_pp")
def reinforce_pp(
    x: AdvantageInputs,
    *,
    baseline_scope: str = "per_slot",
    slot_credit: str = "own",
    gamma: float = 1.0,
    lam: float = 0.95,
    baseline: Optional[SlotBaseline] = None,
) -> Result:
    """Discounted returns, whitened over the batch per position or pooled (module doc)."""
    _check_options(baseline_scope, slot_credit, gamma, lam)
    frame = _Frame(x)
    returns = frame.masked(_discounted_to_go(frame.rewards, gamma), torch.float64)
    return frame.masked(_whiten(returns, frame, baseline_scope), x.dtype), returns.to(x.dtype)


@register(ADVANTAGE_ESTIMATORS, "reinforce_pp_baseline")
def reinforce_pp_baseline(
    x: AdvantageInputs,
    *,
    baseline_scope: str = "per_slot",
    slot_credit: str = "own",
    gamma: float = 1.0,
    lam: float = 0.95,
    baseline: Optional[SlotBaseline] = None,
) -> Result:
    """Discounted returns against the running per-slot baseline, which this updates (module doc)."""
    _check_options(baseline_scope, slot_credit, gamma, lam)
    if baseline is None:
        raise ValueError(
            "baseline: reinforce_pp_baseline needs a SlotBaseline (its running moments live across steps)"
        )
    if baseline.scope != baseline_scope:
        raise ValueError(f"baseline: its scope is {baseline.scope!r} but baseline_scope is {baseline_scope!r}")
    frame = _Frame(x)
    returns = frame.masked(_discounted_to_go(frame.rewards, gamma), torch.float64)
    baseline.update(returns, frame.keep)
    return frame.masked(baseline.normalize(returns, frame.keep), x.dtype), returns.to(x.dtype)


@register(ADVANTAGE_ESTIMATORS, "gae")
def gae(
    x: AdvantageInputs,
    *,
    baseline_scope: str = "per_slot",
    slot_credit: str = "own",
    gamma: float = 1.0,
    lam: float = 0.95,
    baseline: Optional[SlotBaseline] = None,
) -> Result:
    """Generalised advantage estimation with the critic's values, then whitening (module doc)."""
    _check_options(baseline_scope, slot_credit, gamma, lam)
    if x.values is None:
        raise ValueError("values: gae needs the critic's values [B, T], got None")
    frame = _Frame(x)
    values = frame.masked(x.values.to(torch.float64), torch.float64)
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = frame.masked(frame.rewards + gamma * next_values - values, torch.float64)
    raw = frame.masked(_discounted_to_go(deltas, gamma * lam), torch.float64)
    returns = frame.masked(raw + values, x.dtype)
    return frame.masked(_whiten(raw, frame, baseline_scope), x.dtype), returns


def advantage_options(cfg: RLConfig) -> dict:
    """The estimator keywords a recipe sets: baseline_scope, slot_credit, gamma, lam."""
    return {"baseline_scope": cfg.baseline_scope, "slot_credit": cfg.slot_credit, "gamma": cfg.gamma, "lam": cfg.lam}


def compute_advantages(
    estimator: str, inputs: AdvantageInputs, *, baseline: Optional[SlotBaseline] = None, **options
) -> Result:
    """``(advantages[B, T], returns[B, T] or None)`` by the estimator named ``estimator``."""
    return lookup(ADVANTAGE_ESTIMATORS, estimator)(inputs, baseline=baseline, **options)
