"""One RL step's experience as pure functions of tensors: no Ray, no role calls, no files.

What the trainer ranks computed for the step's pages (old and reference
logprobs, entropy, values), the logprobs the rollout workers sampled them with
(the behaviour policy's) and the rewards the reward workers scored become the
update's inputs here, in the response frame ``[B, T]`` of
:mod:`pagerl.rl.frames`:

1. **importance weights** π_old / μ per token (``rl.off_policy``;
   :func:`pagerl.rl.algorithms.off_policy.importance_weights`);
2. **shaped rewards**: page and item rewards normalised, clipped and the page
   reward chosen (``rewards.*``; :func:`pagerl.rewards.token_rewards.shaped_rewards`),
   item k's reward placed in column k;
3. **KL** to the reference per token (``rl.kl.estimator``) and, with
   ``rl.kl.mode: reward``, its penalty -coef * KL on each token's reward;
4. **advantages and returns** by the algorithm's estimator (``rl.algorithm``,
   with ``rl.baseline_scope``, ``rl.slot_credit``, ``rl.gamma``, ``rl.lam``).

:func:`compute_experience` does the four and returns an :class:`Experience`;
:func:`trainer_fields` are the batch keys the update reads from it;
:func:`experience_metrics` gathers the step's figures from it and computes
nothing the update uses. The loop's state is passed in: the reward moments
(``rewards.normalize: running`` or ``joint``) and the per-slot baseline
(REINFORCE++-baseline) take in this batch's statistics here; the KL
coefficient comes as its value (the controller moves it after the step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from pagerl.config.schema import RewardConfig, RLConfig
from pagerl.rewards.token_rewards import RewardNormalizer, shaped_rewards
from pagerl.rl.algorithms import AdvantageInputs, SlotBaseline, advantage_options, estimate_kl
from pagerl.rl.algorithms.advantages import AdvantageEstimator
from pagerl.rl.algorithms.off_policy import importance_weights


@dataclass(frozen=True)
class Experience:
    """One step's experience in the response frame ``[B, T]`` (``K``: slots of the widest page).

    Logprobs and entropy are float32 as the roles computed them; rewards, KL,
    importance weights, advantages and returns are float64.
    """

    mask: torch.Tensor  # [B, T] bool: the response tokens
    old_logprobs: torch.Tensor  # [B, T] the trainer's policy π_old (the update's start)
    ref_logprobs: torch.Tensor  # [B, T] the reference policy
    behaviour_logprobs: torch.Tensor  # [B, T] what the rollout sampled with (μ)
    entropy: torch.Tensor  # [B, T] of π_old
    values: Optional[torch.Tensor]  # [B, T] the critic's, or None without one
    is_weights: torch.Tensor  # [B, T] the corrected π_old / μ, 0 off the mask
    is_stats: Dict[str, float]  # is_ratio_mean / _min / _max, is_corrected_fraction
    page_rewards: torch.Tensor  # [B] as the reward source scored them
    item_rewards: torch.Tensor  # [B, K] likewise
    valid: torch.Tensor  # [B] bool, the reward source's verdict
    page_shaped: torch.Tensor  # [B] normalised, clipped, the page reward of rewards.page_reward
    item_shaped: torch.Tensor  # [B, K] normalised and clipped
    kl: torch.Tensor  # [B, T] per-token KL to the reference, 0 off the mask
    kl_penalty: torch.Tensor  # [B, T] -coef * kl in rl.kl.mode=reward, else 0
    advantages: torch.Tensor  # [B, T]
    returns: Optional[torch.Tensor]  # [B, T] where the estimator gives them


def item_frame(item_shaped: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` item rewards -> ``[B, T]`` float64, item k on response column k (0 elsewhere)."""
    out = torch.zeros(mask.shape, dtype=torch.float64)
    out[:, : item_shaped.shape[1]] = item_shaped
    return out


def kl_terms(old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, rl: RLConfig,
             kl_coef: float):
    """``(KL[B, T], penalty[B, T])`` in float64: ``rl.kl.estimator`` of π_old against the reference, and
    the reward-mode penalty -``kl_coef`` * KL (zeros when ``rl.kl.mode`` is ``loss``: the trainer adds it
    to the loss instead)."""
    kl = estimate_kl(old_logprobs.double(), ref_logprobs.double(), mask, rl.kl.estimator)
    penalty = -kl_coef * kl if rl.kl.mode == "reward" else torch.zeros_like(kl)
    return kl, penalty


