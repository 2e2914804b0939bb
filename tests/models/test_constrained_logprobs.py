"""The trainer's constrained mode: the logprobs, entropies and gradients of the policy that acts.

Pages are sampled by rollout (``generate_pages(..., constrained=True)``) from
tiny policies built from configs with a locally fitted tokenizer: with the
candidate pointer (untied Llama and tied Qwen2) and without it. The trainer
recomputes them through ``CausalLMLogprobs(..., constraint=...)``, which never
builds full logits; the references are rollout's own per-token logprobs and
the explicit full-logits distribution (``policy_logits`` +
``constrain_response_logits`` + ``log_softmax``). Requests differ in N and K
within each batch, and batches are laid out both as SFT does (right padding)
and as RL does (left-padded prompts, explicit ``prompt_end``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pagerl.models.build import build_policy
from pagerl.models.constrained import constrain_response_logits
from pagerl.models.constrained_logprobs import (
    PageTokens,
    ResponseConstraint,
    constrained_linear_logprobs,
    nucleus_logprobs,
)
from pagerl.models.generate import generate_pages
from pagerl.models.logprobs import CausalLMLogprobs, policy_logits
from pagerl.tokenization import build_tokenizer, candidate_token_ids, encode_prompt


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

VARIANTS = {
    "pointer-llama": CFG,
    "pointer-qwen2-tied": dataclasses.replace(
        CFG, tiny=dataclasses.replace(CFG.tiny, family="qwen2", tie_word_embeddings=True)
    ),
    "plain-llama": dataclasses.replace(CFG, candidate_pointer=False),
}


def _sharpen(model, seed: int) -> None:
    """Redraw the weights larger than HF's init, so the distributions are far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # a tied weight is one Parameter, drawn once
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def make_setup(variant: str, seed: int = 7):
    requests = make_requests(10, seed=seed)
    tokenizer = build_tokenizer(VARIANTS[variant], requests)
    model = build_policy(VARIANTS[variant], tokenizer, seed=seed)
    _sharpen(model, seed)
    model.eval()
    return model, tokenizer, requests


@pytest.fixture(scope="module", params=list(VARIANTS))
def setup(request):
    return (request.param,) + make_setup(request.param)


def trainer_batch(tokenizer, requests, responses, layout: str):
    """``(ids, mask, labels, prompt_end, position_ids)`` of prompt + response rows.

    ``right``: each row is its prompt then its response, right-padded (the SFT
    layout; the response starts at the first scored label). ``left``: prompts
    left-padded to one width, responses after them, then right padding (the
    rollout layout; ``prompt_end`` is that width and positions skip the left pad).
    """
    prompts = [encode_prompt(tokenizer, r) for r in requests]
    pad = tokenizer.pad_token_id
    if layout == "right":
        rows = [(p + list(resp), [-100] * len(p) + list(resp), 0) for p, resp in zip(prompts, responses)]
    else:
        width = max(map(len, prompts))
        rows = [([pad] * (width - len(p)) + p + list(resp), [-100] * width + list(resp), width - len(p))
                for p, resp in zip(prompts, responses)]
    length = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (row_ids, row_labels, left) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, left : len(row_ids)] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if layout == "right":
        prompt_end = torch.tensor([len(p) for p in prompts])
    else:
        prompt_end = torch.full((len(rows),), max(map(len, prompts)), dtype=torch.long)
    return ids, mask, labels, prompt_end, positions


def constraint_of(requests) -> ResponseConstraint:
    constraint = ResponseConstraint.from_requests(requests)
    assert constraint == ResponseConstraint([len(r.candidates) for r in requests], [r.page_size for r in requests])
    return constraint


