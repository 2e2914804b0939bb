"""Credit fidelity: does a reward setting credit the right tokens, on the pages RL will see?

A reward model can rank logged pages well and still be a poor teacher for RL,
for two reasons no offline pair accuracy shows: RL compares pages the policy
itself samples for one request, which differ far less than a logged page and
a random one; and what trains each token is its *credit*, the share of the
page's rewards an advantage estimator assigns to it, which depends on the
weights, the normalisation, the page-reward form and the slot credit of the
recipe as much as on the reward model.

So this module measures the credit itself. For ``requests`` drawn from the
training requests RL samples from, it lays out ``samples`` pages per request
with the policy RL starts from, at the rollout's temperature and nucleus
(:func:`pagerl.models.generate.generate_pages`), and computes, with the RL
stage's own code (:func:`pagerl.rewards.token_rewards.shaped_rewards`, then
the advantage estimator):

- the **estimated credit** A[b, t] of each item token under a reward setting
  (``rewards.*`` and ``rl.slot_credit``), from the reward source RL would use
  (the learned reward models);
- the **exact credit** A*[b, t]: the same estimator on the environment's
  exact rewards (each slot's expected clicks, :meth:`PageEnv.score`), with
  item rewards only and reward-to-go credit, so that slot t is credited with
  the exact expected clicks of its own slot and every slot below it, the part
  of the page its choice can change, against the group's baseline.

The **fidelity** of a setting is the Pearson correlation of A and A* over
every item token of every page (slots with more spread weigh more, as they do
in the gradient); it is also given per slot. KL terms are left out: they are
the same for every setting. Pearson correlation ignores scale, so the
fidelity says whether a setting points the update the right way, not how far
it steps.

The estimator is the recipe's when it is a group estimator (``rloo``,
``grpo``), else ``rloo``: the others need a critic or statistics across
steps, which a one-batch diagnostic does not have.

Our design (the paper gives no such diagnostic). It needs an environment with
an exact scorer; where there is none the report says so and skips it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from pagerl.config.schema import RewardConfig
from pagerl.data.types import Request
from pagerl.models.generate import generate_pages
from pagerl.rewards.token_rewards import RewardNormalizer, shaped_rewards
from pagerl.rl.algorithms.advantages import AdvantageInputs, compute_advantages

# The estimators a one-batch diagnostic can run as RL runs them.
GROUP_ESTIMATORS = ("rloo", "grpo")
# The w_page values of the recipe's setting the report sweeps (w_item kept).
SWEEP_W_PAGE = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


@dataclasses.dataclass(frozen=True)
class CreditSetting:
    """What decides a token's credit, besides the reward model: the ``rewards`` section and ``rl.slot_credit``."""

    rewards: RewardConfig
    slot_credit: str


