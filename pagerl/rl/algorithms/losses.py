"""Losses of a PPO-family update: aggregation, clipped surrogate, clipped value
loss, entropy bonus and KL-as-loss.

Every loss is first a per-token tensor l[B, T]; ``rl.loss_agg`` says how it
becomes one number (m = mask, R = the rows with at least one token):

    token_mean           sum_{b,t} l m / sum_{b,t} m
    seq_mean_token_sum   (1 / |R|) sum_{b in R} sum_t l m
    seq_mean_token_mean  (1 / |R|) sum_{b in R} (sum_t l m / sum_t m)

token_mean weighs every token alike (long pages count more), the seq_* modes
every page alike. An empty batch gives 0. With ``denominator`` given (e.g. the
token or page count of the whole minibatch over every micro-batch and rank,
so that gradient accumulation and data parallelism sum to the full-batch
loss) it replaces sum m (token_mean) or |R| (seq_*).

Clipped surrogate, with r = exp(logp - old_logp) and an asymmetric range:

    l = -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)

so a positive advantage stops pushing once r > 1 + clip_high and a negative
one once r < 1 - clip_low; a larger clip_high lets rare good tokens grow more.

Value loss with value clipping (eps = ``value_clip``; none when eps <= 0 or
no old values are given):

    l = 1/2 max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)

Entropy bonus: -coef * agg(H), H[b, t] = -sum_v p_v log p_v (a term to add to
the loss, so a positive coef raises the entropy). KL-as-loss (``rl.kl.mode =
loss``): coef * agg(KL estimator).

Stats are detached 0-dim tensors (all-reducible; ``float()`` them to log).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from pagerl.registry import Registry, lookup, register
from pagerl.rl.algorithms.checks import require_shape
from pagerl.rl.algorithms.kl import estimate_kl

# (loss[B, T], mask[B, T] bool, denominator or None) -> scalar
Aggregation = Callable[[torch.Tensor, torch.Tensor, Optional[float]], torch.Tensor]
LOSS_AGGREGATIONS = Registry("rl.loss_agg")
Stats = Dict[str, torch.Tensor]


def _masked_sum(x: torch.Tensor, keep: torch.Tensor, dim=None) -> torch.Tensor:
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    kept = torch.where(keep, x, zero)
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the tokens of ``mask`` (0 when there are none)."""
    keep = mask.to(torch.bool)
    return _masked_sum(x, keep) / keep.sum().clamp(min=1)


def _rows(keep: torch.Tensor) -> torch.Tensor:
    return keep.any(dim=1)


@register(LOSS_AGGREGATIONS, "token_mean")
def token_mean(loss: torch.Tensor, keep: torch.Tensor, denominator: Optional[float] = None) -> torch.Tensor:
    total = keep.sum().clamp(min=1) if denominator is None else denominator
    return _masked_sum(loss, keep) / total


@register(LOSS_AGGREGATIONS, "seq_mean_token_sum")
def seq_mean_token_sum(loss: torch.Tensor, keep: torch.Tensor, denominator: Optional[float] = None) -> torch.Tensor:
    rows = _rows(keep)
    total = rows.sum().clamp(min=1) if denominator is None else denominator
    return _masked_sum(loss, keep, dim=1).sum() / total


@register(LOSS_AGGREGATIONS, "seq_mean_token_mean")
def seq_mean_token_mean(loss: torch.Tensor, keep: torch.Tensor, denominator: Optional[float] = None) -> torch.Tensor:
    rows = _rows(keep)
    per_row = _masked_sum(loss, keep, dim=1) / keep.sum(dim=1).clamp(min=1)
    total = rows.sum().clamp(min=1) if denominator is None else denominator
    return per_row.sum() / total