def explicit_reference(model, tokenizer, requests, responses, temperature):
    """Per row ``(logp [K+1], entropy [K+1])`` from the full masked logits: the definition, one row at a time."""
    slots = candidate_token_ids(tokenizer, MAX_CANDIDATES)
    out = []
    for request, response in zip(requests, responses):
        prompt = encode_prompt(tokenizer, request)
        ids = torch.tensor([prompt + list(response)])
        logits = policy_logits(model, ids, prompt_end=torch.tensor([len(prompt)]))[:, len(prompt) - 1 : -1]
        masked = constrain_response_logits(logits, torch.tensor([list(response)]), slots, [len(request.candidates)],
                                           [request.page_size], tokenizer.eos_token_id, tokenizer.pad_token_id)
        logp_all = torch.log_softmax(masked / temperature, -1)[0]
        safe = logp_all.masked_fill(~torch.isfinite(logp_all), 0.0)
        logp = logp_all.gather(-1, torch.tensor(list(response))[:, None]).squeeze(-1)
        out.append((logp, -(logp_all.exp() * safe).sum(-1)))
    return out


def scored_rows(values, labels):
    """The scored columns of each row of ``values [B, L-1]`` (aligned with ``labels[:, 1:]``)."""
    keep = labels[:, 1:] != -100
    return [values[i][keep[i]] for i in range(values.shape[0])]


@pytest.mark.parametrize("layout", ["right", "left"])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_trainer_logprobs_equal_rollout_and_entropies_equal_the_masked_full_logits(setup, temperature, layout):
    variant, model, tokenizer, requests = setup
    assert len({(len(r.candidates), r.page_size) for r in requests}) >= 5  # N and K differ within the batch
    pages = generate_pages(model, tokenizer, requests, greedy=False, constrained=True, temperature=temperature,
                           seed=3, batch_size=4)
    assert all(p.valid for p in pages)
    tokens = None if variant.startswith("pointer") else PageTokens.from_tokenizer(tokenizer)
    wrapper = CausalLMLogprobs(model, impl="torch", page_tokens=tokens)
    assert wrapper.page_tokens == PageTokens.from_tokenizer(tokenizer)  # a pointer policy's config says the same
    responses = [p.response_ids for p in pages]
    ids, mask, labels, prompt_end, positions = trainer_batch(tokenizer, requests, responses, layout)
    constraint = constraint_of(requests)
    with torch.no_grad():
        kwargs = dict(temperature=temperature, constraint=constraint)
        if layout == "left":
            kwargs.update(prompt_end=prompt_end, position_ids=positions)
        logp, entropy = wrapper(ids, mask, labels, return_entropy=True, **kwargs)
        seq = wrapper.sequence_logprobs(ids, mask, labels, **kwargs)
        full = wrapper(ids, mask, labels, temperature=temperature, prompt_end=kwargs.get("prompt_end"),
                       position_ids=kwargs.get("position_ids"))
        reference = explicit_reference(model, tokenizer, requests, responses, temperature)
    assert logp.dtype == torch.float32 and logp.shape == (ids.shape[0], ids.shape[1] - 1)
    assert torch.all(logp[labels[:, 1:] == -100] == 0) and torch.all(entropy[labels[:, 1:] == -100] == 0)
    for request, page, got, ent, (ref_logp, ref_ent), total in zip(
        requests, pages, scored_rows(logp, labels), scored_rows(entropy, labels), reference, seq
    ):
        torch.testing.assert_close(got, torch.tensor(page.token_logprobs), rtol=0, atol=1e-5)
        torch.testing.assert_close(got, ref_logp, rtol=0, atol=1e-5)
        torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-5)
        assert float(got[-1]) == 0.0 and float(ent[-1]) == 0.0  # the forced EOS: probability 1 exactly
        assert float(total) == pytest.approx(page.logprob, abs=1e-5)
        # item j is a real choice while more than one candidate is left (the last of K == N is forced too)
        left = len(request.candidates) - torch.arange(request.page_size)
        assert torch.equal(ent[:-1] > 0, left > 1)
    # the full-vocabulary path scores another distribution: the forced EOS alone is far from 0
    full_eos = torch.stack([row[-1] for row in scored_rows(full, labels)])
    assert float(full_eos.mean()) < -1.0