@dataclasses.dataclass
class SampledPages:
    """``samples`` pages for each request, grouped: page b belongs to ``requests[b // samples]``."""

    requests: List[Request]
    pages: List[List[str]]
    samples: int

    @property
    def group_ids(self) -> torch.Tensor:
        return torch.arange(len(self.pages)) // self.samples

    @property
    def page_requests(self) -> List[Request]:
        return [self.requests[b // self.samples] for b in range(len(self.pages))]


def sample_pages(policy: Any, tokenizer: Any, requests: Sequence[Request], *, samples: int,
                 temperature: float, top_p: float, seed: int, batch_size: int = 64) -> SampledPages:
    """``samples`` constrained pages per request from ``policy``, as the rollout samples them."""
    repeated = [r for r in requests for _ in range(samples)]
    made = generate_pages(
        policy, tokenizer, repeated, greedy=False, temperature=temperature, top_p=top_p,
        constrained=True, batch_size=batch_size, seed=seed)
    bad = [p for p in made if not p.valid]
    if bad:
        raise ValueError(f"credit fidelity: constrained sampling made an invalid page ({bad[0].reason})")
    return SampledPages(list(requests), [list(p.item_ids) for p in made], samples)


def exact_rewards(env: Any, sampled: SampledPages) -> Tuple[torch.Tensor, torch.Tensor]:
    """(page [B], items [B, K]): the environment's exact expected clicks of each page and slot."""
    slots = [env.expected_slot_clicks(q, p) for q, p in zip(sampled.page_requests, sampled.pages)]
    items = torch.tensor(slots, dtype=torch.float64)
    return items.sum(dim=1), items


def credit(page: torch.Tensor, items: torch.Tensor, group_ids: torch.Tensor, setting: CreditSetting,
           estimator: str) -> torch.Tensor:
    """Credit [B, K] of each item token under ``setting``, by the RL stage's own functions (module doc)."""
    b, k = items.shape
    valid = torch.ones(b, dtype=torch.bool)
    page_n, items_n = shaped_rewards(page, items, valid, setting.rewards, RewardNormalizer(), group_ids)
    mask = torch.ones(b, k + 1, dtype=torch.bool)
    frame = torch.zeros(b, k + 1, dtype=torch.float64)
    frame[:, :k] = items_n
    inputs = AdvantageInputs(page_rewards=page_n.double(), item_rewards=frame, mask=mask,
                             w_page=float(setting.rewards.w_page), w_item=float(setting.rewards.w_item),
                             group_ids=group_ids)
    advantages, _ = compute_advantages(estimator, inputs, baseline_scope="per_slot",
                                       slot_credit=setting.slot_credit)
    return advantages[:, :k].double()


def _pearson(a: torch.Tensor, b: torch.Tensor) -> Optional[float]:
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    a, b = a - a.mean(), b - b.mean()
    denominator = float(torch.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / denominator if denominator > 0 else None


def fidelity(estimated: torch.Tensor, exact: torch.Tensor) -> Dict[str, Any]:
    """Pearson correlation of two credits [B, K]: over every token, and per slot."""
    return {"pooled": _pearson(estimated, exact),
            "per_slot": [_pearson(estimated[:, t], exact[:, t]) for t in range(exact.shape[1])]}


def exact_setting() -> CreditSetting:
    """The reference credit: exact item rewards only, to go (module doc)."""
    return CreditSetting(RewardConfig(w_page=0.0, w_item=1.0, normalize="none", clip=0.0, page_reward="whole"),
                         "to_go")


def credit_fidelity(score: Callable[[List[Request], List[List[str]]], Tuple[Any, Any]], env: Any,
                    sampled: SampledPages, settings: Mapping[str, CreditSetting], estimator: str) -> Dict[str, Any]:
    """The fidelity of every named setting on ``sampled`` (module doc), as a JSON-ready dict.

    ``score(requests, pages) -> (page rewards [B], item rewards [B, K])`` is the reward source whose
    credit is measured (:meth:`pagerl.rewards.models.RewardModels.score` in a run)."""
    if estimator not in GROUP_ESTIMATORS:
        estimator = "rloo"
    group_ids = sampled.group_ids
    page_hat, items_hat = score(sampled.page_requests, sampled.pages)
    page_hat, items_hat = torch.as_tensor(page_hat), torch.as_tensor(items_hat)
    page_hat, items_hat = page_hat.double(), items_hat.double()
    page_true, items_true = exact_rewards(env, sampled)
    target = credit(page_true, items_true, group_ids, exact_setting(), estimator)
    rows = {}
    for name, setting in settings.items():
        rows[name] = {"w_page": float(setting.rewards.w_page), "w_item": float(setting.rewards.w_item),
                      "normalize": setting.rewards.normalize, "page_reward": setting.rewards.page_reward,
                      "slot_credit": setting.slot_credit,
                      **fidelity(credit(page_hat, items_hat, group_ids, setting, estimator), target)}
    return {"requests": len(sampled.requests), "pages": len(sampled.pages), "samples": sampled.samples,
            "estimator": estimator, "settings": rows}


def recipe_settings(rewards: RewardConfig, slot_credit: str) -> Dict[str, CreditSetting]:
    """The recipe's own setting and its sweep over ``SWEEP_W_PAGE`` (w_item kept), plus the page
    reward alone at weight 1: what the RM stage's report shows."""
    out = {"recipe": CreditSetting(rewards, slot_credit)}
    for w in SWEEP_W_PAGE:
        if rewards.w_item > 0 or w > 0:
            out[f"w_page={w:g}"] = CreditSetting(dataclasses.replace(rewards, w_page=float(w)), slot_credit)
    out["page reward only"] = CreditSetting(dataclasses.replace(rewards, w_page=1.0, w_item=0.0), slot_credit)
    return out


def training_requests(impressions: Sequence[Any], count: int, seed: int) -> List[Request]:
    """``count`` distinct training requests, drawn with ``seed`` (all of them when there are fewer)."""
    requests = [imp.request for imp in impressions]
    if count >= len(requests):
        return requests
    picks = np.random.default_rng([int(seed), 11]).choice(len(requests), size=count, replace=False)
    return [requests[i] for i in sorted(picks)]
