"""Rollout workers: n pages per request, valid constrained pages and their token positions,
repeatable from the seed, top-p sampling only inside the nucleus with the nucleus's logprobs,
and probe logprobs (teacher-forced decoding) equal to the sampling logprobs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pagerl.errors import RecipeError
from pagerl.models.constrained import constrain_response_logits
from pagerl.models.logprobs import policy_logits
from pagerl.rl.roles.groups import ActorGroup
from pagerl.rl.roles.layout import rollout_args
from pagerl.rl.roles.rollout import ROLLOUT_BACKENDS, RolloutError, RolloutWorker, register_rollout_backend
from pagerl.tokenization import candidate_token_ids


@pytest.fixture
def worker(tiny_policy, make_recipe):
    """``worker(*overrides)``: an in-process rollout worker of the tiny policy."""
    return lambda *overrides: RolloutWorker(*rollout_args(make_recipe(*overrides), tiny_policy.directory))


def test_n_valid_pages_per_request_with_positions_and_version(tiny_policy, worker):
    w = worker()
    requests = tiny_policy.requests[:6]
    batch = w.generate(requests, seed=1)
    n = 3
    assert len(batch) == n * len(requests)
    assert batch.request_index == [r for r in range(len(requests)) for _ in range(n)]
    assert batch.sample_index == list(range(n)) * len(requests)
    tokenizer = w.backend.tokenizer
    slots = candidate_token_ids(tokenizer, tiny_policy.recipe.model.max_candidates)
    for b in range(len(batch)):
        request = requests[batch.request_index[b]]
        k = request.page_size
        assert batch.request_ids[b] == request.request_id and batch.page_sizes[b] == k
        assert batch.num_candidates[b] == len(request.candidates)
        assert batch.prompt_ids[b] == w.backend.encode_prompt(request)
        response = batch.response_ids[b]
        assert batch.valid[b] and len(response) == k + 1 and response[-1] == tokenizer.eos_token_id
        assert batch.item_positions[b] == list(range(k)) and batch.eos_position[b] == k
        picked = [slots.index(t) for t in response[:k]]
        assert len(set(picked)) == k and max(picked) < len(request.candidates)
        assert batch.item_ids[b] == [request.candidates[j].item_id for j in picked]
        lps = batch.token_logprobs[b]
        assert len(lps) == k + 1 and lps[-1] == 0.0  # EOS is forced after the K-th item
        assert all(math.isfinite(x) and x <= 0 for x in lps)
    assert batch.version == [0] * len(batch)
    # samples of one request are draws, not copies
    assert any(len({tuple(batch.response_ids[b]) for b in range(r * n, r * n + n)}) > 1 for r in range(6))


def test_the_seed_alone_fixes_the_pages(tiny_policy, worker):
    requests = tiny_policy.requests[:8]
    a = worker().generate(requests, seed=5)
    torch.manual_seed(999)  # global RNG state must not matter
    b = worker().generate(requests, seed=5)
    c = worker().generate(requests, seed=6)
    assert a.response_ids == b.response_ids and a.token_logprobs == b.token_logprobs
    assert a.response_ids != c.response_ids


def reference_steps(w, batch, b, temperature):
    """Full constrained, tempered distributions of every step of page b, by one full forward pass."""
    model, tokenizer = w.backend.model, w.backend.tokenizer
    prompt, response = batch.prompt_ids[b], batch.response_ids[b]
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = policy_logits(model, ids, prompt_end=torch.tensor([len(prompt)]))[:, len(prompt) - 1 : -1]
    masked = constrain_response_logits(
        logits, torch.tensor([response]), candidate_token_ids(tokenizer, 12), [batch.num_candidates[b]],
        [batch.page_sizes[b]], tokenizer.eos_token_id, tokenizer.pad_token_id)
    return torch.softmax(masked[0].double() / temperature, dim=-1)


@pytest.mark.parametrize("top_p", [0.5, 0.8])
def test_top_p_samples_only_from_the_nucleus_and_reports_its_logprobs(tiny_policy, worker, top_p):
    temperature = 0.9
    w = worker(f"rl.rollout.top_p={top_p}", f"rl.rollout.temperature={temperature}",
               "rl.rollout.samples_per_request=4")
    batch = w.generate(tiny_policy.requests[:10], seed=2)
    smaller = 0
    for b in range(len(batch)):
        probs = reference_steps(w, batch, b, temperature)
        for t, token in enumerate(batch.response_ids[b]):
            p = probs[t]
            ranked = torch.sort(p, descending=True, stable=True)
            above = ranked.values.cumsum(0) - ranked.values
            nucleus = set(ranked.indices[above < top_p].tolist())
            smaller += len(nucleus) < int((p > 0).sum())
            assert token in nucleus, (b, t, token, sorted(nucleus))
            expected = math.log(float(p[token]) / float(p[list(nucleus)].sum()))
            assert batch.token_logprobs[b][t] == pytest.approx(expected, abs=1e-5)
    assert smaller > len(batch), "the nucleus must often be a strict subset for the test to mean anything"
    # without top-p the same policy does sample outside those nuclei
    full = worker(f"rl.rollout.temperature={temperature}", "rl.rollout.samples_per_request=4")
    wide = full.generate(tiny_policy.requests[:10], seed=2)
    outside = 0
    for b in range(len(wide)):
        probs = reference_steps(full, wide, b, temperature)
        for t, token in enumerate(wide.response_ids[b]):
            ranked = torch.sort(probs[t], descending=True, stable=True)
            above = ranked.values.cumsum(0) - ranked.values
            outside += token not in set(ranked.indices[above < top_p].tolist())
    assert outside > 0


@pytest.mark.parametrize("top_p, temperature", [(1.0, 1.0), (0.7, 0.8)])
def test_probe_logprobs_equal_the_sampling_logprobs(tiny_policy, worker, top_p, temperature):
    w = worker(f"rl.rollout.top_p={top_p}", f"rl.rollout.temperature={temperature}",
               "rl.rollout.batch_size=7")
    batch = w.generate(tiny_policy.requests[:12], seed=4)
    probed = w.probe_logprobs(batch.prompt_ids, batch.response_ids, batch.num_candidates, batch.page_sizes)
    assert [len(p) for p in probed] == [len(r) for r in batch.response_ids]
    worst = max(abs(a - b) for p, q in zip(probed, batch.token_logprobs) for a, b in zip(p, q))
    assert worst < 1e-5, worst
    # a response the constraint forbids (a repeated candidate) is impossible, not silently scored
    bad = list(batch.response_ids[0])
    bad[1] = bad[0]
    [lps] = w.probe_logprobs([batch.prompt_ids[0]], [bad], [batch.num_candidates[0]], [batch.page_sizes[0]])
    assert lps[1] == float("-inf")


def test_registry_refuses_duplicates_and_unknown_names(tiny_policy, make_recipe):
    assert "hf" in ROLLOUT_BACKENDS
    with pytest.raises(ValueError, match="'hf' is already registered"):
        register_rollout_backend("hf")(type("Other", (), {}))
    # An unknown backend is refused when the recipe loads, naming the key and the registered names ...
    with pytest.raises(RecipeError, match=r"override 'rl.rollout.backend=vllm': 'rl.rollout.backend': expected one of 'hf', got 'vllm'"):
        make_recipe("rl.rollout.backend=vllm")
    # ... and by the worker itself, for a section that did not come through the loader.
    recipe = make_recipe()
    rollout = dataclasses.replace(recipe.rl.rollout, backend="vllm")
    recipe = dataclasses.replace(recipe, rl=dataclasses.replace(recipe.rl, rollout=rollout))
    with pytest.raises(RolloutError, match=r"rl.rollout.backend: expected one of hf, got 'vllm'"):
        RolloutWorker(*rollout_args(recipe, tiny_policy.directory))


def test_generate_refuses_an_unexpected_version(tiny_policy, worker):
    w = worker()
    with pytest.raises(RolloutError, match="holds policy version 0, asked to generate with version 3"):
        w.generate(tiny_policy.requests[:2], seed=0, version=3)


def test_a_rollout_actor_generates_what_the_in_process_worker_does(tiny_policy, make_recipe, local_ray):
    recipe = make_recipe()
    requests = tiny_policy.requests[:5]
    here = RolloutWorker(*rollout_args(recipe, tiny_policy.directory)).generate(requests, seed=8, version=0)
    with ActorGroup("rollout", RolloutWorker, 1, num_cpus=0.5, init_args=rollout_args(recipe, tiny_policy.directory),
                    timeout_s=60) as group:
        [ready] = group.call("ready")
        assert ready["device"] == "cpu" and ready["version"] == 0
        there = group.call_one(0, "generate", requests, 8, 0)
    assert there.response_ids == here.response_ids
    assert max(abs(a - b) for p, q in zip(there.token_logprobs, here.token_logprobs) for a, b in zip(p, q)) < 1e-6
