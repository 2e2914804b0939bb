"""Generating pages for requests: batched, left-padded, optionally constrained.

Why an explicit decoding loop instead of ``model.generate``: a page is at most
``K + 1`` tokens, so the loop is short and reads as the method (prompt pass,
then one cached step per slot); it samples from a ``torch.Generator`` we own
(``generate`` draws from the global RNG, which pagerl never touches); and it
computes each chosen token's logprob from the exact distribution it was drawn
from, which RL needs, without keeping the per-step score tensors
``output_scores`` would. The logits processor is the same
``transformers.LogitsProcessor`` one would hand to ``generate``.

Logits come from the backbone's last hidden state through
:func:`pagerl.models.logprobs.head_logits`, the same head (logit scaling and,
for a candidate-pointer policy, the pointer term) as training's, so what
rollout reports is what a trainer recomputes.

The logprob of a response is under the *sampling distribution*: the
(constrained, when ``constrained``) logits divided by ``temperature``. Forced
tokens (EOS after the K-th item under the constraint) have logprob 0. With
``greedy`` the argmax is taken, and the logprob reported is still that of the
tempered distribution, so greedy and sampled pages are scored alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import torch

from pagerl.data.types import Request
from pagerl.models.candidates import CandidatePointer
from pagerl.models.constrained import PageConstraintProcessor
from pagerl.models.logprobs import backbone_inputs, backbone_of, head_logits
from pagerl.tokenization.serialize import candidate_token_ids, decode_page, encode_prompt
from pagerl.tokenization.settings import settings_of


@dataclass
class GeneratedPage:
    """One generated page, parsed, with what RL needs to score and train on it."""

    request_id: str
    item_ids: List[str]
    valid: bool
    reason: str
    # The response tokens, up to and including EOS (no padding).
    response_ids: List[int] = field(default_factory=list)
    # Sum of ``token_logprobs``: log-probability of the response under the
    # sampling distribution (constrained, tempered).
    logprob: float = 0.0
    token_logprobs: List[float] = field(default_factory=list)
    detail: str = ""


def _left_pad(prompts: Sequence[List[int]], pad_id: int, device: torch.device):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def _decode_batch(
    model: Any,
    tokenizer: Any,
    requests: Sequence[Request],
    prompts: Sequence[List[int]],
    *,
    greedy: bool,
    temperature: float,
    constrained: bool,
    generator: torch.Generator,
) -> List[GeneratedPage]:
    device = model.device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = eos if pad is None else pad
    batch = len(requests)
    ids, mask = _left_pad(prompts, pad, device)
    page_sizes = torch.tensor([r.page_size for r in requests], device=device)
    # Unconstrained, a response is cut after K + 1 tokens: any longer one is invalid anyway.
    max_new = page_sizes + 1
    processor: Optional[PageConstraintProcessor] = None
    if constrained:
        processor = PageConstraintProcessor(
            candidate_token_ids(tokenizer, settings_of(tokenizer).max_candidates),
            num_candidates=[len(r.candidates) for r in requests],
            page_sizes=page_sizes,
            response_start=ids.shape[1],
            eos_token_id=eos,
            pad_token_id=pad,
        )

    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    pointer = CandidatePointer.of(model)
    backbone = backbone_of(model)
    # left-padded: every prompt ends at the last column
    prompt_end = torch.full((batch,), ids.shape[1], dtype=torch.long, device=device)
    inputs, contents = backbone_inputs(model, pointer, ids, prompt_end)
    out = backbone(**inputs, attention_mask=mask, position_ids=positions, use_cache=True)
    cache, last_pos = out.past_key_values, positions[:, -1]
    sequences = ids
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    logprobs: List[torch.Tensor] = []
    for step in range(int(max_new.max())):
        scores = head_logits(model, pointer, out.last_hidden_state[:, -1:], contents)[:, -1, :]
        if processor is not None:
            scores = processor(sequences, scores)
        logp = torch.log_softmax(scores / temperature, dim=-1)
        if greedy:
            token = logp.argmax(dim=-1)
        else:
            token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
        token = torch.where(done, torch.full_like(token, pad), token)
        chosen = logp.gather(-1, token[:, None]).squeeze(-1)
        logprobs.append(torch.where(done, torch.zeros_like(chosen), chosen))
        lengths += (~done).long()
        done |= (token == eos) | (lengths >= max_new)
        sequences = torch.cat([sequences, token[:, None]], dim=1)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        last_pos = last_pos + 1
        step_inputs = dict(input_ids=token[:, None]) if pointer is None else dict(
            inputs_embeds=pointer.step_inputs(model, token[:, None], contents))
        out = backbone(**step_inputs, attention_mask=mask, position_ids=last_pos[:, None],
                       past_key_values=cache, use_cache=True)
        cache = out.past_key_values

    responses = sequences[:, ids.shape[1] :].tolist()
    token_logprobs = torch.stack(logprobs, dim=1).tolist()
    pages = []
    for row, request in enumerate(requests):
        n = int(lengths[row])
        parsed = decode_page(tokenizer, request, responses[row][:n])
        lps = token_logprobs[row][:n]
        pages.append(
            GeneratedPage(
                request_id=request.request_id,
                item_ids=parsed.item_ids,
                valid=parsed.valid,
                reason=parsed.reason,
                detail=parsed.detail,
                response_ids=responses[row][:n],
                logprob=float(sum(lps)),
                token_logprobs=lps,
            )
        )
    return pages


def generate_pages(
    model: Any,
    tokenizer: Any,
    requests: Sequence[Request],
    *,
    greedy: bool = True,
    temperature: float = 1.0,
    constrained: bool = True,
    batch_size: int = 32,
    seed: int = 0,
) -> List[GeneratedPage]:
    """One generated page per request, in the order of ``requests``.

    Requests are batched by prompt length (less padding), left-padded, and
    decoded for at most ``max K + 1`` steps. The result depends only on the
    model, the requests, the settings and ``seed``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature} (use greedy=True for argmax)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    prompts = [encode_prompt(tokenizer, r) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: len(prompts[i]))
    generator = torch.Generator(device=model.device).manual_seed(seed)
    results: List[Optional[GeneratedPage]] = [None] * len(requests)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for begin in range(0, len(order), batch_size):
                chunk = order[begin : begin + batch_size]
                pages = _decode_batch(
                    model,
                    tokenizer,
                    [requests[i] for i in chunk],
                    [prompts[i] for i in chunk],
                    greedy=greedy,
                    temperature=temperature,
                    constrained=constrained,
                    generator=generator,
                )
                for i, page in zip(chunk, pages):
                    results[i] = page
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]