@pytest.mark.parametrize("top_p, temperature", [(0.6, 1.0), (0.85, 0.7)])
def test_nucleus_logprobs_and_entropy_equal_rollout_and_the_explicit_nucleus(setup, top_p, temperature):
    """Pages sampled from the nucleus of the constrained policy score the same on the trainer path."""
    variant, model, tokenizer, requests = setup
    pages = generate_pages(model, tokenizer, requests, greedy=False, constrained=True, temperature=temperature,
                           top_p=top_p, seed=5, batch_size=4)
    tokens = None if variant.startswith("pointer") else PageTokens.from_tokenizer(tokenizer)
    wrapper = CausalLMLogprobs(model, impl="torch", page_tokens=tokens)
    responses = [p.response_ids for p in pages]
    ids, mask, labels, _, _ = trainer_batch(tokenizer, requests, responses, "right")
    slots = candidate_token_ids(tokenizer, MAX_CANDIDATES)
    truncated = 0
    with torch.no_grad():
        logp, entropy = wrapper(ids, mask, labels, return_entropy=True, temperature=temperature, top_p=top_p,
                                constraint=constraint_of(requests))
        whole = wrapper(ids, mask, labels, temperature=temperature, constraint=constraint_of(requests))
        for request, page, got, ent, row_whole in zip(requests, pages, scored_rows(logp, labels),
                                                      scored_rows(entropy, labels), scored_rows(whole, labels)):
            torch.testing.assert_close(got, torch.tensor(page.token_logprobs), rtol=0, atol=1e-5)
            prompt = encode_prompt(tokenizer, request)
            full_ids = torch.tensor([prompt + list(page.response_ids)])
            logits = policy_logits(model, full_ids, prompt_end=torch.tensor([len(prompt)]))[:, len(prompt) - 1: -1]
            masked = constrain_response_logits(logits, torch.tensor([list(page.response_ids)]), slots,
                                               [len(request.candidates)], [request.page_size],
                                               tokenizer.eos_token_id, tokenizer.pad_token_id)
            nucleus = nucleus_logprobs(torch.log_softmax(masked / temperature, -1), top_p)[0]
            safe = nucleus.masked_fill(~torch.isfinite(nucleus), 0.0)
            torch.testing.assert_close(ent, -(nucleus.exp() * safe).sum(-1), rtol=0, atol=1e-5)
            truncated += int((got > row_whole + 1e-4).sum())  # renormalised over a real subset
    assert truncated > 0
    with pytest.raises(ValueError, match="top_p < 1 is scored under the constraint only"):
        wrapper(ids, mask, labels, top_p=top_p)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradients_equal_those_of_the_explicit_masked_full_logits(variant):
    model, tokenizer, requests = make_setup(variant, seed=8)
    pages = generate_pages(model, tokenizer, requests, greedy=False, temperature=0.7, seed=4)
    responses = [p.response_ids for p in pages]
    tokens = PageTokens.from_tokenizer(tokenizer)
    wrapper = CausalLMLogprobs(model, impl="torch", page_tokens=tokens)
    ids, mask, labels, _, _ = trainer_batch(tokenizer, requests, responses, "right")
    logp, entropy = wrapper(ids, mask, labels, temperature=0.7, constraint=constraint_of(requests),
                            return_entropy=True)
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(logp.shape, generator=g), torch.randn(logp.shape, generator=g)
    ((logp * a).sum() + (entropy * b).sum()).backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    reference = explicit_reference(model, tokenizer, requests, responses, 0.7)
    keep = labels[:, 1:] != -100
    loss = sum((ref_logp * a[i][keep[i]]).sum() + (ref_ent * b[i][keep[i]]).sum()
               for i, (ref_logp, ref_ent) in enumerate(reference))
    loss.backward()
    for name, param in model.named_parameters():
        assert ours[name] is not None, name
        err = float((ours[name] - param.grad).abs().max())
        assert err <= 1e-4 * max(1.0, float(param.grad.abs().max())), f"{name}: gradient differs by {err:.3e}"
    head = model.get_output_embeddings().weight
    page_rows = torch.tensor(tokens.columns)
    assert float(ours_grad_of(model, ours, head)[page_rows].abs().sum()) > 0
    if variant == "plain-llama":  # untied and no pointer: only the page tokens' head rows are used
        others = torch.ones(head.shape[0], dtype=torch.bool)
        others[page_rows] = False
        assert torch.all(ours_grad_of(model, ours, head)[others] == 0)
    model.zero_grad()


