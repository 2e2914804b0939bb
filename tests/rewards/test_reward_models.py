"""The reward models without Ray: causal item scores, batched scoring, checkpoints, losses, metrics."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from pagerl.config.schema import ModelConfig, PairsConfig, RMConfig, SimConfig
from pagerl.models.build import build_policy
from pagerl.models.logprobs import backbone_of
from pagerl.rewards.models import HEADS_FILE, RewardModel, RewardModelError, RewardModels, load_reward_models
from pagerl.rewards.pairs import build_pairs
from pagerl.rewards.quality import spearman
from pagerl.rewards.rm_loop import bradley_terry_loss, collate_pairs, pair_deltas, rm_losses
from pagerl.sim import Simulator, World
from pagerl.stages.rm import encode_pairs
from pagerl.tokenization import build_tokenizer, candidate_token_ids


@pytest.fixture(scope="module")
def world():
    sim = Simulator(World.from_config(SimConfig(num_items=120, num_users=30), seed=1))
    rng = np.random.default_rng(0)
    requests = [sim.sample_request(rng, f"r{i}") for i in range(12)]
    return sim, requests


@pytest.fixture(scope="module")
def tokenizer(world):
    return build_tokenizer(ModelConfig(), world[1])


def make_model(tokenizer, **kwargs) -> RewardModel:
    cfg = ModelConfig()
    return RewardModel(backbone_of(build_policy(cfg, tokenizer, seed=0)),
                       index_token_ids=candidate_token_ids(tokenizer, cfg.max_candidates), seed=0, **kwargs)


@pytest.fixture(scope="module")
def models(tokenizer):
    return RewardModels(make_model(tokenizer), tokenizer, batch_size=4)


def test_item_rewards_are_causal_over_slots(world, models):
    _, requests = world
    ids = [c.item_id for c in requests[0].candidates]
    page = ids[:5]
    swapped_tail = page[:3] + [page[4], page[3]]
    new_third = page[:2] + [ids[7]] + page[3:]
    page_r, item_r = models.score([requests[0]] * 3, [page, swapped_tail, new_third])
    assert item_r.shape == (3, 5)
    # slots above the first difference score exactly the same; the changed ones do not
    torch.testing.assert_close(item_r[1, :3], item_r[0, :3], rtol=0, atol=0)
    torch.testing.assert_close(item_r[2, :2], item_r[0, :2], rtol=0, atol=0)
    assert (item_r[1, 3:] != item_r[0, 3:]).all() and (item_r[2, 2:] != item_r[0, 2:]).all()
    assert len(set(page_r.tolist())) == 3


@pytest.mark.parametrize("pooling,echo", [("mean", True), ("eos", False)])
def test_batched_scoring_matches_one_by_one_with_mixed_page_sizes(world, tokenizer, pooling, echo):
    _, requests = world
    requests = [dataclasses.replace(r, page_size=3 if i % 2 else 5) for i, r in enumerate(requests[:6])]
    pages = [[c.item_id for c in r.candidates[: r.page_size]][::-1] for r in requests]
    scorer = RewardModels(make_model(tokenizer, page_pooling=pooling, candidate_echo=echo), tokenizer, batch_size=4)
    page_b, item_b = scorer.score(requests, pages)
    assert item_b.shape == (6, 5)
    for i, (request, page) in enumerate(zip(requests, pages)):
        page_1, item_1 = scorer.score([request], [page])
        torch.testing.assert_close(page_b[i], page_1[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(item_b[i, : len(page)], item_1[0], rtol=1e-5, atol=1e-5)
        assert (item_b[i, len(page):] == 0).all()


def test_checkpoint_round_trip_is_safetensors_and_hugging_face_loadable(world, tokenizer, models, tmp_path):
    _, requests = world
    models.model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    heads = json.loads((tmp_path / HEADS_FILE).read_text())
    assert heads["candidate_echo"] and heads["page_pooling"] == "mean"
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".bin", ".pt", ".pkl", ".pth")]

    loaded = load_reward_models(tmp_path)
    pages = [[c.item_id for c in r.candidates[:5]] for r in requests[:4]]
    for a, b in zip(models.score(requests[:4], pages), loaded.score(requests[:4], pages)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    from transformers import AutoModel
    backbone = AutoModel.from_pretrained(tmp_path, use_safetensors=True)
    torch.testing.assert_close(backbone.embed_tokens.weight, models.model.model.embed_tokens.weight)


def test_bad_input_is_named(world, models, tmp_path):
    _, requests = world
    ids = [c.item_id for c in requests[0].candidates]
    with pytest.raises(RewardModelError, match=r"page 1 .*'r0'.*repeats"):
        models.score([requests[0]] * 2, [ids[:5], ids[:4] + ids[:1]])
    with pytest.raises(RewardModelError, match="2 requests but 1 pages"):
        models.score(requests[:2], [ids[:5]])
    with pytest.raises(RewardModelError, match=HEADS_FILE):
        load_reward_models(tmp_path)
    (tmp_path / HEADS_FILE).write_text("{not json")
    with pytest.raises(RewardModelError, match=rf"{HEADS_FILE}:1"):
        load_reward_models(tmp_path)


def test_bradley_terry_loss_smoothing_margin_and_weights():
    zero = torch.zeros(3)
    ones = torch.ones(3)
    assert bradley_terry_loss(zero, ones).item() == pytest.approx(math.log(2))
    big = torch.full((3,), 30.0)
    assert bradley_terry_loss(big, ones).item() == pytest.approx(0.0, abs=1e-6)
    # smoothing: a confident right answer still costs eps * delta
    assert bradley_terry_loss(big, ones, label_smoothing=0.1).item() == pytest.approx(3.0, rel=1e-3)
    # margin: winning by less than the margin is not enough
    assert bradley_terry_loss(ones, ones, margin=1.0).item() == pytest.approx(math.log(2))
    # zero-weight pairs do not count
    mixed = bradley_terry_loss(torch.tensor([30.0, -30.0]), torch.tensor([1.0, 0.0]))
    assert mixed.item() == pytest.approx(0.0, abs=1e-6)


def test_pairs_collate_and_train_the_deltas_they_are_about(world, tokenizer):
    sim, requests = world
    rng = np.random.default_rng(1)
    impressions = []
    from pagerl.data.types import Impression
    for r in requests:
        page, _ = sim.logging_page(r, rng)
        feedback, outcome = sim.sample_feedback(r, page, rng)
        feedback[0] = dataclasses.replace(feedback[0], click=1, dwell=30.0)  # make sure every page has evidence
        impressions.append(Impression(request=r, page=page, feedback=feedback, page_outcome=outcome))
    pairs = build_pairs(impressions, PairsConfig(), seed=0).pairs
    examples = encode_pairs(tokenizer, pairs)
    batch = collate_pairs(examples[:8], tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 16 and batch["diff_slots"].shape == (8, 5)
    for i, pair in enumerate(pairs[:8]):
        assert batch["diff_slots"][i].nonzero().flatten().tolist() == list(pair.slots)

    model = make_model(tokenizer)
    page, item = model(batch["input_ids"], batch["attention_mask"], batch["slot_positions"], batch["eos_positions"])
    page_delta, item_delta = pair_deltas(page, item, batch["diff_slots"])
    # only the differing slots enter the item delta
    manual = [(item[i, list(p.slots)] - item[8 + i, list(p.slots)]).sum() for i, p in enumerate(pairs[:8])]
    torch.testing.assert_close(item_delta, torch.stack(manual))

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    before = None
    for _ in range(5):
        out = model(batch["input_ids"], batch["attention_mask"], batch["slot_positions"], batch["eos_positions"])
        parts = rm_losses(out, batch, RMConfig())
        before = parts["loss"].item() if before is None else before
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
    assert parts["loss"].item() < before


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    stats = pytest.importorskip("scipy.stats")
    a, b = [1, 2, 2, 3, 5, 5, 0], [3, 1, 4, 1, 5, 9, 2]
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
