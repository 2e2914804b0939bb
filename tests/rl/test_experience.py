"""The experience step as pure tensor code (pagerl.rl.experience), on small hand-made batches, without Ray.

Six pages of two requests (three samples each), pages of 3 and 2 slots, so the
response frame is ragged: 4 columns, the short pages padded. The reference
``_controller_path`` is the controller's experience arithmetic as it was
before it moved into pagerl.rl.experience, kept here line for line: the pure
step must give its tensors, its figures and its loop state bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

import numpy as np
import pytest
import torch

from pagerl.config.schema import KLConfig, OffPolicyConfig, RewardConfig, RLConfig
from pagerl.rewards.token_rewards import RewardNormalizer, shaped_rewards
from pagerl.rl.algorithms import AdvantageInputs, SlotBaseline, advantage_options, estimate_kl, resolve_algorithm
from pagerl.rl.algorithms.off_policy import importance_weights
from pagerl.rl.experience import compute_experience, experience_metrics, item_frame, trainer_fields

SLOTS = [3, 3, 3, 2, 2, 2]  # K of each page: two requests of three samples
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1])
WIDTH = max(SLOTS) + 1


def _mask() -> torch.Tensor:
    mask = torch.zeros((len(SLOTS), WIDTH), dtype=torch.bool)
    for b, k in enumerate(SLOTS):
        mask[b, : k + 1] = True
    return mask


def _frame(seed: int, low: float, high: float, pad: float = 0.0) -> torch.Tensor:
    """float32 ``[B, T]`` uniform in [low, high) on the mask, ``pad`` elsewhere."""
    g = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand((len(SLOTS), WIDTH), generator=g)
    return torch.where(_mask(), x, torch.full_like(x, pad)).float()


def _inputs(pad: float = 0.0, critic: bool = False) -> Dict[str, Any]:
    """The trainer's output, the behaviour logprobs and the rewards of the six pages."""
    old = _frame(1, -2.5, -0.1, pad)
    trainer_out = {"old_logprobs": old, "ref_logprobs": _frame(2, -2.5, -0.1, pad),
                   "entropy": _frame(3, 0.2, 2.0, pad)}
    if critic:
        trainer_out["values"] = _frame(4, -1.0, 1.0, pad)
    behaviour = torch.where(_mask(), old + _frame(5, -0.05, 0.05), torch.zeros(()))  # one version behind
    page = torch.tensor([1.2, 0.4, 0.9, 0.1, 0.7, 0.3], dtype=torch.float64)
    items = torch.tensor([[0.5, 0.3, 0.1], [0.2, 0.1, 0.0], [0.6, 0.2, 0.2],
                          [0.1, 0.0, 0.0], [0.4, 0.3, 0.0], [0.2, 0.1, 0.0]], dtype=torch.float64)
    valid = torch.ones(len(SLOTS), dtype=torch.bool)
    return {"trainer_out": trainer_out, "behaviour": behaviour, "page": page, "items": items, "valid": valid}


def _rl(**changes: Any) -> RLConfig:
    kl = changes.pop("kl", {})
    off = changes.pop("off_policy", {})
    return dataclasses.replace(RLConfig(), kl=dataclasses.replace(KLConfig(), **kl),
                               off_policy=dataclasses.replace(OffPolicyConfig(), **off), **changes)


def _pure(x: Dict[str, Any], rl: RLConfig, rewards: RewardConfig, kl_coef: float = 0.05, normalizer=None,
          baseline=None):
    return compute_experience(
        _mask(), x["trainer_out"], x["behaviour"], x["page"], x["items"], x["valid"], GROUPS,
        rl=rl, rewards=rewards, estimator=resolve_algorithm(rl).estimator,
        normalizer=normalizer if normalizer is not None else RewardNormalizer(),
        baseline=baseline if baseline is not None else SlotBaseline(rl.baseline_scope), kl_coef=kl_coef)


# ---------------------------------------------------------------------------- what the arithmetic does


def test_on_policy_importance_weights_are_exactly_one():
    x = _inputs()
    x["behaviour"] = x["trainer_out"]["old_logprobs"].clone()  # sampled by the weights the update starts from
    for correction in ("tis", "mask", "none"):
        exp = _pure(x, _rl(off_policy={"correction": correction}), RewardConfig())
        mask = _mask()
        assert torch.equal(exp.is_weights[mask], torch.ones(int(mask.sum()), dtype=torch.float64))
        assert torch.equal(exp.is_weights[~mask], torch.zeros(int((~mask).sum()), dtype=torch.float64))
        assert exp.is_stats == {"is_ratio_mean": 1.0, "is_ratio_min": 1.0, "is_ratio_max": 1.0,
                                "is_corrected_fraction": 0.0}


