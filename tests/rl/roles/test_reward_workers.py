"""Reward workers on a real local Ray cluster: batched scoring equals per-page
scoring for every source, a worker killed from outside while it holds a batch
is restarted by Ray and the batch retried, retries are bounded, and errors of
the source or the recipe reach the caller as they are."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pagerl.app.recipes import load_recipe
from pagerl.distributed import ray_cluster
from pagerl.errors import RecipeError
from pagerl.rewards.reward_sources import RewardError, build_reward_source, score_pages
from pagerl.rl.roles.reward_workers import RewardWorkerError, RewardWorkerGroup
from pagerl.sim import Simulator, World

REPO = Path(__file__).resolve().parents[3]
# The directory of the user reward module (rewards.python_path), beside the reward-source tests.
USER_DIR = REPO / "tests" / "rewards"
USER_MODULE = "user_reward_example"


@pytest.fixture(scope="module")
def local_ray():
    started = ray_cluster.connect("")
    yield
    ray_cluster.shutdown(started)


def recipe(*overrides: str):
    r, _ = load_recipe(REPO / "recipes/ci_small.yaml", [
        "run.name=rewards", "rewards.cpus_per_worker=0.5", f"rewards.python_path=[{USER_DIR}]", *overrides,
    ])
    return r


@pytest.fixture(scope="module")
def batch():
    """Pages for 8 requests, 4 per request, with invalid ones mixed in."""
    r = recipe()
    sim = Simulator(World.from_config(r.sim, r.run.seed))
    rng = np.random.default_rng(11)
    requests = [sim.sample_request(rng, f"w{i}") for i in range(8)]
    reqs, pages, valid = [], [], []
    for n, request in enumerate(requests):
        for j in range(4):
            page = sim.random_page(request, rng)
            if (n, j) == (1, 2):
                page = page[:-1]  # too short
            if (n, j) == (5, 0):
                page[1] = page[0]  # a duplicate
            reqs.append(request)
            pages.append(page)
            valid.append((n, j) != (6, 3))  # the parser rejected this one
    return sim, requests, reqs, pages, valid


def per_page(source, reqs, pages, valid):
    """The reference: every page scored on its own, in this process."""
    parts = [score_pages(source, [r], [p], [v]) for r, p, v in zip(reqs, pages, valid)]
    return (np.concatenate([s.page for s in parts]), np.concatenate([s.items for s in parts]),
            np.concatenate([s.valid for s in parts]))


def build_reward_model_dir(run_dir: Path, sim, requests) -> Path:
    """A reward-model directory as the rm stage writes it (untrained heads: scoring is what is tested)."""
    from pagerl.models.build import build_policy
    from pagerl.models.logprobs import backbone_of
    from pagerl.rewards.models import RewardModel
    from pagerl.tokenization.tokenizer import build_tokenizer

    r = recipe()
    tokenizer = build_tokenizer(r.model, requests)
    model = RewardModel(backbone_of(build_policy(r.model, tokenizer, seed=0)), seed=0)
    out = run_dir / "rm" / "final"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("source", ["simulator", "python", "learned"])
def test_batched_scoring_equals_per_page_scoring(tmp_path, local_ray, batch, source):
    sim, requests, reqs, pages, valid = batch
    overrides = [f"rewards.source={source}", "rewards.batch_size=5"]
    if source == "python":
        overrides.append(f"rewards.function={USER_MODULE}:business_reward")
    if source == "learned":
        build_reward_model_dir(tmp_path, sim, requests)
    if source == "simulator":
        overrides += ["rewards.num_workers=2", "rewards.sim_objective=gmv"]
    r = recipe(*overrides)
    with RewardWorkerGroup(r, tmp_path) as group:
        answers = group.wait_ready()
        assert [a["source"] for a in answers] == [source] * r.rewards.num_workers
        scored = group.score(reqs, pages, valid)
        assert group.stats["chunks"] == 7 and group.stats["retries"] == 0

    page_ref, items_ref, valid_ref = per_page(build_reward_source(r, tmp_path), reqs, pages, valid)
    np.testing.assert_array_equal(scored.valid, valid_ref)
    assert (~scored.valid).sum() == 3 and scored.valid.sum() == len(pages) - 3
    # one batched forward pass per chunk vs one page at a time: float rounding at most
    tol = 1e-5 if source == "learned" else 1e-12
    np.testing.assert_allclose(scored.page, page_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(scored.items, items_ref, rtol=tol, atol=tol)
    assert not scored.page[~scored.valid].any() and not scored.items[~scored.valid].any()
    assert np.abs(scored.page[scored.valid]).min() > 0  # real rewards, not zeros
    if source == "simulator":
        ok = [b for b in range(len(pages)) if scored.valid[b]]
        np.testing.assert_allclose(scored.page[ok], [sim.score_page(reqs[b], pages[b]).expected_gmv for b in ok],
                                   rtol=1e-12)
    page_t, items_t, valid_t = scored.as_tensors()
    assert page_t.dtype == torch.float32 and items_t.shape == (len(pages), 5) and valid_t.dtype == torch.bool


def kill_later(pid: int, delay_s: float) -> threading.Timer:
    """SIGKILL a worker process from outside, as the OOM killer or a lost node would."""
    timer = threading.Timer(delay_s, os.kill, (pid, signal.SIGKILL))
    timer.start()
    return timer


def slow_recipe(*extra: str):
    # 0.02 s per page, 20 pages per chunk: each chunk holds its worker ~0.4 s
    return recipe("rewards.source=python", f"rewards.function={USER_MODULE}:slow_business_reward",
                  "rewards.batch_size=20", *extra)


def test_killed_worker_is_restarted_and_its_batch_retried(tmp_path, local_ray, batch):
    _, _, reqs, pages, valid = batch
    r = slow_recipe("rewards.max_restarts=2", "rewards.max_batch_retries=2")
    expected = score_pages(build_reward_source(r, tmp_path), reqs, pages, valid)
    with RewardWorkerGroup(r, tmp_path) as group:
        group.wait_ready()
        [before] = group.pids()
        started = time.perf_counter()
        timer = kill_later(before, 0.2)  # inside the first of two chunks
        scored = group.score(reqs, pages, valid)
        timer.join()
        assert time.perf_counter() - started > 0.2, "the kill must land while the batch is being scored"
        [after] = group.pids()
        assert after != before, "Ray must have started a new worker process"
        assert group.stats["retries"] >= 1 and group.retry_log
        assert group.retry_log[0][1] == 1  # first retry of that chunk
        assert group.stats["workers_lost"] == 0  # restarted, not lost
    np.testing.assert_array_equal(scored.valid, expected.valid)
    np.testing.assert_array_equal(scored.page, expected.page)
    np.testing.assert_array_equal(scored.items, expected.items)


def test_retries_are_bounded(tmp_path, local_ray, batch):
    _, _, reqs, pages, valid = batch
    r = slow_recipe("rewards.max_restarts=2", "rewards.max_batch_retries=0")
    with RewardWorkerGroup(r, tmp_path) as group:
        group.wait_ready()
        [pid] = group.pids()
        timer = kill_later(pid, 0.2)
        with pytest.raises(RewardWorkerError, match=r"lost 1 times .*rewards.max_batch_retries=0"):
            group.score(reqs, pages, valid)
        timer.join()


def test_a_worker_out_of_restarts_is_dead_for_good(tmp_path, local_ray, batch):
    _, _, reqs, pages, valid = batch
    r = recipe("rewards.source=simulator", "rewards.num_workers=2", "rewards.batch_size=4",
               "rewards.max_restarts=0", "rewards.max_batch_retries=3")
    expected = score_pages(build_reward_source(r, tmp_path), reqs, pages, valid)
    with RewardWorkerGroup(r, tmp_path) as group:
        group.wait_ready()
        first, second = group.pids()
        os.kill(first, signal.SIGKILL)
        # its chunks fail over to the survivor
        scored = group.score(reqs, pages, valid)
        np.testing.assert_array_equal(scored.page, expected.page)
        np.testing.assert_array_equal(scored.items, expected.items)
        assert group.stats["workers_lost"] == 1 and group.stats["retries"] >= 1
        os.kill(second, signal.SIGKILL)
        with pytest.raises(RewardWorkerError, match=r"all 2 reward workers are dead.*rewards.max_restarts=0"):
            group.score(reqs, pages, valid)
        assert group.stats["workers_lost"] == 2


def test_source_errors_reach_the_caller_unretried(tmp_path, local_ray, batch):
    _, _, reqs, pages, valid = batch
    r = recipe("rewards.source=python", f"rewards.function={USER_MODULE}:returns_nan", "rewards.batch_size=8")
    with RewardWorkerGroup(r, tmp_path) as group:
        with pytest.raises(RewardError, match=rf"{USER_MODULE}:returns_nan.*non-finite"):
            group.score(reqs, pages, valid)
        assert group.stats["retries"] == 0


def test_bad_recipe_fails_before_any_worker_starts(tmp_path, local_ray):
    with pytest.raises(RecipeError, match=r"'rewards.function' = 'pagerl_no_such_module_xyz:f'"):
        RewardWorkerGroup(recipe("rewards.source=python", "rewards.function=pagerl_no_such_module_xyz:f"), tmp_path)
    with pytest.raises(RecipeError, match=r"rewards.model_dir.*no trained reward models"):
        RewardWorkerGroup(recipe("rewards.source=learned"), tmp_path)