def compute_experience(
    mask: torch.Tensor,
    trainer_out: Mapping[str, torch.Tensor],
    behaviour_logprobs: torch.Tensor,
    page_rewards: torch.Tensor,
    item_rewards: torch.Tensor,
    valid: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    rl: RLConfig,
    rewards: RewardConfig,
    estimator: AdvantageEstimator,
    normalizer: RewardNormalizer,
    baseline: SlotBaseline,
    kl_coef: float,
) -> Experience:
    """The four steps of the module docstring on one step's whole batch.

    ``trainer_out``: the trainer ranks' ``old_logprobs``, ``ref_logprobs``,
    ``entropy`` (and ``values`` with a critic), ``[B, T]``;
    ``behaviour_logprobs`` ``[B, T]``; ``page_rewards`` ``[B]``,
    ``item_rewards`` ``[B, K]`` and ``valid`` ``[B]`` as the reward source
    scored them (float64); ``group_ids`` ``[B]``: the request each page was
    sampled for. ``normalizer`` and ``baseline`` take in this batch.
    """
    old, ref = trainer_out["old_logprobs"], trainer_out["ref_logprobs"]
    values = trainer_out.get("values")
    is_weights, is_stats = importance_weights(old, behaviour_logprobs, mask, rl.off_policy)
    page_shaped, item_shaped = shaped_rewards(page_rewards, item_rewards, valid, rewards, normalizer, group_ids)
    kl, penalty = kl_terms(old, ref, mask, rl, kl_coef)
    inputs = AdvantageInputs(page_rewards=page_shaped, item_rewards=item_frame(item_shaped, mask), mask=mask,
                             w_page=rewards.w_page, w_item=rewards.w_item, group_ids=group_ids, kl_penalty=penalty,
                             values=None if values is None else values.double())
    advantages, returns = estimator(inputs, baseline=baseline, **advantage_options(rl))
    return Experience(
        mask=mask, old_logprobs=old, ref_logprobs=ref, behaviour_logprobs=behaviour_logprobs,
        entropy=trainer_out["entropy"], values=values, is_weights=is_weights, is_stats=is_stats,
        page_rewards=page_rewards, item_rewards=item_rewards, valid=valid, page_shaped=page_shaped,
        item_shaped=item_shaped, kl=kl, kl_penalty=penalty, advantages=advantages, returns=returns,
    )


def trainer_fields(exp: Experience, critic: bool) -> Dict[str, torch.Tensor]:
    """What the update reads beside the packed batch: logprobs, advantages and importance weights
    (float32), and with a ``critic`` the old values and the returns."""
    out = {"old_logprobs": exp.old_logprobs, "ref_logprobs": exp.ref_logprobs,
           "advantages": exp.advantages.float(), "is_weights": exp.is_weights.float()}
    if critic:
        out.update(values=exp.values, returns=exp.returns.float())
    return out


def experience_metrics(exp: Experience, rewards: RewardConfig, staleness: Sequence[int]) -> Dict[str, float]:
    """The step's figures of its experience (``metrics.jsonl`` keys): rewards raw and shaped
    (``reward_total`` weighs them by ``rewards.w_page`` and ``rewards.w_item``), KL, entropy,
    advantages, the rollout/trainer logprob gap, validity, pages, staleness (versions between the
    weights that sampled each page and the trainer's), the importance ratios, and each slot's item
    reward."""
    mask, page, items = exp.mask, exp.page_rewards, exp.item_rewards
    tokens = mask.sum().clamp(min=1)
    mismatch = (exp.old_logprobs - exp.behaviour_logprobs).abs()[mask]
    metrics = {
        "reward_page": float(page.mean()), "reward_item": float(items.mean()),
        "reward_page_normalized": float(exp.page_shaped.mean()),
        "reward_item_normalized": float(exp.item_shaped.mean()),
        "reward_total": float(rewards.w_page * page.mean() + rewards.w_item * items.sum(1).mean()),
        "kl": float((exp.kl * mask).sum() / tokens), "kl_per_page": float((exp.kl * mask).sum(1).mean()),
        "entropy_rollout": float((exp.entropy * mask).sum() / tokens),
        "advantage_mean": float(exp.advantages[mask].mean()), "advantage_std": float(exp.advantages[mask].std()),
        "advantage_slot0_mean": float(exp.advantages[:, 0].mean()),
        "logprob_mismatch_max": float(mismatch.max()), "logprob_mismatch_mean": float(mismatch.mean()),
        "valid_rate": float(exp.valid.double().mean()), "pages": float(mask.shape[0]),
        "staleness_max": float(max(staleness)), "staleness_mean": float(np.mean(staleness)),
        **exp.is_stats,
    }
    for k in range(items.shape[1]):
        metrics[f"reward_item_slot{k}"] = float(items[:, k].mean())
    return metrics
