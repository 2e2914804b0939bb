"""Importance correction between the policy that sampled a page and the one the update starts from.

Every update starts from the *proximal* policy π_old: the trainer's weights
when it scores the step's experience (``old_logprobs``); the clipped
surrogate keeps the update near it. The pages were sampled by the
*behaviour* policy μ, whose per-token logprobs the rollout workers return.
On-policy the two are the same weights, and μ equals π_old up to rollout and
trainer numerics (under 1e-5 nats per token in fp32). With ``rl.overlap``
the pages of step t are sampled while step t-1 trains, by the weights before
that update, so μ is one version behind π_old, and the surrogate's
expectation must be moved from μ to π_old by the per-token weight

    w_t = π_old(a_t | s_t) / μ(a_t | s_t)          (no gradient flows through w)

which multiplies token t's surrogate term. How w is kept in check is
``rl.off_policy.correction``, a name in :data:`CORRECTIONS`:

- ``tis`` (truncated importance sampling): w_t <- min(w_t, cap), with
  ``rl.off_policy.tis_cap``; unbiased where w_t <= cap, variance bounded by cap^2;
- ``mask``: w_t <- w_t where 1/threshold <= w_t <= threshold, else 0 (the
  token leaves the loss), with ``rl.off_policy.mask_threshold``;
- ``none``: w_t <- 1 (the uncorrected update, for comparison).

With overlap off every correction leaves w = 1 within fp32 tolerance, so the
loop is exactly on-policy; with a bf16 rollout and an fp32 trainer the same
weights correct the numeric mismatch.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch

from pagerl.registry import Registry, lookup, register

Stats = Dict[str, float]
# (log w [B, T], mask [B, T], cfg: OffPolicyConfig) -> (w [B, T], fraction of tokens changed)
Correction = Callable[..., Tuple[torch.Tensor, torch.Tensor]]
CORRECTIONS: Registry = Registry("rl.off_policy.correction")


@register(CORRECTIONS, "tis")
def truncated(log_w: torch.Tensor, mask: torch.Tensor, cfg) -> Tuple[torch.Tensor, torch.Tensor]:
    w = torch.exp(log_w)
    return w.clamp(max=float(cfg.tis_cap)), w > float(cfg.tis_cap)


@register(CORRECTIONS, "mask")
def masked(log_w: torch.Tensor, mask: torch.Tensor, cfg) -> Tuple[torch.Tensor, torch.Tensor]:
    w = torch.exp(log_w)
    threshold = float(cfg.mask_threshold)
    outside = (w > threshold) | (w < 1.0 / threshold)
    return torch.where(outside, torch.zeros_like(w), w), outside


@register(CORRECTIONS, "none")
def uncorrected(log_w: torch.Tensor, mask: torch.Tensor, cfg) -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.ones_like(log_w), torch.zeros_like(log_w, dtype=torch.bool)


def importance_weights(old_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, mask: torch.Tensor,
                       cfg) -> Tuple[torch.Tensor, Stats]:
    """Per-token weights w (0 off ``mask``) and their statistics, by ``cfg.correction``.

    Stats (over the tokens of ``mask``): ``is_ratio_mean``, ``is_ratio_min``
    and ``is_ratio_max`` of the raw π_old / μ, and ``is_corrected_fraction``,
    the share of tokens the correction truncated or masked.
    """
    if old_logprobs.shape != behaviour_logprobs.shape or old_logprobs.shape != mask.shape:
        raise ValueError(f"old_logprobs {tuple(old_logprobs.shape)}, behaviour_logprobs "
                         f"{tuple(behaviour_logprobs.shape)} and mask {tuple(mask.shape)} must have one shape")
    keep = mask.to(torch.bool)
    log_w = torch.where(keep, (old_logprobs - behaviour_logprobs).double(), torch.zeros((), dtype=torch.float64))
    w, changed = lookup(CORRECTIONS, cfg.correction)(log_w, keep, cfg)
    w = torch.where(keep, w, torch.zeros_like(w))
    raw = torch.exp(log_w[keep])
    n = max(1, int(keep.sum()))
    stats = {
        "is_ratio_mean": float(raw.mean()) if raw.numel() else 1.0,
        "is_ratio_min": float(raw.min()) if raw.numel() else 1.0,
        "is_ratio_max": float(raw.max()) if raw.numel() else 1.0,
        "is_corrected_fraction": float((changed & keep).sum()) / n,
    }
    return w, stats