def ours_grad_of(model, grads, param):
    return next(grads[name] for name, p in model.named_parameters() if p is param)


def test_hidden_weight_and_pointer_contents_get_the_exact_gradient_and_unscored_positions_none():
    """The core function on leaf tensors: d/d hidden, d/d weight, d/d contents against full logits."""
    g = torch.Generator().manual_seed(0)
    vocab, width, m, eos, pad = 40, 8, 5, 3, 0
    cand = [10, 12, 14, 16, 18]
    tokens = PageTokens(tuple(cand), eos, pad)
    hidden = torch.randn(2, 6, width, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, width, generator=g, dtype=torch.float64, requires_grad=True)
    contents = torch.randn(2, m, width, generator=g, dtype=torch.float64, requires_grad=True)
    # row 0: 2 prompt steps, then <c2> <c0> <c4> EOS; row 1: 1 prompt step, <c1> EOS, then padding
    emitted = torch.tensor([[7, 7, 14, 10, 18, eos], [7, 12, eos, pad, pad, pad]])
    in_response = torch.tensor([[False, False, True, True, True, True], [False, True, True, True, True, True]])
    targets = emitted.masked_fill(~in_response, -100)
    targets[1, 3:] = -100
    constraint = ResponseConstraint([5, 3], [3, 1])

    def ours():
        return constrained_linear_logprobs(hidden, weight, targets, emitted, in_response, tokens, constraint,
                                           pointer_scores=hidden @ contents.transpose(1, 2), logit_multiplier=1.5,
                                           temperature=0.8, return_entropy=True)

    def reference():
        logits = hidden @ weight.T
        logits = logits.index_add(-1, torch.tensor(cand), hidden @ contents.transpose(1, 2)) * 1.5
        rows = []
        for i, start in enumerate([2, 1]):
            masked = constrain_response_logits(logits[i : i + 1, start:], emitted[i : i + 1, start:], cand,
                                               constraint.num_candidates[i : i + 1],
                                               constraint.page_sizes[i : i + 1], eos, pad)[0]
            logp_all = torch.log_softmax(masked / 0.8, -1)
            safe = logp_all.masked_fill(~torch.isfinite(logp_all), 0.0)
            tgt = targets[i, start:]
            lp = logp_all.gather(-1, tgt.clamp_min(0)[:, None]).squeeze(-1) * (tgt != -100)
            ent = -(logp_all.exp() * safe).sum(-1) * (tgt != -100)
            pre = torch.zeros(start, dtype=lp.dtype)
            rows.append((torch.cat([pre, lp]), torch.cat([pre, ent])))
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    a = torch.randn(2, 6, generator=g, dtype=torch.float64)
    grads = []
    for fn in (ours, reference):
        logp, ent = fn()
        grads.append(torch.autograd.grad((logp * a).sum() + (ent * a.flip(0)).sum(), (hidden, weight, contents)))
        grads[-1] = (logp.detach(), ent.detach()) + grads[-1]
    for got, want, name in zip(grads[0], grads[1], ["logp", "entropy", "hidden", "weight", "contents"]):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)
    logp, _, d_hidden, _, d_contents = grads[0]
    assert float(logp[0, 5]) == 0.0  # forced EOS
    unscored = targets == -100
    assert torch.all(logp[unscored] == 0) and torch.all(d_hidden[unscored] == 0)
    assert float(d_contents.abs().sum()) > 0


