"""The reward model's view of evaluated pages: its figures are the model's own scores, paired by request."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pagerl.config.schema import ModelConfig, RecipeConfig, RMConfig, SimConfig
from pagerl.eval.reward_view import reward_model_dir, reward_model_view
from pagerl.models.build import build_policy
from pagerl.models.logprobs import backbone_of
from pagerl.rewards.clicks import head_outputs
from pagerl.rewards.models import RewardModel, load_reward_models
from pagerl.sim import Simulator, World
from pagerl.tokenization import build_tokenizer, candidate_token_ids


@pytest.fixture(scope="module")
def requests():
    sim = Simulator(World.from_config(SimConfig(num_items=120, num_users=30), seed=1))
    rng = np.random.default_rng(0)
    return [sim.sample_request(rng, f"r{i}") for i in range(6)]


@pytest.fixture(scope="module")
def model_dir(requests, tmp_path_factory):
    directory = tmp_path_factory.mktemp("rm") / "final"
    tokenizer = build_tokenizer(ModelConfig(), requests)
    cfg = ModelConfig()
    model = RewardModel(backbone_of(build_policy(cfg, tokenizer, seed=0)),
                        index_token_ids=candidate_token_ids(tokenizer, cfg.max_candidates), seed=0,
                        **head_outputs(RMConfig()))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_figures_are_the_models_scores_and_pairs_skip_missing_pages(requests, model_dir):
    first = [[c.item_id for c in r.candidates[: r.page_size]] for r in requests]
    second = [[c.item_id for c in r.candidates[::-1][: r.page_size]] for r in requests]
    with_gap = list(second)
    with_gap[2] = None  # an invalid page is not scored
    view = reward_model_view(model_dir, requests, {"rl": first, "random": with_gap}, ["rl"], {"rl": ["random"]})
    page_a, item_a = load_reward_models(model_dir).score(requests, first)
    page_b, item_b = load_reward_models(model_dir).score(requests, second)
    assert view["page_output"] == "expected_clicks" and view["item_output"] == "click_probability"
    assert view["methods"]["rl"]["scored"] == 6 and view["methods"]["random"]["scored"] == 5
    assert view["methods"]["rl"]["rm_page"] == pytest.approx(float(page_a.mean()), rel=1e-6)
    assert view["methods"]["rl"]["rm_item_sum"] == pytest.approx(float(item_a.sum(1).mean()), rel=1e-6)
    keep = torch.tensor([i != 2 for i in range(6)])
    diff = (page_a - page_b)[keep].double()
    pair = view["paired"]["rl"]["random"]
    assert pair["rm_page_diff"] == pytest.approx(float(diff.mean()), rel=1e-6)
    assert pair["rm_page_diff_se"] == pytest.approx(float(diff.std() / math.sqrt(5)), rel=1e-6)
    items = (item_a.double().sum(1) - item_b.double().sum(1))[keep]
    assert pair["rm_item_sum_diff"] == pytest.approx(float(items.mean()), rel=1e-6)


def test_the_run_reward_model_is_found_only_when_trained(tmp_path, model_dir):
    recipe = RecipeConfig()
    assert reward_model_dir(recipe, tmp_path) is None
    recipe.rewards.model_dir = str(model_dir)
    assert reward_model_dir(recipe, tmp_path) == model_dir