def aggregate_loss(
    loss: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean", denominator: Optional[float] = None
) -> torch.Tensor:
    """One number from per-token ``loss`` [B, T] by ``rl.loss_agg`` = ``mode`` (module doc)."""
    if loss.dim() != 2:
        raise ValueError(f"loss: expected per-token losses [B, T], got shape {tuple(loss.shape)}")
    require_shape("mask", mask, loss.shape)
    if denominator is not None and denominator <= 0:
        raise ValueError(f"denominator: expected > 0, got {denominator}")
    return lookup(LOSS_AGGREGATIONS, mode)(loss, mask.to(torch.bool), denominator)


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    loss_agg: str = "token_mean",
    denominator: Optional[float] = None,
    weights: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Stats]:
    """The clipped surrogate loss and its stats.

    ``weights`` (no gradient), when given, multiply each token's term: the
    importance correction from the behaviour policy to ``old_logprobs``
    (:mod:`pagerl.rl.algorithms.off_policy`).

    Stats: ``clip_fraction`` (share of tokens where the clipped term is the
    smaller, i.e. carries no gradient), split into ``clip_fraction_low`` and
    ``clip_fraction_high`` by the bound that binds; ``approx_kl``, the token
    mean of (r - 1) - log r, which estimates KL(old || new) from samples of
    the old policy; ``ratio_mean`` and ``ratio_max`` over the tokens.
    """
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs: expected [B, T], got shape {tuple(logprobs.shape)}")
    require_shape("old_logprobs", old_logprobs, logprobs.shape)
    require_shape("advantages", advantages, logprobs.shape)
    require_shape("mask", mask, logprobs.shape)
    if not 0 <= clip_low < 1:
        raise ValueError(f"clip_low: expected in [0, 1), got {clip_low}")
    if clip_high < 0:
        raise ValueError(f"clip_high: expected >= 0, got {clip_high}")
    keep = mask.to(torch.bool)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    log_ratio = torch.where(keep, logprobs - old_logprobs, zero)
    adv = torch.where(keep, advantages.to(logprobs.dtype), zero)
    ratio = torch.exp(log_ratio)
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    unclipped, clipped = ratio * adv, clipped_ratio * adv
    per_token = -torch.min(unclipped, clipped)
    if weights is not None:
        require_shape("weights", weights, logprobs.shape)
        per_token = per_token * torch.where(keep, weights.detach().to(per_token.dtype), zero)
    loss = aggregate_loss(per_token, keep, loss_agg, denominator)

    with torch.no_grad():
        binds = keep & (clipped < unclipped)
        n = keep.sum()
        stats: Stats = {
            "clip_fraction": masked_mean(binds.to(ratio.dtype), keep),
            "clip_fraction_low": masked_mean((binds & (ratio < 1)).to(ratio.dtype), keep),
            "clip_fraction_high": masked_mean((binds & (ratio > 1)).to(ratio.dtype), keep),
            "approx_kl": masked_mean(ratio - 1 - log_ratio, keep),
            "ratio_mean": masked_mean(ratio, keep),
            "ratio_max": ratio.masked_fill(~keep, float("-inf")).max() if n > 0 else zero.clone(),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


def clipped_value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_values: Optional[torch.Tensor] = None,
    value_clip: float = 0.2,
    loss_agg: str = "token_mean",
    denominator: Optional[float] = None,
) -> Tuple[torch.Tensor, Stats]:
    """The (clipped) value loss; stats ``value_clip_fraction`` (share of tokens
    where the clipped error is the larger), ``value_mean`` and ``value_error``
    (token mean of (V - R)^2)."""
    if values.dim() != 2:
        raise ValueError(f"values: expected [B, T], got shape {tuple(values.shape)}")
    require_shape("returns", returns, values.shape)
    require_shape("mask", mask, values.shape)
    keep = mask.to(torch.bool)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    # Padding is zeroed before any arithmetic so a non-finite value there
    # cannot turn into a NaN gradient through the masked sum.
    v = torch.where(keep, values, zero)
    target = torch.where(keep, returns.to(values.dtype), zero)
    error = (v - target) ** 2
    if old_values is not None and value_clip > 0:
        require_shape("old_values", old_values, values.shape)
        old = torch.where(keep, old_values.to(values.dtype), zero)
        clipped_values = old + (v - old).clamp(-value_clip, value_clip)
        clipped_error = (clipped_values - target) ** 2
        per_token = 0.5 * torch.max(error, clipped_error)
        clip_binds = keep & (clipped_error > error)
    else:
        per_token = 0.5 * error
        clip_binds = torch.zeros_like(keep)
    loss = aggregate_loss(per_token, keep, loss_agg, denominator)
    with torch.no_grad():
        stats: Stats = {
            "value_clip_fraction": masked_mean(clip_binds.to(values.dtype), keep),
            "value_mean": masked_mean(v, keep),
            "value_error": masked_mean(error, keep),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = -sum_v p_v log p_v over the last dim of ``logits`` [B, T, V] -> [B, T].

    Tokens forbidden by constrained decoding may carry -inf logits; they have
    p = 0 and add 0 (not 0 * -inf = NaN).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    terms = torch.where(p > 0, p * logp, torch.zeros((), dtype=p.dtype, device=p.device))
    return -terms.sum(dim=-1)


def entropy_bonus(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    coef: float,
    loss_agg: str = "token_mean",
    denominator: Optional[float] = None,
) -> torch.Tensor:
    """-coef * agg(entropy): added to the loss, a positive coef rewards exploration."""
    return -coef * aggregate_loss(entropy, mask, loss_agg, denominator)


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    estimator: str = "k3",
    coef: float,
    loss_agg: str = "token_mean",
    denominator: Optional[float] = None,
) -> torch.Tensor:
    """coef * agg(KL estimator): the KL term of ``rl.kl.mode = loss`` (gradient through logprobs)."""
    return coef * aggregate_loss(estimate_kl(logprobs, ref_logprobs, mask, estimator), mask, loss_agg, denominator)
