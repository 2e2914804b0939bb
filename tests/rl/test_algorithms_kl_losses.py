"""KL estimators and controllers, loss aggregation, the clipped surrogate with
an asymmetric clip, value clipping, entropy and KL-as-loss: hand-computed."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pagerl.config.schema import KLConfig
from pagerl.rl.algorithms import (
    AdaptiveKLController,
    FixedKLController,
    aggregate_loss,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_bonus,
    estimate_kl,
    kl_loss,
    kl_penalty,
    make_kl_controller,
    token_entropy,
)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=0, atol=atol)


# Two tokens of one page plus a padding position holding a value (even inf)
# that must never be read.
LOGP = torch.tensor([[-1.0, -2.0, float("inf")]])
REF = torch.tensor([[-1.5, -1.0, 0.0]])
MASK1 = torch.tensor([[1, 1, 0]])


@pytest.mark.parametrize(
    "name, expected",
    [
        # logp - ref = [0.5, -1.0]
        ("k1", [0.5, -1.0, 0.0]),
        # (logp - ref)^2 / 2
        ("k2", [0.125, 0.5, 0.0]),
        # x = ref - logp = [-0.5, 1.0]: exp(x) - x - 1
        ("k3", [math.exp(-0.5) + 0.5 - 1.0, math.e - 1.0 - 1.0, 0.0]),
    ],
)
def test_kl_estimators(name, expected):
    close(estimate_kl(LOGP, REF, MASK1, name), [expected])


def test_kl_penalty_is_minus_coef_times_kl():
    close(kl_penalty(LOGP, REF, MASK1, "k1", 0.1), [[-0.05, 0.1, 0.0]])


def test_kl_estimator_shape_error_names_the_argument():
    with pytest.raises(ValueError, match="ref_logprobs"):
        estimate_kl(LOGP, REF[:, :2], MASK1, "k1")
    with pytest.raises(ValueError, match="k1', 'k2', 'k3"):
        estimate_kl(LOGP, REF, MASK1, "k4")


def test_adaptive_controller_update_and_state_round_trip():
    ctl = AdaptiveKLController(coef=0.1, target=0.05, horizon=100)
    # KL twice the target: error 1 is clipped to 0.2 -> 0.1 * (1 + 0.2 * 10 / 100)
    assert ctl.update(0.1, n=10) == pytest.approx(0.102)
    # KL 5% below target: error -0.05 -> 0.102 * (1 - 0.05 * 50 / 100)
    assert ctl.update(0.0475, n=50) == pytest.approx(0.09945)
    state = json.loads(json.dumps(ctl.state_dict()))
    assert state == {"controller": "adaptive", "value": pytest.approx(0.09945)}
    again = make_kl_controller(KLConfig(controller="adaptive", coef=0.5, target=0.05, horizon=100))
    again.load_state_dict(state)
    assert again.value == ctl.value
    assert again.update(1.0, n=100) == pytest.approx(0.09945 * 1.2)
    with pytest.raises(ValueError, match="not 'fixed'"):
        FixedKLController(0.1).load_state_dict(state)


def test_fixed_controller_keeps_its_value():
    ctl = make_kl_controller(KLConfig(controller="fixed", coef=0.05))
    assert isinstance(ctl, FixedKLController)
    assert ctl.update(10.0, n=1000) == 0.05
    with pytest.raises(ValueError, match="rl.kl.target"):
        AdaptiveKLController(0.1, target=0.0, horizon=10)


LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
LOSS_MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # the last row is empty


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token_mean", (1 + 2 + 4) / 3),
        ("seq_mean_token_sum", ((1 + 2) + 4) / 2),
        ("seq_mean_token_mean", ((1 + 2) / 2 + 4 / 1) / 2),
    ],
)
def test_loss_aggregations(mode, expected):
    close(aggregate_loss(LOSS, LOSS_MASK, mode), expected)


def test_loss_aggregation_with_a_global_denominator():
    close(aggregate_loss(LOSS, LOSS_MASK, "token_mean", denominator=14), 0.5)
    close(aggregate_loss(LOSS, LOSS_MASK, "seq_mean_token_sum", denominator=7), 1.0)
    with pytest.raises(ValueError, match="token_mean"):
        aggregate_loss(LOSS, LOSS_MASK, "sum")


def test_clipped_surrogate_with_asymmetric_clip():
    # clip_low 0.2, clip_high 0.1: the ratio is kept in [0.8, 1.1].
    ratios = torch.tensor([[1.15, 0.85, 1.0], [1.05, 0.5, 1.0]])
    adv = torch.tensor([[1.0, -1.0, 0.0], [2.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    old = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -1.5, 0.0]])
    logp = (old + ratios.log()).clone()
    logp[:, 2] = 30.0  # padding: a huge ratio that must not count
    logp.requires_grad_(True)
    loss, stats = clipped_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.1)
    # per token -min(r A, clip(r) A):
    #   r=1.15 A=+1: only the upper clip binds (1.15 > 1.1; a symmetric 0.2 would not) -> -1.1
    #   r=0.85 A=-1: inside [0.8, 1.1] (a symmetric 0.1 would clip at 0.9)          ->  0.85
    #   r=1.05 A=+2: inside                                                            -> -2.1
    #   r=0.50 A=-1: the lower clip binds: min(-0.5, -0.8)                              ->  0.8
    close(loss, (-1.1 + 0.85 - 2.1 + 0.8) / 4)
    close(stats["clip_fraction"], 0.5)
    close(stats["clip_fraction_high"], 0.25)
    close(stats["clip_fraction_low"], 0.25)
    close(stats["ratio_mean"], (1.15 + 0.85 + 1.05 + 0.5) / 4)
    close(stats["ratio_max"], 1.15)
    approx_kl = sum(r - 1 - math.log(r) for r in (1.15, 0.85, 1.05, 0.5)) / 4
    close(stats["approx_kl"], approx_kl)
    loss.backward()
    # Clipped tokens carry no gradient; an unclipped one d(-r A)/d logp = -r A / 4.
    close(logp.grad, [[0.0, 0.85 / 4, 0.0], [-2.1 / 4, 0.0, 0.0]])


def test_clipped_surrogate_shape_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="advantages"):
        clipped_policy_loss(x, x, torch.zeros(2, 2), x)
    with pytest.raises(ValueError, match="clip_low"):
        clipped_policy_loss(x, x, x, x, clip_low=1.0)


def test_value_loss_with_value_clipping():
    old = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    values = torch.tensor([[1.5, 0.9, 1.5, 7.0]])
    returns = torch.tensor([[2.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = clipped_value_loss(values, returns, mask, old_values=old, value_clip=0.2)
    # token 0: (1.5-2)^2 = 0.25; clipped V = 1.2 -> (1.2-2)^2 = 0.64; 1/2 max = 0.32 (the clip binds)
    # token 1: V - V_old = -0.1 is inside the clip: 1/2 * 0.9^2 = 0.405
    # token 2: 0.5^2 = 0.25 vs clipped (1.2-1)^2 = 0.04: 1/2 * 0.25 = 0.125
    close(loss, (0.32 + 0.405 + 0.125) / 3)
    close(stats["value_clip_fraction"], 1 / 3)
    close(stats["value_error"], (0.25 + 0.81 + 0.25) / 3)
    unclipped, _ = clipped_value_loss(values, returns, mask, old_values=None)
    close(unclipped, (0.125 + 0.405 + 0.125) / 3)
    with pytest.raises(ValueError, match="old_values"):
        clipped_value_loss(values, returns, mask, old_values=old[:, :3])


def test_entropy_and_its_bonus():
    # two equally likely tokens (one forbidden by constrained decoding), and a uniform 4-way
    logits = torch.tensor([[[0.0, 0.0, float("-inf"), float("-inf")], [1.0, 1.0, 1.0, 1.0]]])
    entropy = token_entropy(logits)
    close(entropy, [[math.log(2), math.log(4)]])
    close(entropy_bonus(entropy, torch.tensor([[1, 1]]), coef=0.1), -0.1 * (math.log(2) + math.log(4)) / 2)


def test_kl_loss_is_coef_times_aggregated_estimator():
    # k2 = [0.125, 0.5]; token_mean 0.3125
    close(kl_loss(LOGP, REF, MASK1, estimator="k2", coef=0.2), 0.2 * 0.3125)
