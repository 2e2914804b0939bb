"""Pointwise click supervision of the reward models: every logged slot is a label.

Preference pairs say which of two pages is better, which identifies reward
*differences* within a request and nothing else. The logged impressions say
more: each shown slot was clicked or not. With ``rm.click_loss_weight > 0``
the item head is also trained as a click model on every training impression
(including those without any click, which build no pair at all), and with
``rm.page_click_loss_weight > 0`` the page head as a model of the page's
click count. Our design (the paper gives no training objective beyond
"pairwise"); measured on the quickstart world in the README's RM table.

Formulas, for an impression with logged page of K slots, per-slot labels
y_k in {0, 1} (engaged 1, un-engaged 0, ambiguous slots -- see
:mod:`pagerl.rewards.pairs` -- carry no label), item scores s_k and page
score S:

- item: the mean over labelled slots of the binary cross-entropy
  ``BCE(sigmoid(s_k), y_k)``; s_k is then the logit of P(click at slot k | the
  request and the items in slots 0..k), position bias included, since the
  backbone sees where the slot is;
- page: the Poisson negative log-likelihood of the page's click count
  ``C = sum_k y_k`` with log-rate S: ``exp(S) - C * S`` (up to a constant);
  exp(S) is then the page's expected clicks. A Bradley-Terry loss on the same
  head is consistent with this scale: it compares log-rates.

What the heads mean is written into ``reward_model.json`` (``item_output``,
``page_output``), and :class:`pagerl.rewards.models.RewardModels` returns
rewards on that scale: a click-trained item head's reward is the click
probability and a click-trained page head's the expected clicks, so the
mixed reward is in the units the evaluation counts.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F

from pagerl.data.types import Impression
from pagerl.rewards.pairs import ENGAGED, UNENGAGED, slot_states
from pagerl.tokenization.serialize import encode_prompt, encode_response

# What a head's raw output becomes when scored (RewardModels.score).
ITEM_OUTPUTS = ("score", "click_probability")
PAGE_OUTPUTS = ("score", "expected_clicks")


def uses_clicks(rm_cfg: Any) -> bool:
    """Whether the reward-model recipe asks for click supervision of either head."""
    return rm_cfg.click_loss_weight > 0 or rm_cfg.page_click_loss_weight > 0


def head_outputs(rm_cfg: Any) -> Dict[str, str]:
    """``item_output`` / ``page_output`` of a model trained under ``rm_cfg`` (module doc)."""
    return {"item_output": "click_probability" if rm_cfg.click_loss_weight > 0 else "score",
            "page_output": "expected_clicks" if rm_cfg.page_click_loss_weight > 0 else "score"}


def click_labels(impression: Impression, pairs_cfg: Any) -> List[float]:
    """Per slot of the logged page: 1.0 engaged, 0.0 un-engaged, NaN ambiguous (no label)."""
    states, _ = slot_states(impression, pairs_cfg)
    return [1.0 if s == ENGAGED else 0.0 if s == UNENGAGED else math.nan for s in states]


def encode_impressions(tokenizer: Any, impressions: Sequence[Impression], pairs_cfg: Any) -> List[Dict[str, Any]]:
    """Token ids of each logged page with its per-slot click labels (``prompt``, ``response``, ``labels``)."""
    return [{
        "prompt": encode_prompt(tokenizer, imp.request),
        "response": encode_response(tokenizer, imp.request, list(imp.page)),
        "labels": click_labels(imp, pairs_cfg),
    } for imp in impressions]


def labels_tensor(examples: Sequence[Dict[str, Any]], k_max: int) -> torch.Tensor:
    """``[N, k_max]`` float labels, NaN where a slot has no label or the page is shorter."""
    out = torch.full((len(examples), k_max), math.nan, dtype=torch.float32)
    for i, e in enumerate(examples):
        out[i, : len(e["labels"])] = torch.tensor(e["labels"], dtype=torch.float32)
    return out


def click_losses(page: torch.Tensor, item: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Item BCE and page Poisson NLL (module doc) of ``page [N]``, ``item [N, K]`` against ``labels [N, K]``."""
    known = ~torch.isnan(labels)
    y = torch.nan_to_num(labels, nan=0.0)
    bce = F.binary_cross_entropy_with_logits(item, y, reduction="none")
    item_loss = (bce * known).sum() / known.sum().clamp_min(1)
    clicks = (y * known).sum(dim=1)
    page_loss = (torch.exp(page) - clicks * page).mean()
    return {"click_item_loss": item_loss, "click_page_loss": page_loss}
