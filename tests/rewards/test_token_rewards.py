"""Token-level reward assembly: placement and weights (hand-computed), the
normalisations, clipping, the invalid-page penalty, non-finite rewards, and
the running moments (merge, all-reduce across two gloo ranks, checkpoint)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pagerl.config.schema import RewardConfig
from pagerl.rewards.reward_sources import RewardError
from pagerl.rewards.token_rewards import (
    EPS,
    RewardNormalizer,
    RunningMoments,
    assemble_token_rewards,
    response_positions,
)

# Two pages of K=2 items in the whole-sequence frame: row 0 has a 2-token
# prompt, 3 response tokens (<ci> <cj> EOS) and a pad; row 1 a 1-token prompt
# and 2 pads.
MASK = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0]])
PAGE = torch.tensor([2.0, 4.0])
ITEMS = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
BOTH = torch.tensor([True, True])


def cfg(**kw) -> RewardConfig:
    base = dict(normalize="none", clip=0.0, w_page=1.0, w_item=1.0, invalid_penalty=1.0)
    return RewardConfig(**{**base, **kw})


@pytest.mark.parametrize(
    "w_page, w_item, expected",
    [
        # mixed: item k on its index token times w_item, the page on EOS times w_page
        (0.5, 2.0, [[0, 0, 2.0, 6.0, 1.0, 0], [0, 10.0, 14.0, 2.0, 0, 0]]),
        # page-only: only EOS carries a reward
        (1.0, 0.0, [[0, 0, 0, 0, 2.0, 0], [0, 0, 0, 4.0, 0, 0]]),
        # item-only: only the index tokens do
        (0.0, 1.0, [[0, 0, 1.0, 3.0, 0, 0], [0, 5.0, 7.0, 0, 0, 0]]),
    ],
)
def test_placement_and_weights(w_page, w_item, expected):
    out = assemble_token_rewards(PAGE, ITEMS, BOTH, MASK, cfg(w_page=w_page, w_item=w_item))
    torch.testing.assert_close(out, torch.tensor(expected), rtol=0, atol=0)


def test_response_only_frame_gives_the_same_rewards_shifted():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    out = assemble_token_rewards(PAGE, ITEMS, BOTH, mask, cfg(w_page=0.5, w_item=2.0))
    torch.testing.assert_close(out, torch.tensor([[2.0, 6.0, 1.0, 0], [10.0, 14.0, 2.0, 0]]), rtol=0, atol=0)


def test_response_positions():
    positions, counts = response_positions(torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]))
    assert counts.tolist() == [3, 1, 0]
    assert positions.tolist() == [[1, 3, 4], [0, -1, -1], [-1, -1, -1]]


def test_running_normalisation_uses_the_moments_including_this_batch():
    norm = RewardNormalizer()
    out = assemble_token_rewards(PAGE, ITEMS, BOTH, MASK, cfg(normalize="running"), norm)
    # page rewards 2, 4: mean 3, std 1; item rewards 1, 3, 5, 7: mean 4, var (9+1+1+9)/4 = 5
    s5 = math.sqrt(5.0)
    expected = torch.tensor([
        [0, 0, (1 - 4) / (s5 + EPS), (3 - 4) / (s5 + EPS), (2 - 3) / (1 + EPS), 0],
        [0, (5 - 4) / (s5 + EPS), (7 - 4) / (s5 + EPS), (4 - 3) / (1 + EPS), 0, 0],
    ])
    torch.testing.assert_close(out, expected)
    assert norm.page.state_dict() == {"count": 2.0, "mean": 3.0, "m2": 2.0}
    assert norm.item.state_dict() == {"count": 4.0, "mean": 4.0, "m2": 20.0}

    # a second batch: the statistics are those of everything seen
    page2, items2 = torch.tensor([10.0, 0.0]), torch.tensor([[2.0, 2.0], [0.0, 8.0]])
    out2 = assemble_token_rewards(page2, items2, BOTH, MASK, cfg(normalize="running"), norm)
    all_pages = torch.tensor([2.0, 4.0, 10.0, 0.0], dtype=torch.float64)
    all_items = torch.cat([ITEMS.reshape(-1), items2.reshape(-1)]).double()
    mp_, sp = all_pages.mean(), all_pages.std(unbiased=False)
    mi, si = all_items.mean(), all_items.std(unbiased=False)
    assert norm.page.count == 4 and norm.page.mean == pytest.approx(float(mp_))
    assert norm.page.std == pytest.approx(float(sp)) and norm.item.std == pytest.approx(float(si))
    assert out2[0, 4] == pytest.approx(float((10 - mp_) / (sp + EPS)), rel=1e-6)
    assert out2[1, 1] == pytest.approx(float((0 - mi) / (si + EPS)), rel=1e-6)


def test_invalid_pages_do_not_enter_the_running_moments():
    norm = RewardNormalizer()
    valid = torch.tensor([True, False])
    assemble_token_rewards(PAGE, ITEMS, valid, MASK, cfg(normalize="running"), norm)
    assert norm.page.state_dict() == {"count": 1.0, "mean": 2.0, "m2": 0.0}
    assert norm.item.state_dict() == {"count": 2.0, "mean": 2.0, "m2": 2.0}


def test_joint_normalisation_puts_page_and_items_on_the_page_scale():
    norm = RewardNormalizer()
    out = assemble_token_rewards(PAGE, ITEMS, BOTH, MASK, cfg(normalize="joint"), norm)
    # page rewards 2, 4: mean 3, std 1 -- the one scale; item rewards 1, 3, 5, 7: mean 4
    expected = torch.tensor([
        [0, 0, (1 - 4) / (1 + EPS), (3 - 4) / (1 + EPS), (2 - 3) / (1 + EPS), 0],
        [0, (5 - 4) / (1 + EPS), (7 - 4) / (1 + EPS), (4 - 3) / (1 + EPS), 0, 0],
    ])
    torch.testing.assert_close(out, expected)
    # the same running moments as "running" keeps (so a checkpoint holds the same state)
    assert norm.page.state_dict() == {"count": 2.0, "mean": 3.0, "m2": 2.0}
    assert norm.item.state_dict() == {"count": 4.0, "mean": 4.0, "m2": 20.0}


@pytest.mark.parametrize("w_page, w_item", [(0.5, 2.0), (0.2, 1.0)])
def test_residual_page_reward_is_what_the_page_says_beyond_its_items(w_page, w_item):
    out = assemble_token_rewards(PAGE, ITEMS, BOTH, MASK, cfg(page_reward="residual", w_page=w_page, w_item=w_item))
    # page 0: 2 - (1 + 3) = -2; page 1: 4 - (5 + 7) = -8
    expected = torch.tensor([[0, 0, w_item * 1, w_item * 3, w_page * -2, 0],
                             [0, w_item * 5, w_item * 7, w_page * -8, 0, 0]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # without item rewards nothing is explained: the page reward is placed whole
    alone = assemble_token_rewards(PAGE, ITEMS, BOTH, MASK, cfg(page_reward="residual", w_page=1.0, w_item=0.0))
    torch.testing.assert_close(alone, torch.tensor([[0, 0, 0, 0, 2.0, 0], [0, 0, 0, 4.0, 0, 0]]), rtol=0, atol=0)


def test_residual_page_reward_needs_one_scale():
    with pytest.raises(ValueError, match="rewards.normalize"):
        assemble_token_rewards(PAGE, ITEMS, BOTH, MASK, cfg(page_reward="residual", normalize="running"),
                               RewardNormalizer())
    with pytest.raises(ValueError, match="rewards.page_reward"):
        assemble_token_rewards(PAGE, ITEMS, BOTH, MASK, cfg(page_reward="sideways"))


def test_group_normalisation():
    # four pages, two per request; K = 2
    page = torch.tensor([1.0, 3.0, 10.0, 10.0])
    items = torch.tensor([[0.0, 2.0], [4.0, 6.0], [1.0, 1.0], [1.0, 1.0]])
    mask = torch.ones(4, 3, dtype=torch.long)
    out = assemble_token_rewards(page, items, torch.ones(4, dtype=torch.bool), mask, cfg(normalize="group"),
                                 group_ids=torch.tensor([7, 7, 9, 9]))
    s5 = math.sqrt(5.0)  # items of request 7: 0, 2, 4, 6 -> mean 3, var 5
    expected = torch.tensor([
        [-3 / (s5 + EPS), -1 / (s5 + EPS), -1 / (1 + EPS)],
        [1 / (s5 + EPS), 3 / (s5 + EPS), 1 / (1 + EPS)],
        [0.0, 0.0, 0.0],  # request 9: equal rewards carry no signal
        [0.0, 0.0, 0.0],
    ])
    torch.testing.assert_close(out, expected)

    # an invalid page is left out of its group's statistics and gets the penalty
    valid = torch.tensor([True, True, True, False])
    page = torch.tensor([1.0, 3.0, 10.0, float("nan")])
    out = assemble_token_rewards(page, items, valid, mask, cfg(normalize="group", invalid_penalty=2.0),
                                 group_ids=torch.tensor([7, 7, 9, 9]))
    torch.testing.assert_close(out[2], torch.zeros(3))  # a group of one valid page
    torch.testing.assert_close(out[3], torch.tensor([0.0, 0.0, -2.0]))
    with pytest.raises(ValueError, match="group_ids"):
        assemble_token_rewards(page, items, valid, mask, cfg(normalize="group"))


def test_clipping_bounds_normalised_rewards_before_the_weights():
    page, items = torch.tensor([2.0, -10.0]), torch.tensor([[1.0, 3.0], [5.0, -7.0]])
    out = assemble_token_rewards(page, items, BOTH, MASK, cfg(clip=2.5, w_page=2.0))
    expected = torch.tensor([[0, 0, 1.0, 2.5, 4.0, 0], [0, 2.5, -2.5, -5.0, 0, 0]])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_invalid_page_penalty_on_its_last_token():
    # row 1 is an unconstrained response of 4 tokens that is not a page (its
    # rewards are NaN: never read); the penalty sits on its last token
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0]])
    page = torch.tensor([2.0, float("nan")])
    items = torch.tensor([[1.0, 3.0], [float("inf"), 0.0]])
    valid = torch.tensor([True, False])
    out = assemble_token_rewards(page, items, valid, mask, cfg(invalid_penalty=0.75, w_item=0.0))
    torch.testing.assert_close(out, torch.tensor([[0, 0, 0, 0, 2.0, 0], [0, 0, 0, 0, -0.75, 0]]), rtol=0, atol=0)


@pytest.mark.parametrize("where", ["page_nan", "page_inf", "item_nan", "item_ninf"])
def test_non_finite_rewards_stop_the_run(where):
    page, items = PAGE.clone(), ITEMS.clone()
    bad = {"nan": float("nan"), "inf": float("inf"), "ninf": -float("inf")}[where.split("_")[1]]
    if where.startswith("page"):
        page[1] = bad
    else:
        items[1, 0] = bad
    with pytest.raises(RewardError, match=f"non-finite {where.split('_')[0]} reward for page 1"):
        assemble_token_rewards(page, items, BOTH, MASK, cfg(normalize="running"), RewardNormalizer())


def test_mask_must_fit_a_valid_page():
    with pytest.raises(ValueError, match="has 2 tokens; a page of 2 items has 3"):
        assemble_token_rewards(PAGE, ITEMS, BOTH, torch.tensor([[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0]]), cfg())
    with pytest.raises(ValueError, match="running needs a RewardNormalizer"):
        assemble_token_rewards(PAGE, ITEMS, BOTH, MASK, cfg(normalize="running"))


# ------------------------------------------------------------- running moments


def test_moments_merge_equals_moments_of_the_union():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=gen, dtype=torch.float64) * 3 + 7
    whole = RunningMoments.of(x)
    merged = RunningMoments()
    for part in torch.split(x, [1, 10, 300, 689]):
        merged = merged.merge(RunningMoments.of(part))
    assert merged.count == whole.count == 1000
    assert merged.mean == pytest.approx(whole.mean, rel=1e-12)
    assert merged.m2 == pytest.approx(whole.m2, rel=1e-10)
    assert whole.var == pytest.approx(float(x.var(unbiased=False)), rel=1e-12)
    # checkpointable as plain numbers
    restored = RunningMoments()
    restored.load_state_dict(json.loads(json.dumps(merged.state_dict())))
    assert restored == merged
    norm = RewardNormalizer(page=merged)
    again = RewardNormalizer()
    again.load_state_dict(json.loads(json.dumps(norm.state_dict())))
    assert again == norm
    with pytest.raises(ValueError, match="lacks"):
        RunningMoments().load_state_dict({"count": 1.0})


def _rank(rank: int, world: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(100 + rank)
    local = torch.randn(50 + 30 * rank, generator=gen, dtype=torch.float64) * (rank + 1) + rank
    torch.save(local, os.path.join(out_dir, f"x{rank}.pt"))
    reduced = RunningMoments.of(local).all_reduce()
    # the running state starts equal on every rank; update() all-reduces the batch only
    running = RunningMoments(count=10.0, mean=1.0, m2=4.0)
    running.update(local, all_reduce=True)
    with open(os.path.join(out_dir, f"r{rank}.json"), "w") as f:
        json.dump({"reduced": reduced.state_dict(), "running": running.state_dict()}, f)
    dist.destroy_process_group()


def test_all_reduce_merge_over_two_gloo_ranks(tmp_path, monkeypatch):
    # Spawned ranks import this module by the name pytest gave it
    # (tests.rewards.test_token_rewards); they inherit sys.path, so put the
    # repository root on it for them.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    x = torch.cat([torch.load(tmp_path / f"x{r}.pt", weights_only=True) for r in range(2)])
    truth = RunningMoments.of(x)
    answers = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    assert answers[0] == answers[1], "every rank must hold the same moments"
    got = answers[0]["reduced"]
    assert got["count"] == truth.count
    assert got["mean"] == pytest.approx(truth.mean, rel=1e-12)
    assert got["m2"] == pytest.approx(truth.m2, rel=1e-10)
    expected_running = RunningMoments(10.0, 1.0, 4.0).merge(truth)
    assert answers[0]["running"]["count"] == expected_running.count
    assert answers[0]["running"]["m2"] == pytest.approx(expected_running.m2, rel=1e-10)
