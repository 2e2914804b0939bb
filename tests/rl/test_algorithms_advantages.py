"""Advantage estimators on hand-computed batches: grpo and rloo (per_slot and
pooled, own and to_go), reinforce_pp, reinforce_pp_baseline (with its running
SlotBaseline and its checkpoint), gae; and the point of per-slot credit."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pagerl.rl.algorithms import AdvantageInputs, SlotBaseline, compute_advantages

R2 = math.sqrt(2)


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=0, atol=atol)


# One group (ids need not be 0..G-1) of three pages: K = 2, 2, 1, so T = 3 and
# page 2's position 1 is its EOS. Its item reward there (9.0) and the padding
# (7.0) must never be read.
MASK = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]])
PAGE = torch.tensor([1.0, 3.0, 5.0])
ITEMS = torch.tensor([[4.0, 1.0, 0.0], [2.0, 3.0, 0.0], [0.0, 9.0, 7.0]])


def group_batch(**kw) -> AdvantageInputs:
    base = dict(page_rewards=PAGE, item_rewards=ITEMS, mask=MASK, w_page=0.5, w_item=2.0,
                group_ids=torch.tensor([7, 7, 7]))
    return AdvantageInputs(**{**base, **kw})


# Page rewards [1, 3, 5]: mean 3, std sqrt(8/3), so P = [-a, 0, a]; slot 0 items
# [4, 2, 0] the same: Ia = [a, 0, -a]; slot 1 items [1, 3] (pages 0, 1): [-1, 1].
# Pooled slot items [4, 1, 2, 3, 0]: mean 2, std sqrt(2).
A = 2 / math.sqrt(8 / 3)
GRPO = {
    ("per_slot", "own"): [[1.5 * A, -0.5 * A - 2, -0.5 * A], [0, 2, 0], [-1.5 * A, 0.5 * A, 0]],
    ("per_slot", "to_go"): [[1.5 * A - 2, -0.5 * A - 2, -0.5 * A], [2, 2, 0], [-1.5 * A, 0.5 * A, 0]],
    ("pooled", "own"): [[-0.5 * A + 2 * R2, -0.5 * A - R2, -0.5 * A], [0, R2, 0], [0.5 * A - 2 * R2, 0.5 * A, 0]],
    ("pooled", "to_go"): [[-0.5 * A + R2, -0.5 * A - R2, -0.5 * A], [R2, R2, 0], [0.5 * A - 2 * R2, 0.5 * A, 0]],
}
# Leave-one-out: P = [1 - 4, 3 - 3, 5 - 2]; slot 0: [4 - 1, 2 - 2, 0 - 3]; slot 1:
# [1 - 3, 3 - 1]. Pooled, all slots of the *other* pages: page 0 against
# mean(2, 3, 0) = 5/3, page 1 against mean(4, 1, 0) = 5/3, page 2 against 2.5.
RLOO = {
    ("per_slot", "own"): [[4.5, -5.5, -1.5], [0, 4, 0], [-4.5, 1.5, 0]],
    ("per_slot", "to_go"): [[0.5, -5.5, -1.5], [4, 4, 0], [-4.5, 1.5, 0]],
    ("pooled", "own"): [[-1.5 + 14 / 3, -1.5 - 4 / 3, -1.5], [2 / 3, 8 / 3, 0], [-3.5, 1.5, 0]],
    ("pooled", "to_go"): [[-1.5 + 10 / 3, -1.5 - 4 / 3, -1.5], [10 / 3, 8 / 3, 0], [-3.5, 1.5, 0]],
}


@pytest.mark.parametrize("scope, credit", list(GRPO))
def test_grpo(scope, credit):
    adv, returns = compute_advantages("grpo", group_batch(), baseline_scope=scope, slot_credit=credit)
    close(adv, GRPO[scope, credit])
    assert returns is None


@pytest.mark.parametrize("scope, credit", list(RLOO))
def test_rloo(scope, credit):
    adv, returns = compute_advantages("rloo", group_batch(), baseline_scope=scope, slot_credit=credit)
    close(adv, RLOO[scope, credit])
    assert returns is None


def test_group_estimators_add_the_kl_penalty_to_go():
    kl = torch.tensor([[-0.1, -0.2, -0.3], [0.0, 0.0, -0.4], [-0.5, -0.6, -9.0]])
    # sum_{s >= t} kl[b, s] over the response: [-0.6, -0.5, -0.3], [-0.4] * 3, [-1.1, -0.6]
    to_go = torch.tensor([[-0.6, -0.5, -0.3], [-0.4, -0.4, -0.4], [-1.1, -0.6, 0.0]])
    adv, _ = compute_advantages("grpo", group_batch(kl_penalty=kl))
    close(adv, torch.tensor(GRPO["per_slot", "own"]) + to_go)
    adv, _ = compute_advantages("rloo", group_batch(kl_penalty=kl))
    close(adv, torch.tensor(RLOO["per_slot", "own"]) + to_go)


def test_a_group_of_one_page_or_of_equal_rewards_gives_zero():
    # Group 0: equal page rewards, equal slot-0 items; slot 1 differs. Group 1: one page.
    x = AdvantageInputs(
        page_rewards=torch.tensor([2.0, 2.0, 5.0]),
        item_rewards=torch.tensor([[1.0, 0.0, 0.0], [1.0, 2.0, 0.0], [4.0, 1.0, 0.0]]),
        mask=torch.ones(3, 3),
        group_ids=torch.tensor([0, 0, 1]),
    )
    close(compute_advantages("grpo", x)[0], [[0, -1, 0], [0, 1, 0], [0, 0, 0]])
    close(compute_advantages("rloo", x)[0], [[0, -2, 0], [0, 2, 0], [0, 0, 0]])


# Returns with gamma = 0.5, w_item = 1, w_page = 2: token rewards [1, 1, 2],
# [-1, 3, 6], [-3, 10] give G = [2, 2, 2], [2, 6, 6], [2, 10].
RETURNS = [[2.0, 2.0, 2.0], [2.0, 6.0, 6.0], [2.0, 10.0, 0.0]]
S1 = math.sqrt(32 / 3)  # std of position 1: [2, 6, 10]
WHITE = {
    # position 0 all equal; position 1 mean 6; position 2 [2, 6]: mean 4, std 2
    "per_slot": [[0, -4 / S1, -1], [0, 0, 1], [0, 4 / S1, 0]],
    # all eight returns: mean 4, std 2 sqrt(2)
    "pooled": [[-1 / R2, -1 / R2, -1 / R2], [-1 / R2, 1 / R2, 1 / R2], [-1 / R2, 3 / R2, 0]],
}


def returns_batch(**kw) -> AdvantageInputs:
    base = dict(page_rewards=torch.tensor([1.0, 3.0, 5.0]),
                item_rewards=torch.tensor([[1.0, 1.0, 0.0], [-1.0, 3.0, 0.0], [-3.0, 0.0, 0.0]]),
                mask=MASK, w_page=2.0, w_item=1.0)
    return AdvantageInputs(**{**base, **kw})


@pytest.mark.parametrize("scope", ["per_slot", "pooled"])
@pytest.mark.parametrize("credit", ["own", "to_go"])  # not read: the returns give the credit
def test_reinforce_pp(scope, credit):
    adv, returns = compute_advantages("reinforce_pp", returns_batch(), baseline_scope=scope,
                                      slot_credit=credit, gamma=0.5)
    close(returns, RETURNS)
    close(adv, WHITE[scope])


def test_reinforce_pp_returns_include_the_kl_penalty():
    x = AdvantageInputs(page_rewards=torch.zeros(1), item_rewards=torch.zeros(1, 3), mask=torch.ones(1, 3),
                        kl_penalty=torch.tensor([[-1.0, -1.0, -1.0]]))
    close(compute_advantages("reinforce_pp", x, gamma=1.0)[1], [[-3.0, -2.0, -1.0]])


@pytest.mark.parametrize("scope", ["per_slot", "pooled"])
def test_reinforce_pp_baseline_first_batch_matches_the_batch_statistics(scope):
    baseline = SlotBaseline(scope)
    adv, returns = compute_advantages("reinforce_pp_baseline", returns_batch(), baseline=baseline,
                                      baseline_scope=scope, gamma=0.5)
    close(adv, WHITE[scope])
    close(returns, RETURNS)


def test_reinforce_pp_baseline_is_running_and_survives_a_checkpoint():
    baseline = SlotBaseline("per_slot")
    compute_advantages("reinforce_pp_baseline", returns_batch(), baseline=baseline, gamma=0.5)
    state = json.loads(json.dumps(baseline.state_dict()))
    assert state["moments"][1] == {"count": 3.0, "mean": 6.0, "m2": 32.0}
    restored = SlotBaseline("per_slot")
    restored.load_state_dict(state)
    # Second batch, one page: rewards [3, 2.5, 2 * 3.5] give G = [6, 6, 7]. Running
    # position 0: [2, 2, 2, 6] -> mean 3, var 3; position 1: [2, 6, 10, 6] -> mean 6;
    # position 2: [2, 6, 7] -> mean 5, var 14/3.
    second = AdvantageInputs(page_rewards=torch.tensor([3.5]), item_rewards=torch.tensor([[3.0, 2.5, 0.0]]),
                             mask=torch.ones(1, 3), w_page=2.0)
    expected = [[3 / math.sqrt(3), 0.0, 2 / math.sqrt(14 / 3)]]
    for b in (baseline, restored):
        adv, returns = compute_advantages("reinforce_pp_baseline", second, baseline=b, gamma=0.5)
        close(returns, [[6.0, 6.0, 7.0]])
        close(adv, expected)
    assert baseline.state_dict() == restored.state_dict()
    with pytest.raises(ValueError, match="rl.baseline_scope"):
        SlotBaseline("pooled").load_state_dict(state)
    with pytest.raises(ValueError, match="baseline_scope"):
        compute_advantages("reinforce_pp_baseline", second, baseline=baseline, baseline_scope="pooled")
    with pytest.raises(ValueError, match="SlotBaseline"):
        compute_advantages("reinforce_pp_baseline", second)


# GAE, gamma = 0.5, lam = 0.5, w_page = 2. Page 0 (K = 2): r = [4.25, 0.25, 1],
# V = [1, 2, 2]: delta = [4.25 + 1 - 1, 0.25 + 1 - 2, 1 - 2] = [4.25, -0.75, -1],
# Ahat = [4.25 - 0.25, -0.75 - 0.25, -1] = [4, -1, -1]. Page 1 (K = 1): r = [1.25, -1],
# V = [2, 0] (5.0 is padding): delta = [-0.75, -1], Ahat = [-1, -1].
def gae_batch() -> AdvantageInputs:
    return AdvantageInputs(
        page_rewards=torch.tensor([0.5, -0.5]),
        item_rewards=torch.tensor([[4.25, 0.25, 0.0], [1.25, 0.0, 0.0]]),
        mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
        w_page=2.0, w_item=1.0,
        values=torch.tensor([[1.0, 2.0, 2.0], [2.0, 0.0, 5.0]]),
    )


@pytest.mark.parametrize(
    "scope, expected",
    [
        # position 0: [4, -1] -> [1, -1]; position 1 equal; position 2 a single token
        ("per_slot", [[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]),
        # all five: mean 0, std 2
        ("pooled", [[2.0, -0.5, -0.5], [-0.5, -0.5, 0.0]]),
    ],
)
def test_gae(scope, expected):
    adv, returns = compute_advantages("gae", gae_batch(), baseline_scope=scope, gamma=0.5, lam=0.5)
    close(returns, [[5.0, 1.0, 1.0], [1.0, -1.0, 0.0]])  # Ahat + V
    close(adv, expected)


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_per_slot_credit_ranks_placements_where_pooled_praises_slot_zero(estimator):
    # One request, three pages of two slots, equal page rewards. Position bias:
    # every slot-0 item reward is high, but page 0 placed the best item there,
    # page 2 the worst of the three.
    x = AdvantageInputs(
        page_rewards=torch.ones(3),
        item_rewards=torch.tensor([[1.0, 0.2, 0.0], [0.9, 0.1, 0.0], [0.8, 0.15, 0.0]]),
        mask=torch.ones(3, 3), w_page=0.0, w_item=1.0, group_ids=torch.zeros(3, dtype=torch.long),
    )
    per_slot, _ = compute_advantages(estimator, x, baseline_scope="per_slot", gamma=0.0)
    pooled, _ = compute_advantages(estimator, x, baseline_scope="pooled", gamma=0.0)
    slot0 = per_slot[:, 0]
    assert slot0[0] > slot0[1] > slot0[2] and slot0[2] < 0
    assert (pooled[:, 0] > 0).all()


def test_wrong_inputs_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match="item_rewards"):
        group_batch(item_rewards=ITEMS[:, :2])
    with pytest.raises(ValueError, match="page_rewards"):
        group_batch(page_rewards=PAGE[:2])
    with pytest.raises(ValueError, match="mask: row 1"):
        group_batch(mask=torch.tensor([[1, 1, 1], [0, 1, 1], [1, 1, 0]]))
    with pytest.raises(ValueError, match="group_ids"):
        group_batch(group_ids=torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="group_ids"):
        compute_advantages("grpo", group_batch(group_ids=None))
    with pytest.raises(ValueError, match="values"):
        compute_advantages("gae", group_batch())
    with pytest.raises(ValueError, match="'per_slot', 'pooled'"):
        compute_advantages("rloo", group_batch(), baseline_scope="per_page")
    with pytest.raises(ValueError, match="'own', 'to_go'"):
        compute_advantages("rloo", group_batch(), slot_credit="all")