def test_a_policy_without_the_pointer_needs_its_page_tokens_and_bad_inputs_are_refused():
    model, tokenizer, requests = make_setup("plain-llama", seed=9)
    pages = generate_pages(model, tokenizer, requests[:3], greedy=True)
    ids, mask, labels, _, _ = trainer_batch(tokenizer, requests[:3], [p.response_ids for p in pages], "right")
    constraint = constraint_of(requests[:3])
    with pytest.raises(ValueError, match="page_tokens=PageTokens.from_tokenizer"):
        CausalLMLogprobs(model)(ids, mask, labels, constraint=constraint)
    wrapper = CausalLMLogprobs(model, page_tokens=PageTokens.from_tokenizer(tokenizer))
    with torch.no_grad():
        wrapper(ids, mask, labels, constraint=constraint)  # fine with them
        with pytest.raises(ValueError, match="constraint.num_candidates has shape"):
            wrapper(ids, mask, labels, constraint=ResponseConstraint([3, 3], [1, 1]))
        with pytest.raises(ValueError, match="constraint.page_sizes"):
            n = [len(r.candidates) for r in requests[:3]]
            wrapper(ids, mask, labels, constraint=ResponseConstraint(n, [n[0] + 1, 1, 1]))
        with pytest.raises(ValueError, match="constraint.num_candidates: a sequence has more candidates"):
            wrapper(ids, mask, labels, constraint=ResponseConstraint([MAX_CANDIDATES + 1, 2, 2], [1, 1, 1]))
        with pytest.raises(ValueError, match="temperature"):
            wrapper(ids, mask, labels, constraint=constraint, temperature=0.0)
        with pytest.raises(ValueError, match="ResponseConstraint"):
            wrapper(ids, mask, labels, constraint=(3, 1))
        with pytest.raises(ValueError, match="needs labels marking the response"):
            wrapper(ids, mask, constraint=constraint)
        # an invalid page (EOS one item early) has constrained probability 0: refused, not -inf
        first = int((labels[0] != -100).nonzero()[0])
        early = labels.clone()
        early[0, first] = tokenizer.eos_token_id
        early_ids = ids.clone()
        early_ids[0, first] = tokenizer.eos_token_id
        with pytest.raises(ValueError, match="forbidden by the constraint"):
            wrapper(early_ids, mask, early, constraint=constraint)
        word = labels.clone()
        word[0, first] = 20  # a word token, not a page token
        with pytest.raises(ValueError, match="not a page token"):
            wrapper(ids, mask, word, constraint=constraint)
        with pytest.raises(ValueError, match="scored outside the response"):
            wrapper(ids, mask, labels, constraint=constraint, prompt_end=torch.full((3,), ids.shape[1]))
    with pytest.raises(ValueError, match="eos_id .5. must not be a candidate"):
        PageTokens((4, 5), eos_id=5)
    pointer_model, pointer_tokenizer, _ = make_setup("pointer-llama")
    shuffled = PageTokens.from_tokenizer(pointer_tokenizer)
    shuffled = dataclasses.replace(shuffled, candidate_ids=shuffled.candidate_ids[::-1])
    with pytest.raises(ValueError, match="pointer's index token ids"):
        CausalLMLogprobs(pointer_model, page_tokens=shuffled)


def test_sft_examples_and_batches_carry_the_constraint_and_the_constrained_nll():
    from pagerl.data.types import Impression
    from pagerl.stages.sft import encode_examples
    from pagerl.train.batching import collate
    from pagerl.train.sft_loop import sft_nll

    model, tokenizer, requests = make_setup("pointer-llama", seed=10)
    impressions = [Impression(request=r, page=[c.item_id for c in r.candidates[: r.page_size]], feedback=[])
                   for r in requests[:4]]
    examples = encode_examples(tokenizer, impressions, [1.0, 2.0, 0.5, 1.0])
    assert [(e["num_candidates"], e["page_size"]) for e in examples] == [
        (len(r.candidates), r.page_size) for r in requests[:4]]
    batch = collate(examples, tokenizer.pad_token_id)
    assert batch["num_candidates"].tolist() == [len(r.candidates) for r in requests[:4]]
    assert batch["page_sizes"].tolist() == [r.page_size for r in requests[:4]]
    wrapper = CausalLMLogprobs(model, page_tokens=PageTokens.from_tokenizer(tokenizer))
    with torch.no_grad():
        constrained = sft_nll(wrapper, batch, constrained=True)
        full = sft_nll(wrapper, batch, constrained=False)
        logp = wrapper(batch["input_ids"], batch["attention_mask"], batch["labels"],
                       constraint=ResponseConstraint(batch["num_candidates"], batch["page_sizes"]))
    mask = (batch["labels"][:, 1:] != -100).float()
    want = -(batch["weight"] * (logp * mask).sum(1)).sum() / (batch["weight"] * mask.sum(1)).sum()
    torch.testing.assert_close(constrained, want)
    assert float(constrained) < float(full)  # the page vocabulary puts no mass elsewhere
    no_shape = [{k: v for k, v in e.items() if k not in ("num_candidates", "page_size")} for e in examples]
    with pytest.raises(ValueError, match="num_candidates"):
        sft_nll(wrapper, collate(no_shape, tokenizer.pad_token_id), constrained=True)