def test_off_policy_weights_are_the_ratio_capped_by_tis():
    x = _inputs()
    x["behaviour"] = x["trainer_out"]["old_logprobs"] - 1.0  # pi_old / mu = e on every token
    exp = _pure(x, _rl(off_policy={"correction": "tis", "tis_cap": 2.0}), RewardConfig())
    assert torch.all(exp.is_weights[_mask()] == 2.0)
    assert exp.is_stats["is_corrected_fraction"] == 1.0
    assert exp.is_stats["is_ratio_max"] == pytest.approx(np.e, rel=1e-6)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_a_kl_penalty_in_reward_mode_lowers_advantages_by_coef_times_the_kl_to_go(algorithm):
    """grpo and rloo add the penalty's sum over the tokens from t on to token t's advantage, unscaled."""
    x, rewards, coef = _inputs(), RewardConfig(normalize="group"), 0.3
    rl = _rl(algorithm=algorithm, kl={"mode": "reward", "estimator": "k1"})
    free = _pure(x, rl, rewards, kl_coef=0.0)
    penalised = _pure(x, rl, rewards, kl_coef=coef)
    mask = _mask()
    k1 = torch.where(mask, x["trainer_out"]["old_logprobs"].double() - x["trainer_out"]["ref_logprobs"].double(),
                     torch.zeros((), dtype=torch.float64))
    to_go = k1.flip(1).cumsum(1).flip(1) * mask
    assert torch.equal(penalised.kl, k1) and torch.equal(penalised.kl_penalty, -coef * k1)
    torch.testing.assert_close(penalised.advantages - free.advantages, -coef * to_go, rtol=0, atol=1e-12)
    assert float((penalised.advantages - free.advantages)[mask].sum()) < 0  # the policy moved away: k1 > 0 here
    # in loss mode the trainer adds the KL to the loss: the advantages do not see it
    loss = _pure(x, _rl(algorithm=algorithm, kl={"mode": "loss", "estimator": "k1"}), rewards, kl_coef=coef)
    assert torch.equal(loss.kl_penalty, torch.zeros_like(k1)) and torch.equal(loss.advantages, free.advantages)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "ppo"])
def test_padding_gets_nothing_whatever_it_holds(algorithm):
    """Padding holding huge numbers leaves every output 0 off the mask and unchanged on it."""
    rl, rewards = _rl(algorithm=algorithm), RewardConfig()
    critic = resolve_algorithm(rl).needs_critic
    clean, dirty = _pure(_inputs(critic=critic), rl, rewards), _pure(_inputs(pad=1e30, critic=critic), rl, rewards)
    off = ~_mask()
    for exp in (clean, dirty):
        for name in ("advantages", "kl", "kl_penalty", "is_weights"):
            assert torch.all(getattr(exp, name)[off] == 0), name
        if exp.returns is not None:
            assert torch.all(exp.returns[off] == 0)
    assert torch.equal(clean.advantages, dirty.advantages) and torch.equal(clean.kl, dirty.kl)
    fields = trainer_fields(dirty, critic)
    assert set(fields) == {"old_logprobs", "ref_logprobs", "advantages", "is_weights"} | (
        {"values", "returns"} if critic else set())
    assert fields["advantages"].dtype == fields["is_weights"].dtype == torch.float32


def test_item_rewards_sit_on_their_slot_columns():
    shaped = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    assert torch.equal(item_frame(shaped, mask), torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0]],
                                                              dtype=torch.float64))


def test_the_loop_state_takes_in_the_batch():
    """Running reward moments and the per-slot baseline are the loop's state: the step merges the batch in."""
    x, normalizer = _inputs(), RewardNormalizer()
    rl = _rl(algorithm="reinforce_pp_baseline")
    baseline = SlotBaseline(rl.baseline_scope)
    _pure(x, rl, RewardConfig(normalize="running"), normalizer=normalizer, baseline=baseline)
    assert normalizer.page.count == 6 and normalizer.page.mean == pytest.approx(float(x["page"].mean()))
    assert len(baseline.moments) == WIDTH and baseline.moments[0].count == 6 and baseline.moments[3].count == 3


# ---------------------------------------------------------------------------- the figures of a step


