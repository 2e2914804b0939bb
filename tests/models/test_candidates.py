"""The candidate echo and pointer: spans, contents, exactness through the fused kernel, decoding, checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pagerl.models.build import build_policy, load_policy
from pagerl.models.candidates import (
    CandidatePointer,
    candidate_contents,
    candidate_spans,
    prompt_end_from_labels,
)
from pagerl.models.generate import generate_pages
from pagerl.models.logprobs import CausalLMLogprobs, policy_logits
from pagerl.tokenization import build_tokenizer, candidate_token_ids, encode_example, encode_prompt
from pagerl.tokenization.serialize import RESPONSE_MARKER, response_marker_length


def _load_sibling(name: str):
    """A sibling test module (tests run with --import-mode=importlib, so not importable by name)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(f"_pagerl_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_gen = _load_sibling("test_generate")
CFG, MAX_CANDIDATES, make_requests = _gen.CFG, _gen.MAX_CANDIDATES, _gen.make_requests


@pytest.fixture(scope="module")
def setup():
    requests = make_requests(8, seed=3)
    tokenizer = build_tokenizer(CFG, requests)
    model = build_policy(CFG, tokenizer, seed=4)
    model.eval()
    return model, tokenizer, requests


def test_spans_cover_each_candidates_words_and_nothing_else(setup):
    _, tokenizer, requests = setup
    request = requests[1]
    prompt = encode_prompt(tokenizer, request)
    index_ids = torch.tensor(candidate_token_ids(tokenizer, MAX_CANDIDATES))
    marker = response_marker_length(tokenizer)
    assert tokenizer.decode(prompt[len(prompt) - marker :]).replace(" ", "") == RESPONSE_MARKER.replace(" ", "")
    padded = torch.tensor([[tokenizer.pad_token_id] * 3 + prompt])  # left padding must not matter
    span = candidate_spans(padded, index_ids, torch.tensor([padded.shape[1]]), marker)[0].tolist()
    tokens = padded[0].tolist()
    for j in range(len(request.candidates)):
        members = [t for t, s in zip(tokens, span) if s == j]
        assert members[0] == index_ids[j]  # the span starts at <cj> ...
        words = tokenizer.decode(members[1:]).split()
        item = request.candidates[j]
        assert words[: len(item.title.split())] == item.title.lower().split()  # ... and holds its words
    # the user context, padding and the response marker belong to no candidate
    first = tokens.index(int(index_ids[0]))
    assert set(span[:first]) == {-1} and set(span[len(tokens) - marker :]) == {-1}


def test_contents_are_span_means_and_absent_candidates_are_zero():
    embeds = torch.arange(12.0).reshape(1, 6, 2)
    span = torch.tensor([[-1, 0, 0, 1, -1, -1]])
    contents = candidate_contents(embeds, span, 3)
    torch.testing.assert_close(contents[0, 0], embeds[0, 1:3].mean(0))
    torch.testing.assert_close(contents[0, 1], embeds[0, 3])
    assert torch.equal(contents[0, 2], torch.zeros(2))


def test_kernel_logprobs_equal_the_explicit_pointer_logits_with_gradients(setup):
    model, tokenizer, requests = setup
    examples = [encode_example(tokenizer, r, [c.item_id for c in r.candidates[: r.page_size]]) for r in requests]
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), tokenizer.pad_token_id)
    labels = torch.full_like(ids, -100)
    for row, e in enumerate(examples):
        ids[row, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        labels[row, : len(e["labels"])] = torch.tensor(e["labels"])
    mask = (labels != -100) | (torch.arange(width)[None] < torch.tensor([len(e["input_ids"]) for e in examples])[:, None])
    mask = mask.long()
    wrapper = CausalLMLogprobs(model, impl="torch")
    ours = wrapper(ids, mask, labels, temperature=0.8)
    ours.sum().backward()
    ours_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    logits = policy_logits(model, ids, mask, prompt_end=prompt_end_from_labels(labels)) / 0.8
    ref = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp_min(0)[..., None]).squeeze(-1)
    ref = ref * (labels[:, 1:] != -100)
    ref.sum().backward()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(ours_grads[name], param.grad, atol=1e-5, rtol=1e-4, msg=name)
    model.zero_grad()


def test_the_pointer_changes_only_index_token_logits_and_reads_the_candidates(setup):
    model, tokenizer, requests = setup
    plain = dataclasses.replace(CFG, candidate_pointer=False)
    base = build_policy(plain, tokenizer, seed=4)
    base.load_state_dict(model.state_dict())
    base.eval()
    request = requests[2]
    prompt = torch.tensor([encode_prompt(tokenizer, request)])
    end = torch.tensor([prompt.shape[1]])
    with torch.no_grad():
        ours = policy_logits(model, prompt, prompt_end=end)[0, -1]
        hidden_only = policy_logits(base, prompt)[0, -1]
        torch.testing.assert_close(policy_logits(base, prompt), base(input_ids=prompt).logits.float())
    index = torch.tensor(candidate_token_ids(tokenizer, MAX_CANDIDATES))
    others = torch.ones_like(ours, dtype=torch.bool)
    others[index] = False
    # the echo changes the hidden state, so compare a token's logit through its own route:
    # non-index logits come from the LM head alone; index logits differ by h . content_j
    pointer = CandidatePointer.of(model)
    assert pointer is not None and CandidatePointer.of(base) is None
    with torch.no_grad():
        embeds, contents = pointer.prompt_inputs(model, prompt, end)
        hidden = model.model(inputs_embeds=embeds).last_hidden_state[:, -1:]
        head = model.lm_head(hidden)[0, -1]
        scores = pointer.scores(hidden, contents)[0, -1]
    torch.testing.assert_close(ours[others], head[others])
    torch.testing.assert_close(ours[index], head[index] + scores)
    n = len(request.candidates)
    assert torch.all(scores[n:] == 0) and torch.all(scores[:n] != 0)
    assert not torch.allclose(ours[index], hidden_only[index])


def test_decoding_reports_the_logprobs_a_trainer_recomputes_and_checkpoints_keep_the_pointer(setup, tmp_path):
    model, tokenizer, requests = setup
    pages = generate_pages(model, tokenizer, requests, greedy=False, temperature=1.0, constrained=False, seed=1)
    model.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = load_policy(tmp_path, CFG)
    assert CandidatePointer.of(reloaded) is not None
    wrapper = CausalLMLogprobs(reloaded, impl="torch")
    with torch.no_grad():
        for request, page in zip(requests, pages):
            prompt = encode_prompt(tokenizer, request)
            ids = torch.tensor([prompt + page.response_ids])
            labels = torch.tensor([[-100] * len(prompt) + page.response_ids])
            lp = wrapper(ids, labels=labels)[0, len(prompt) - 1 :]
            assert lp.tolist() == pytest.approx(page.token_logprobs, abs=1e-4)


def test_a_pointer_forward_without_a_known_prompt_end_is_refused(setup):
    """Scoring every token leaves nothing marking where the candidate list ends: an error, not a silent
    forward without the candidates."""
    model, tokenizer, requests = setup
    ids = torch.tensor([encode_prompt(tokenizer, requests[0])])
    with pytest.raises(ValueError, match="needs labels marking the response"):
        CausalLMLogprobs(model, impl="torch")(ids)
    with pytest.raises(ValueError, match="needs prompt_end"):
        policy_logits(model, ids)
