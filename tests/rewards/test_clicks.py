"""Click supervision of the reward models: labels, the two pointwise losses, and the heads' output scales."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from pagerl.config.schema import ModelConfig, PairsConfig, RMConfig, SimConfig
from pagerl.data.types import Impression
from pagerl.models.build import build_policy
from pagerl.models.logprobs import backbone_of
from pagerl.rewards.clicks import click_labels, click_losses, encode_impressions, head_outputs, uses_clicks
from pagerl.rewards.models import HEADS_FILE, RewardModel, RewardModels, load_reward_models
from pagerl.rewards.pairs import build_pairs
from pagerl.rewards.rm_loop import collate_pairs, rm_losses
from pagerl.sim import Simulator, World
from pagerl.stages.rm import encode_pairs
from pagerl.tokenization import build_tokenizer, candidate_token_ids


@pytest.fixture(scope="module")
def impressions():
    sim = Simulator(World.from_config(SimConfig(num_items=120, num_users=30), seed=1))
    rng = np.random.default_rng(0)
    out = []
    for i in range(10):
        request = sim.sample_request(rng, f"r{i}")
        page, _ = sim.logging_page(request, rng)
        feedback, outcome = sim.sample_feedback(request, page, rng)
        feedback[0] = dataclasses.replace(feedback[0], click=1, dwell=30.0)  # evidence on every page
        if i % 2:  # a short click: ambiguous, no label
            feedback[1] = dataclasses.replace(feedback[1], click=1, dwell=0.5)
        out.append(Impression(request=request, page=page, feedback=feedback, page_outcome=outcome))
    return out


@pytest.fixture(scope="module")
def tokenizer(impressions):
    return build_tokenizer(ModelConfig(), [imp.request for imp in impressions])


def make_model(tokenizer, rm_cfg: RMConfig) -> RewardModel:
    cfg = ModelConfig()
    return RewardModel(backbone_of(build_policy(cfg, tokenizer, seed=0)),
                       index_token_ids=candidate_token_ids(tokenizer, cfg.max_candidates), seed=0,
                       **head_outputs(rm_cfg))


def test_labels_follow_the_pairs_evidence_rules(impressions):
    cfg = PairsConfig(min_dwell_s=2.0)
    for i, imp in enumerate(impressions):
        labels = click_labels(imp, cfg)
        assert labels[0] == 1.0
        if i % 2:
            assert math.isnan(labels[1])  # a click shorter than pairs.min_dwell_s is neither
        for fb, y in zip(imp.feedback, labels):
            if not fb.click:
                assert y == 0.0
            elif fb.dwell >= cfg.min_dwell_s:
                assert y == 1.0
            else:
                assert math.isnan(y)


def test_click_losses_against_hand_computed_values():
    page = torch.tensor([0.0, math.log(2.0)])
    item = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, math.nan], [1.0, 1.0, math.nan]])
    parts = click_losses(page, item, labels)
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    bce = [-math.log(sig(0.0)), -math.log(1 - sig(2.0)), -math.log(sig(1.0)), -math.log(sig(0.0))]
    assert parts["click_item_loss"].item() == pytest.approx(sum(bce) / 4, rel=1e-6)
    # Poisson NLL exp(S) - C S: page 0 has 1 click at S=0, page 1 has 2 clicks at S=log 2
    assert parts["click_page_loss"].item() == pytest.approx(((1.0 - 0.0) + (2.0 - 2 * math.log(2.0))) / 2, rel=1e-6)


def test_click_trained_heads_score_in_click_units_and_keep_them_through_a_checkpoint(impressions, tokenizer, tmp_path):
    rm_cfg = RMConfig(click_loss_weight=1.0, page_click_loss_weight=1.0)
    pairs_only = RMConfig(click_loss_weight=0.0, page_click_loss_weight=0.0)
    assert uses_clicks(rm_cfg) and not uses_clicks(pairs_only)
    model = make_model(tokenizer, rm_cfg)
    requests = [imp.request for imp in impressions[:4]]
    pages = [list(imp.page) for imp in impressions[:4]]
    page, item = RewardModels(model, tokenizer).score(requests, pages)
    raw = RewardModels(make_model(tokenizer, pairs_only), tokenizer).score(requests, pages)
    torch.testing.assert_close(item, torch.sigmoid(raw[1]))
    torch.testing.assert_close(page, torch.exp(raw[0]))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    heads = json.loads((tmp_path / HEADS_FILE).read_text())
    assert heads["item_output"] == "click_probability" and heads["page_output"] == "expected_clicks"
    for a, b in zip((page, item), load_reward_models(tmp_path).score(requests, pages)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_impression_rows_join_the_pair_batch_and_their_losses_train(impressions, tokenizer):
    rm_cfg = RMConfig(click_loss_weight=1.0, page_click_loss_weight=1.0)
    pairs = encode_pairs(tokenizer, build_pairs(impressions, PairsConfig(), seed=0).pairs)[:6]
    logged = encode_impressions(tokenizer, impressions, PairsConfig())[:4]
    batch = collate_pairs(pairs, tokenizer.pad_token_id, logged)
    assert batch["input_ids"].shape[0] == 2 * 6 + 4 and batch["click_labels"].shape == (4, 5)
    # the impression rows are the logged pages, after the chosen and rejected rows
    width = len(logged[0]["prompt"]) + len(logged[0]["response"])
    assert batch["input_ids"][12, :width].tolist() == logged[0]["prompt"] + logged[0]["response"]
    torch.testing.assert_close(batch["click_labels"][1], torch.tensor(logged[1]["labels"]), equal_nan=True)

    model = make_model(tokenizer, rm_cfg)
    out = model(batch["input_ids"], batch["attention_mask"], batch["slot_positions"], batch["eos_positions"])
    parts = rm_losses(out, batch, dataclasses.replace(rm_cfg, click_loss_weight=2.0))
    expected = parts["page_loss"] + parts["item_loss"] + 2.0 * parts["click_item_loss"] + parts["click_page_loss"]
    torch.testing.assert_close(parts["loss"], expected)

    clicks_only = dataclasses.replace(rm_cfg, page_loss_weight=0.0, item_loss_weight=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        out = model(batch["input_ids"], batch["attention_mask"], batch["slot_positions"], batch["eos_positions"])
        parts = rm_losses(out, batch, clicks_only)
        first = first or {k: parts[k].item() for k in ("click_item_loss", "click_page_loss")}
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
    assert parts["click_item_loss"].item() < first["click_item_loss"]
    assert parts["click_page_loss"].item() < first["click_page_loss"]
