"""Page generation: batching, determinism, unconstrained hallucinations, and the logprobs RL uses."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from pagerl.config.schema import ModelConfig, TinyModelConfig
from pagerl.data.types import Item, Request, User
from pagerl.models.build import build_policy
from pagerl.models.constrained import constrain_response_logits
from pagerl.models.generate import generate_pages
from pagerl.models.logprobs import policy_logits
from pagerl.tokenization import INVALID_REASONS, build_tokenizer, candidate_token_ids, encode_prompt

MAX_CANDIDATES = 12
CFG = ModelConfig(
    max_candidates=MAX_CANDIDATES,
    tiny=TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64),
)


def make_requests(count: int, seed: int = 0) -> list[Request]:
    """Requests of varied size: different N, K, history and query, so prompts differ in length."""
    gen = torch.Generator().manual_seed(seed)
    requests = []
    for r in range(count):
        n = int(torch.randint(2, MAX_CANDIDATES + 1, (1,), generator=gen))
        k = int(torch.randint(1, n + 1, (1,), generator=gen))
        candidates = [
            Item(f"r{r}-{j}", f"item {int(torch.randint(0, 30, (1,), generator=gen))}", f"cat{j % 4}", 2.0 + 7 * j)
            for j in range(n)
        ]
        history = [f"cat{int(c)}" for c in torch.randint(0, 4, (r % 5,), generator=gen)]
        requests.append(Request(f"r{r}", User("u", history_categories=history), candidates, k, query="q" if r % 2 else None))
    return requests


@pytest.fixture(scope="module")
def setup():
    requests = make_requests(14)
    tokenizer = build_tokenizer(CFG, requests)
    model = build_policy(CFG, tokenizer, seed=11)
    return model, tokenizer, requests


def test_unconstrained_random_model_hallucinates_and_decode_flags_it(setup):
    model, tokenizer, requests = setup
    slots = candidate_token_ids(tokenizer, MAX_CANDIDATES)
    pages = generate_pages(model, tokenizer, requests, greedy=False, constrained=False, seed=0)
    assert sum(not p.valid for p in pages) >= len(pages) // 2
    for request, page in zip(requests, pages):
        n, k = len(request.candidates), request.page_size
        body = page.response_ids[:-1]
        really_valid = (
            len(page.response_ids) == k + 1
            and page.response_ids[-1] == tokenizer.eos_token_id
            and all(t in slots[:n] for t in body)
            and len(set(body)) == k
        )
        assert page.valid == really_valid
        assert (page.reason == "") == page.valid and (page.valid or page.reason in INVALID_REASONS)
        assert len(page.response_ids) <= k + 1  # cut after K + 1 tokens
        assert math.isfinite(page.logprob)
    # The same model, constrained, never does.
    assert all(p.valid for p in generate_pages(model, tokenizer, requests, greedy=False, seed=0))


def test_batched_left_padded_decoding_equals_one_at_a_time(setup):
    model, tokenizer, requests = setup
    assert len({len(encode_prompt(tokenizer, r)) for r in requests}) > 3  # real padding happens
    batched = generate_pages(model, tokenizer, requests, greedy=True, batch_size=5)
    single = [generate_pages(model, tokenizer, [r], greedy=True)[0] for r in requests]
    assert [p.request_id for p in batched] == [r.request_id for r in requests]
    for a, b in zip(batched, single):
        assert a.response_ids == b.response_ids and a.item_ids == b.item_ids
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_sampling_is_reproducible_from_the_seed_only(setup):
    model, tokenizer, requests = setup
    state = torch.get_rng_state()
    a = generate_pages(model, tokenizer, requests, greedy=False, seed=3)
    torch.manual_seed(12345)  # global state must not matter
    b = generate_pages(model, tokenizer, requests, greedy=False, seed=3)
    torch.set_rng_state(state)
    c = generate_pages(model, tokenizer, requests, greedy=False, seed=4)
    assert a == b
    assert [p.item_ids for p in a] != [p.item_ids for p in c]
    model.train()
    generate_pages(model, tokenizer, requests[:2])
    assert model.training  # the caller's mode is restored
    model.eval()


@pytest.mark.parametrize("greedy, temperature", [(True, 1.0), (False, 0.7), (False, 1.5)])
def test_logprobs_match_a_teacher_forced_forward_pass(setup, greedy, temperature):
    """What a trainer recomputes (one full forward, same mask and temperature) equals what rollout reported."""
    model, tokenizer, requests = setup
    pages = generate_pages(model, tokenizer, requests, greedy=greedy, temperature=temperature, seed=5)
    slots = candidate_token_ids(tokenizer, MAX_CANDIDATES)
    with torch.no_grad():
        for request, page in zip(requests, pages):
            prompt = encode_prompt(tokenizer, request)
            ids = torch.tensor([prompt + page.response_ids])
            logits = policy_logits(model, ids, prompt_end=torch.tensor([len(prompt)]))[:, len(prompt) - 1 : -1]
            masked = constrain_response_logits(
                logits,
                torch.tensor([page.response_ids]),
                slots,
                [len(request.candidates)],
                [request.page_size],
                tokenizer.eos_token_id,
                tokenizer.pad_token_id,
            )
            logp = torch.log_softmax(masked / temperature, -1)[0].gather(-1, ids[0, len(prompt) :, None]).squeeze(-1)
            assert page.token_logprobs == pytest.approx(logp.tolist(), abs=1e-4)
            assert page.logprob == pytest.approx(float(logp.sum()), abs=1e-4)


def test_sampled_pages_follow_their_reported_probabilities():
    """Frequencies of sampled pages match exp(logprob): the logprob is the sampling distribution's."""
    request = Request("one", User("u"), [Item(f"i{j}", f"t{j}", "c", 10.0) for j in range(3)], page_size=2)
    tokenizer = build_tokenizer(CFG, [request])
    model = build_policy(CFG, tokenizer, seed=2)
    with torch.no_grad():
        model.lm_head.weight.mul_(6)  # make the six possible pages clearly unequal
    draws = 3000
    pages = generate_pages(model, tokenizer, [request] * draws, greedy=False, temperature=1.0, batch_size=1000, seed=9)
    counts = Counter(tuple(p.item_ids) for p in pages)
    prob = {tuple(p.item_ids): math.exp(p.logprob) for p in pages}
    assert sum(prob.values()) == pytest.approx(1.0, abs=1e-4) and len(prob) == 6
    for page, p in prob.items():
        assert abs(counts[page] / draws - p) < 4 * math.sqrt(p * (1 - p) / draws) + 1e-3, (page, counts[page], p)


def test_bad_arguments_are_refused(setup):
    model, tokenizer, requests = setup
    with pytest.raises(ValueError, match="temperature must be positive"):
        generate_pages(model, tokenizer, requests, temperature=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        generate_pages(model, tokenizer, requests, batch_size=0)