def test_metrics_have_the_controllers_keys_and_values():
    """Pinned figures of one fixed batch (the controller's path gave these); a few derived by hand."""
    x = _inputs()
    rewards = RewardConfig(w_page=1.0, w_item=0.5)
    exp = _pure(x, _rl(algorithm="grpo"), rewards)
    metrics = experience_metrics(exp, rewards, staleness=[0, 0, 1, 1, 1, 0])
    assert list(metrics) == list(PINNED)
    assert metrics == pytest.approx(PINNED, rel=1e-12, abs=1e-15)
    # by hand
    page, items = x["page"], x["items"]
    assert metrics["reward_page"] == float(page.mean()) == pytest.approx(3.6 / 6)
    assert metrics["reward_total"] == pytest.approx(3.6 / 6 + 0.5 * float(items.sum()) / 6)
    assert metrics["reward_item_slot2"] == pytest.approx(0.3 / 6)
    assert metrics["pages"] == 6.0 and metrics["valid_rate"] == 1.0
    assert metrics["staleness_max"] == 1.0 and metrics["staleness_mean"] == 0.5
    mask = _mask()
    assert metrics["entropy_rollout"] == pytest.approx(float(x["trainer_out"]["entropy"][mask].double().mean()))
    gap = (x["trainer_out"]["old_logprobs"] - x["behaviour"]).abs()[mask]
    assert metrics["logprob_mismatch_max"] == float(gap.max()) <= 0.05
    assert metrics["kl_per_page"] == pytest.approx(metrics["kl"] * float(mask.sum()) / 6, rel=1e-12)


# The controller's path on this batch (grpo, rewards.w_item=0.5); exact on the machine that pinned them,
# held to 1e-12 here so that another BLAS's summation order does not fail the test.
PINNED = {
    "reward_page": 0.6, "reward_item": 0.18333333333333335,
    "reward_page_normalized": 3.700743415417188e-17, "reward_item_normalized": -1.0485439677015367e-16,
    "reward_total": 0.875, "kl": 0.36491092743351977,
    "kl_per_page": 1.2771882460173192, "entropy_rollout": 1.0222307443618774,
    "advantage_mean": -0.0360222435306182, "advantage_std": 1.398273788520553,
    "advantage_slot0_mean": -0.06385941230086593, "logprob_mismatch_max": 0.04941844940185547,
    "logprob_mismatch_mean": 0.03183049336075783, "valid_rate": 1.0,
    "pages": 6.0, "staleness_max": 1.0,
    "staleness_mean": 0.5, "is_ratio_mean": 0.9985563979720822,
    "is_ratio_min": 0.9517827734261091, "is_ratio_max": 1.0477798911387939,
    "is_corrected_fraction": 0.0, "reward_item_slot0": 0.3333333333333333,
    "reward_item_slot1": 0.16666666666666666, "reward_item_slot2": 0.05000000000000001,
}


# ---------------------------------------------------------------------------- the controller's old path


class _Rollout:
    """What the old path read of a RolloutBatch: its length and versions."""

    def __init__(self, n: int, version):
        self.n, self.version = n, version

    def __len__(self) -> int:
        return self.n


