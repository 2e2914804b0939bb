"""Constrained decoding: whatever the model prefers, a generated page is a valid page."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList

from pagerl.config.schema import ModelConfig, TinyModelConfig
from pagerl.data.types import Item, Request, User
from pagerl.models.build import build_policy
from pagerl.models.constrained import PageConstraintProcessor, constrain_response_logits
from pagerl.models.generate import generate_pages
from pagerl.tokenization import build_tokenizer, candidate_token_ids, decode_page, encode_prompt

MAX_CANDIDATES = 10
CFG = ModelConfig(
    max_candidates=MAX_CANDIDATES,
    tiny=TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32),
)
NEG = float("-inf")


def make_request(request_id: str, n: int, k: int) -> Request:
    candidates = [Item(f"{request_id}-{j}", f"item {j}", ["a", "b", "c"][j % 3], 3.0 * (j + 1)) for j in range(n)]
    return Request(request_id, User("u", history_categories=["a", "c"][: n % 3]), candidates, k)


def check_page(tokenizer, request, page):
    """Validity checked from the raw response, independently of decode_page."""
    slots = candidate_token_ids(tokenizer, MAX_CANDIDATES)
    n, k = len(request.candidates), request.page_size
    body, last = page.response_ids[:-1], page.response_ids[-1]
    assert last == tokenizer.eos_token_id and len(body) == k
    assert all(t in slots[:n] for t in body) and len(set(body)) == k
    assert page.item_ids == [request.candidates[slots.index(t)].item_id for t in body]
    assert page.valid and page.reason == ""
    assert math.isfinite(page.logprob) and page.logprob <= 1e-6
    assert len(page.token_logprobs) == k + 1 and page.token_logprobs[-1] == 0.0  # EOS is forced


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    family=st.sampled_from(["llama", "qwen2"]),
    logit_scale=st.sampled_from([1.0, 30.0, 300.0]),
    shapes=st.lists(st.integers(1, MAX_CANDIDATES).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))), min_size=2, max_size=5),
    greedy=st.booleans(),
    temperature=st.sampled_from([0.3, 1.0, 2.0]),
)
def test_constrained_decoding_never_yields_an_invalid_page(seed, family, logit_scale, shapes, greedy, temperature):
    requests = [make_request(f"r{b}", n, k) for b, (n, k) in enumerate(shapes)]
    cfg = ModelConfig(**{**vars(CFG), "tiny": TinyModelConfig(**{**vars(CFG.tiny), "family": family})})
    tokenizer = build_tokenizer(cfg, requests)
    model = build_policy(cfg, tokenizer, seed=seed)
    with torch.no_grad():  # a peaked random model: its favourite token is rarely allowed
        model.lm_head.weight.mul_(logit_scale)
    pages = generate_pages(model, tokenizer, requests, greedy=greedy, temperature=temperature, seed=seed, batch_size=3)
    assert [p.request_id for p in pages] == [r.request_id for r in requests]
    for request, page in zip(requests, pages):
        check_page(tokenizer, request, page)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shapes=st.lists(st.integers(1, 6).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))), min_size=1, max_size=4),
)
def test_processor_resists_adversarial_scores(seed, shapes):
    """Scores that favour EOS, pad, out-of-range slots and repeats still give valid pages."""
    gen = torch.Generator().manual_seed(seed)
    vocab, cand, eos, pad = 20, list(range(4, 12)), 3, 0
    n = torch.tensor([s[0] for s in shapes])
    k = torch.tensor([s[1] for s in shapes])
    proc = PageConstraintProcessor(cand, n, k, response_start=2, eos_token_id=eos, pad_token_id=pad)
    seqs = torch.full((len(shapes), 2), 13)
    for _ in range(int(k.max()) + 3):
        scores = torch.randn(len(shapes), vocab, generator=gen) * 50
        scores[:, [eos, pad, cand[-1]]] += 1000  # the forbidden favourites
        scores[:, seqs[:, 2:]] = 1e4 if seqs.shape[1] > 2 else 0.0  # favour repeats of every earlier token
        masked = proc(seqs, scores)
        token = torch.multinomial(torch.softmax(masked, -1), 1, generator=gen)
        seqs = torch.cat([seqs, token], 1)
    for b, (nb, kb) in enumerate(shapes):
        resp = seqs[b, 2:].tolist()
        body = resp[:kb]
        assert all(t in cand[:nb] for t in body) and len(set(body)) == kb
        assert resp[kb] == eos and set(resp[kb + 1 :]) <= {pad}


def test_mask_at_known_states():
    cand, eos, pad = [10, 11, 12, 13], 2, 0
    proc = PageConstraintProcessor(cand, [3, 4, 2], [2, 1, 2], response_start=2, eos_token_id=eos, pad_token_id=pad)
    # Responses start at column 2. Row 0: <c1> chosen (padding is no item), one
    # more to go; row 1: its only item chosen; row 2: <c1> then EOS, done (the
    # <c0> in its prompt does not count).
    out = proc(torch.tensor([[5, 6, 11, pad], [5, 6, 13, pad], [6, 10, 11, eos]]), torch.zeros(3, 16))
    finite = [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in out]
    assert finite[0] == {10, 12}  # unused and in range: <c3> is beyond N=3, <c1> is used
    assert finite[1] == {eos}
    assert finite[2] == {pad}
    assert out[1, eos] == 0 and out[2, pad] == 0


def test_ragged_response_starts():
    cand, eos = [10, 11, 12], 2
    # Right-padded prompts: row 0's response starts at 2, row 1's at 4.
    proc = PageConstraintProcessor(cand, [3, 3], [2, 2], response_start=torch.tensor([2, 4]), eos_token_id=eos)
    out = proc(torch.tensor([[5, 6, 10, 11, 0], [5, 10, 11, 6, 12]]), torch.zeros(2, 16))
    assert set(torch.isfinite(out[0]).nonzero().flatten().tolist()) == {eos}
    assert set(torch.isfinite(out[1]).nonzero().flatten().tolist()) == {10, 11}  # prompt's <c0> <c1> do not count


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="more candidates"):
        PageConstraintProcessor([10, 11], [3], [1], 0, eos_token_id=2)
    with pytest.raises(ValueError, match="page size"):
        PageConstraintProcessor([10, 11], [2], [3], 0, eos_token_id=2)
    with pytest.raises(ValueError, match="EOS must not be"):
        PageConstraintProcessor([10, 11], [2], [1], 0, eos_token_id=11)


def test_teacher_forced_mask_equals_step_by_step():
    gen = torch.Generator().manual_seed(0)
    cand, eos, pad, vocab = [4, 5, 6, 7, 8], 3, 0, 12
    n, k = [5, 3, 2], [3, 1, 2]
    responses = torch.tensor([[6, 4, 8, eos, pad], [5, eos, pad, pad, pad], [4, 5, eos, pad, pad]])
    logits = torch.randn(3, 5, vocab, generator=gen)
    whole = constrain_response_logits(logits, responses, cand, n, k, eos, pad)
    proc = PageConstraintProcessor(cand, n, k, response_start=1, eos_token_id=eos, pad_token_id=pad)
    prompt = torch.full((3, 1), 9)
    for t in range(responses.shape[1]):
        step = proc(torch.cat([prompt, responses[:, :t]], 1), logits[:, t])
        assert torch.equal(whole[:, t], step)
    logp = torch.log_softmax(whole, -1).gather(-1, responses[..., None]).squeeze(-1)
    assert torch.isfinite(logp).all()


def test_plugs_into_hf_generate():
    """For a plain causal LM (no candidate pointer, which HF generate knows nothing of) our decoding
    loop and HF generate with the processor pick the same pages."""
    requests = [make_request("a", 4, 2), make_request("b", 7, 3)]
    tokenizer = build_tokenizer(CFG, requests)
    model = build_policy(dataclasses.replace(CFG, candidate_pointer=False), tokenizer, seed=0)
    prompts = [encode_prompt(tokenizer, r) for r in requests]
    width = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    proc = PageConstraintProcessor(
        candidate_token_ids(tokenizer, MAX_CANDIDATES), [4, 7], [2, 3], width, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        logits_processor=LogitsProcessorList([proc]),
        do_sample=False,
        max_new_tokens=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    for row, request in enumerate(requests):
        assert decode_page(tokenizer, request, out[row, width:]).valid
    ours = generate_pages(model, tokenizer, requests, greedy=True)
    assert [p.response_ids for p in ours] == [
        [t for t in out[row, width:].tolist() if t != tokenizer.pad_token_id] for row in range(2)
    ]
