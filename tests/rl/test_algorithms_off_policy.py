"""Importance corrections from the behaviour policy to the proximal one, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pagerl.config.schema import OffPolicyConfig
from pagerl.rl.algorithms import clipped_policy_loss
from pagerl.rl.algorithms.off_policy import CORRECTIONS, importance_weights

# log pi_old - log mu per token: w = e^1.5 (4.48), e^-1 (0.37), e^0.2 (1.22); the last position is padding.
OLD = torch.tensor([[-0.5, -2.0, -1.0, 0.0]])
MU = torch.tensor([[-2.0, -1.0, -1.2, 5.0]])
MASK = torch.tensor([[True, True, True, False]])


def test_registry_lists_the_corrections():
    assert sorted(CORRECTIONS) == ["mask", "none", "tis"]


@pytest.mark.parametrize("correction, expected, changed", [
    ("tis", [2.0, math.exp(-1.0), math.exp(0.2), 0.0], 1 / 3),
    ("mask", [0.0, 0.0, math.exp(0.2), 0.0], 2 / 3),
    ("none", [1.0, 1.0, 1.0, 0.0], 0.0),
])
def test_weights_by_hand(correction, expected, changed):
    cfg = OffPolicyConfig(correction=correction, tis_cap=2.0, mask_threshold=2.0)
    w, stats = importance_weights(OLD, MU, MASK, cfg)
    torch.testing.assert_close(w, torch.tensor([expected], dtype=torch.float64), rtol=0, atol=1e-6)  # fp32 inputs
    assert stats["is_corrected_fraction"] == pytest.approx(changed)
    assert stats["is_ratio_max"] == pytest.approx(math.exp(1.5))
    assert stats["is_ratio_min"] == pytest.approx(math.exp(-1.0))
    assert stats["is_ratio_mean"] == pytest.approx((math.exp(1.5) + math.exp(-1.0) + math.exp(0.2)) / 3)


def test_on_policy_weights_are_one():
    w, stats = importance_weights(OLD, OLD.clone(), MASK, OffPolicyConfig())
    assert torch.equal(w, MASK.double())
    assert stats["is_ratio_max"] == stats["is_ratio_min"] == 1.0 and stats["is_corrected_fraction"] == 0.0


def test_weights_scale_each_token_of_the_surrogate():
    """Token t's term -min(r A, clip(r) A) is multiplied by w_t; ratio 1 here, so the loss is -sum w A / n."""
    adv = torch.tensor([[1.0, -2.0, 0.5, 9.0]])
    w = torch.tensor([[2.0, 0.5, 0.0, 7.0]])
    loss, _ = clipped_policy_loss(OLD, OLD, adv, MASK, weights=w)
    assert float(loss) == pytest.approx(-(2.0 * 1.0 + 0.5 * -2.0 + 0.0) / 3)
    plain, _ = clipped_policy_loss(OLD, OLD, adv, MASK)
    assert float(plain) == pytest.approx(-(1.0 - 2.0 + 0.5) / 3)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="one shape"):
        importance_weights(OLD, MU[:, :2], MASK, OffPolicyConfig())