def _controller_path(x, rl, rewards, normalizer, baseline, kl_value, version, versions):
    """RLController._experience's arithmetic before pagerl.rl.experience, line for line (minus the pack
    and the trainer call, whose results are the inputs here)."""
    cfg, rewards_cfg = rl, rewards
    algorithm = resolve_algorithm(rl)
    batch = {"mask": _mask(), "response_len": torch.tensor([k + 1 for k in SLOTS])}
    exp = x["trainer_out"]
    rollout = _Rollout(len(SLOTS), versions)
    mask = batch["mask"]
    sampled = x["behaviour"]
    mismatch = (exp["old_logprobs"] - sampled).abs()[mask]
    is_weights, is_stats = importance_weights(exp["old_logprobs"], sampled, mask, cfg.off_policy)
    staleness = [version - v for v in rollout.version]

    page, items, valid = x["page"], x["items"], x["valid"]
    group_ids = GROUPS
    page_n, items_n = shaped_rewards(page, items, valid, rewards_cfg, normalizer, group_ids)
    item_frame = torch.zeros(mask.shape, dtype=torch.float64)
    item_frame[:, : items_n.shape[1]] = items_n
    kl = estimate_kl(exp["old_logprobs"].double(), exp["ref_logprobs"].double(), mask, cfg.kl.estimator)
    kl_penalty = -kl_value * kl if cfg.kl.mode == "reward" else torch.zeros_like(kl)
    inputs = AdvantageInputs(page_rewards=page_n, item_rewards=item_frame, mask=mask,
                             w_page=rewards_cfg.w_page, w_item=rewards_cfg.w_item, group_ids=group_ids,
                             kl_penalty=kl_penalty,
                             values=exp["values"].double() if "values" in exp else None)
    advantages, returns = algorithm.estimator(inputs, baseline=baseline, **advantage_options(cfg))
    batch.update(old_logprobs=exp["old_logprobs"], ref_logprobs=exp["ref_logprobs"],
                 advantages=advantages.float(), is_weights=is_weights.float())
    if algorithm.needs_critic:
        batch.update(values=exp["values"], returns=returns.float())

    slot = mask.clone()
    slot[torch.arange(mask.shape[0]), batch["response_len"] - 1] = False  # item tokens only
    tokens = mask.sum().clamp(min=1)
    per_page_kl = (kl * mask).sum(1)
    metrics = {
        "reward_page": float(page.mean()), "reward_item": float(items.mean()),
        "reward_page_normalized": float(page_n.mean()), "reward_item_normalized": float(items_n.mean()),
        "reward_total": float(rewards_cfg.w_page * page.mean() + rewards_cfg.w_item * items.sum(1).mean()),
        "kl": float((kl * mask).sum() / tokens), "kl_per_page": float(per_page_kl.mean()),
        "entropy_rollout": float((exp["entropy"] * mask).sum() / tokens),
        "advantage_mean": float(advantages[mask].mean()), "advantage_std": float(advantages[mask].std()),
        "advantage_slot0_mean": float(advantages[:, 0].mean()),
        "logprob_mismatch_max": float(mismatch.max()), "logprob_mismatch_mean": float(mismatch.mean()),
        "valid_rate": float(valid.double().mean()), "pages": float(len(rollout)),
        "staleness_max": float(max(staleness)), "staleness_mean": float(np.mean(staleness)),
        **is_stats,
    }
    for k in range(items.shape[1]):
        metrics[f"reward_item_slot{k}"] = float(items[:, k].mean())
    return batch, metrics


CASES = {
    "grpo, running rewards": (dict(algorithm="grpo"), dict()),
    "ppo, joint + residual, adaptive kl, to_go": (
        dict(algorithm="ppo", slot_credit="to_go", kl={"controller": "adaptive", "estimator": "k2"}),
        dict(normalize="joint", page_reward="residual", w_item=0.5)),
    "reinforce_pp_baseline, kl in the loss, mask correction": (
        dict(algorithm="reinforce_pp_baseline", kl={"mode": "loss"}, off_policy={"correction": "mask"}),
        dict(clip=0.5)),
    "rloo, group rewards, pooled": (dict(algorithm="rloo", baseline_scope="pooled"), dict(normalize="group")),
    "reinforce_pp, no normalisation, gamma": (dict(algorithm="reinforce_pp", gamma=0.9), dict(normalize="none")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_pure_step_is_the_controllers_old_path_bit_for_bit(case):
    rl_changes, reward_changes = CASES[case]
    rl, rewards = _rl(**rl_changes), RewardConfig(**reward_changes)
    critic = resolve_algorithm(rl).needs_critic
    versions, version = [3, 3, 3, 2, 2, 2], 3
    old_state = (RewardNormalizer(), SlotBaseline(rl.baseline_scope))
    new_state = (RewardNormalizer(), SlotBaseline(rl.baseline_scope))
    for step in range(2):  # twice: the second batch meets the state the first left
        x = _inputs(critic=critic)
        x["page"] = x["page"] + step
        kl_value = 0.05 * (step + 1)
        batch, metrics = _controller_path(x, rl, rewards, *old_state, kl_value, version, versions)
        exp = compute_experience(_mask(), x["trainer_out"], x["behaviour"], x["page"], x["items"], x["valid"],
                                 GROUPS, rl=rl, rewards=rewards, estimator=resolve_algorithm(rl).estimator,
                                 normalizer=new_state[0], baseline=new_state[1], kl_coef=kl_value)
        fields = trainer_fields(exp, critic)
        assert list(fields) == [k for k in batch if k not in ("mask", "response_len")]
        for key, value in fields.items():
            assert value.dtype == batch[key].dtype and torch.equal(value, batch[key]), (case, step, key)
        new_metrics = experience_metrics(exp, rewards, [version - v for v in versions])
        assert list(new_metrics) == list(metrics) and new_metrics == metrics, case
        assert new_state[0].state_dict() == old_state[0].state_dict()
        assert new_state[1].state_dict() == old_state[1].state_dict()