_ZERO3_SCRIPT = textwrap.dedent(
    """
    import copy, importlib.util, json, os, sys
    import torch, deepspeed
    from deepspeed.utils import safe_get_full_grad
    spec = importlib.util.spec_from_file_location("tcl", os.path.join(os.environ["TEST_DIR"], "test_constrained_logprobs.py"))
    tcl = importlib.util.module_from_spec(spec); spec.loader.exec_module(tcl)
    from pagerl.models.generate import generate_pages
    from pagerl.models.logprobs import CausalLMLogprobs
    from pagerl.distributed.deepspeed_config import skip_shm_comm_op

    skip_shm_comm_op()  # as every PageRL stage does: no C++ build
    deepspeed.init_distributed(dist_backend="gloo")
    out = {}
    for variant in ("pointer-llama", "pointer-qwen2-tied"):
        model, tokenizer, requests = tcl.make_setup(variant, seed=12)
        requests = requests[:4]
        pages = generate_pages(model, tokenizer, requests, greedy=False, temperature=0.7, seed=2)
        responses = [p.response_ids for p in pages]
        ref_model = copy.deepcopy(model)
        ids, mask, labels, _, _ = tcl.trainer_batch(tokenizer, requests, responses, "right")
        wrapper = CausalLMLogprobs(model, impl="torch")
        config = {
            "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "train_batch_size": 4,
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
            "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 1 << 30,
        }
        opt = torch.optim.SGD(wrapper.parameters(), lr=0.0)
        engine, _, _, _ = deepspeed.initialize(model=wrapper, optimizer=opt, config=config)
        head = model.get_output_embeddings().weight
        partitioned = hasattr(head, "ds_id") and head.numel() == 0
        logp, ent = engine(ids, mask, labels, temperature=0.7, constraint=tcl.constraint_of(requests),
                           return_entropy=True)
        engine.backward(logp.sum() + 0.5 * ent.sum())
        ref = tcl.explicit_reference(ref_model, tokenizer, requests, responses, 0.7)
        sum(l.sum() + 0.5 * e.sum() for l, e in ref).backward()
        got_l, got_e = tcl.scored_rows(logp.detach(), labels), tcl.scored_rows(ent.detach(), labels)
        ref_params = dict(ref_model.named_parameters())
        out[variant] = {
            "partitioned": partitioned,
            "logp_err": max(float((a - b.detach()).abs().max()) for a, (b, _) in zip(got_l, ref)),
            "ent_err": max(float((a - b.detach()).abs().max()) for a, (_, b) in zip(got_e, ref)),
            "rollout_err": max(float((a - torch.tensor(p.token_logprobs)).abs().max()) for a, p in zip(got_l, pages)),
            "grad_err": max(float((safe_get_full_grad(p) - ref_params[n].grad).abs().max())
                            for n, p in model.named_parameters()),
        }
    print("RESULTS " + json.dumps(out))
    """
)


def test_constrained_mode_under_deepspeed_zero3(tmp_path):
    pytest.importorskip("deepspeed")
    script = tmp_path / "zero3_constrained.py"
    script.write_text(_ZERO3_SCRIPT)
    env = dict(
        os.environ, TEST_DIR=os.path.dirname(__file__), MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(28500 + os.getpid() % 1000), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    for variant, res in json.loads(lines[-1][len("RESULTS "):]).items():
        assert res["partitioned"], f"{variant}: the head weight was not partitioned by ZeRO-3"
        assert res["logp_err"] < 1e-5 and res["ent_err"] < 1e-5 and res["rollout_err"] < 1e-5, (variant, res)
        assert res["grad_err"] < 1e-4, (variant, res)
