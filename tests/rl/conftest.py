"""Shared pieces of the RL building-block tests: a recipe, a tiny saved policy, simulator requests.

The policy is a tiny model built from the recipe's config and saved as a run
would save it (safetensors + tokenizer), so workers load it through the same
``load_policy`` / ``load_policy_tokenizer`` path as in a run. Its head is
scaled up so that its page distributions are far from uniform: a nucleus
(top-p) is then a real subset and sampled pages differ in probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

import numpy as np
import pytest
import torch

from pagerl.app.recipes import load_recipe
from pagerl.data.types import Request
from pagerl.distributed import ray_cluster

REPO = Path(__file__).resolve().parents[2]
# Small enough for 2 CPU cores: 12 candidates, pages of 5, a 2-layer 32-wide model.
BASE_OVERRIDES = [
    # The building blocks are tested on their own, outside an RL stage (whose checks, such as
    # rl.rollout.top_p=1, are the stage's).
    "run.name=rl-blocks", "run.stages=[synth,sft,rm,eval]", "model.max_candidates=12", "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64", "model.tiny.num_heads=4", "model.tiny.num_kv_heads=2",
    "rl.rollout.cpus_per_worker=0.5", "rl.rollout.samples_per_request=3", "rl.rollout.batch_size=16",
    "rl.trainer.cpus_per_rank=0.5", "rl.trainer.micro_batch_size=4", "rl.timeout_s=60",
]


def rl_recipe(*overrides: str) -> Any:
    recipe, _ = load_recipe(REPO / "recipes/ci_small.yaml", [*BASE_OVERRIDES, *overrides])
    return recipe


@dataclass
class TinyPolicy:
    recipe: Any
    directory: Path
    requests: List[Request]


def sample_requests(recipe: Any, count: int, seed: int = 3) -> List[Request]:
    from pagerl.sim import Simulator, World

    sim = Simulator(World.from_config(recipe.sim, recipe.run.seed))
    rng = np.random.default_rng(seed)
    return [sim.sample_request(rng, f"q{i}") for i in range(count)]


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory) -> TinyPolicy:
    from pagerl.models.build import build_policy
    from pagerl.tokenization.tokenizer import build_tokenizer

    recipe = rl_recipe()
    requests = sample_requests(recipe, 24)
    tokenizer = build_tokenizer(recipe.model, requests)
    model = build_policy(recipe.model, tokenizer, seed=7)
    with torch.no_grad():
        model.lm_head.weight.mul_(8)
    directory = tmp_path_factory.mktemp("policy")
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return TinyPolicy(recipe, directory, requests)


@pytest.fixture(scope="session")
def make_recipe():
    """``make_recipe(*overrides)``: the tests' recipe with extra ``key=value`` overrides."""
    return rl_recipe


@pytest.fixture(scope="module")
def local_ray():
    started = ray_cluster.connect("")
    yield
    ray_cluster.shutdown(started)
