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
tempered distribution, so greedy and sampled pages are scored alike. With
``top_p < 1`` (nucleus sampling, applied after the constraint and the
temperature) it is the logprob of the renormalised nucleus, the distribution
actually sampled; tokens outside the nucleus have logprob ``-inf``.

:func:`teacher_forced_logprobs` runs given responses through this same loop,
choosing the given tokens instead of sampling: a rollout worker's own view of
the logprobs its weights give, used to check that a weight sync arrived.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch

from pagerl.data.types import Request
from pagerl.models.candidates import CandidatePointer
from pagerl.models.constrained import PageConstraintProcessor
from pagerl.models.constrained_logprobs import nucleus_logprobs
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


def _check_sampling(temperature: float, top_p: float, batch_size: int) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature} (use greedy=True for argmax)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


# How a decoding step picks its tokens: (step, logprobs [B, V]) -> tokens [B].
Chooser = Callable[[int, torch.Tensor], torch.Tensor]


def _decode_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[List[int]],
    num_candidates: Sequence[int],
    page_sizes: Sequence[int],
    *,
    choose: Chooser,
    temperature: float,
    top_p: float,
    constrained: bool,
    max_new: Optional[torch.Tensor] = None,
) -> Tuple[List[List[int]], List[List[float]]]:
    """The decoding loop: ``(responses, per-token logprobs)``, each cut after its EOS.

    ``choose`` picks each step's tokens from the distribution the step
    reports logprobs of (sampling, argmax, or the given tokens of a
    teacher-forced pass: one loop for all, so they cannot disagree).
    ``max_new`` bounds each row's response length (default ``K + 1``:
    unconstrained, any longer response is invalid anyway).
    """
    device = model.device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = eos if pad is None else pad
    batch = len(prompts)
    ids, mask = _left_pad(prompts, pad, device)
    sizes = torch.as_tensor(list(page_sizes), dtype=torch.long, device=device)
    max_new = (sizes + 1) if max_new is None else max_new.to(device)
    processor: Optional[PageConstraintProcessor] = None
    if constrained:
        processor = PageConstraintProcessor(
            candidate_token_ids(tokenizer, settings_of(tokenizer).max_candidates),
            num_candidates=list(num_candidates),
            page_sizes=sizes,
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
        logp = nucleus_logprobs(torch.log_softmax(scores / temperature, dim=-1), top_p)
        token = choose(step, logp)
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
    cut = lengths.tolist()
    return ([r[:n] for r, n in zip(responses, cut)], [lp[:n] for lp, n in zip(token_logprobs, cut)])


def _sampler(greedy: bool, generator: torch.Generator) -> Chooser:
    if greedy:
        return lambda step, logp: logp.argmax(dim=-1)
    return lambda step, logp: torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)


def _pages(tokenizer: Any, requests: Sequence[Request], responses: List[List[int]],
           token_logprobs: List[List[float]]) -> List[GeneratedPage]:
    pages = []
    for request, response, lps in zip(requests, responses, token_logprobs):
        parsed = decode_page(tokenizer, request, response)
        pages.append(
            GeneratedPage(
                request_id=request.request_id,
                item_ids=parsed.item_ids,
                valid=parsed.valid,
                reason=parsed.reason,
                detail=parsed.detail,
                response_ids=response,
                logprob=float(sum(lps)),
                token_logprobs=lps,
            )
        )
    return pages


@contextmanager
def _inference(model: Any) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the caller's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def generate_pages(
    model: Any,
    tokenizer: Any,
    requests: Sequence[Request],
    *,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    constrained: bool = True,
    batch_size: int = 32,
    seed: int = 0,
) -> List[GeneratedPage]:
    """One generated page per request, in the order of ``requests``.

    Requests are batched by prompt length (less padding), left-padded, and
    decoded for at most ``max K + 1`` steps. The result depends only on the
    model, the requests, the settings and ``seed``.

    ``top_p < 1`` samples from the nucleus of each step's (constrained,
    tempered) distribution (:func:`nucleus_logprobs`), and the logprobs
    reported are those of the renormalised nucleus: the distribution the
    token was actually drawn from. A trainer that recomputes them must apply
    the same nucleus, or use :func:`teacher_forced_logprobs`.
    """
    _check_sampling(temperature, top_p, batch_size)
    prompts = [encode_prompt(tokenizer, r) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: len(prompts[i]))
    generator = torch.Generator(device=model.device).manual_seed(seed)
    choose = _sampler(greedy, generator)
    results: List[Optional[GeneratedPage]] = [None] * len(requests)
    with _inference(model):
        for begin in range(0, len(order), batch_size):
            chunk = order[begin : begin + batch_size]
            chunk_requests = [requests[i] for i in chunk]
            responses, logprobs = _decode_batch(
                model,
                tokenizer,
                [prompts[i] for i in chunk],
                [len(r.candidates) for r in chunk_requests],
                [r.page_size for r in chunk_requests],
                choose=choose,
                temperature=temperature,
                top_p=top_p,
                constrained=constrained,
            )
            for i, page in zip(chunk, _pages(tokenizer, chunk_requests, responses, logprobs)):
                results[i] = page
    return results  # type: ignore[return-value]


def teacher_forced_logprobs(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    num_candidates: Sequence[int],
    page_sizes: Sequence[int],
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    constrained: bool = True,
    batch_size: int = 32,
) -> List[List[float]]:
    """Per-token logprobs of given responses, computed by the decoding loop itself.

    Each response is fed to the same cached, step-by-step loop that
    :func:`generate_pages` samples with (prompt pass, then one step per
    token, the same constraint, temperature and nucleus), choosing the given
    token instead of drawing one. So for a page that loop generated, the
    result is its ``token_logprobs`` up to float rounding of a different
    batch composition: what a rollout worker reports about the weights it
    holds, independently of how a trainer computes logprobs. Rows are
    ``len(response_ids[b])`` long; a token the distribution excludes gets
    ``-inf``.
    """
    _check_sampling(temperature, top_p, batch_size)
    rows = len(prompt_ids)
    if not (len(response_ids) == len(num_candidates) == len(page_sizes) == rows):
        raise ValueError(
            f"teacher_forced_logprobs: {rows} prompts, {len(response_ids)} responses, "
            f"{len(num_candidates)} candidate counts and {len(page_sizes)} page sizes"
        )
    if any(len(r) == 0 for r in response_ids):
        raise ValueError("teacher_forced_logprobs: every response needs at least one token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: List[List[float]] = []
    with _inference(model):
        for begin in range(0, rows, batch_size):
            span = range(begin, min(begin + batch_size, rows))
            lengths = torch.tensor([len(response_ids[i]) for i in span], dtype=torch.long)
            forced = torch.full((len(span), int(lengths.max())), pad, dtype=torch.long, device=model.device)
            for row, i in enumerate(span):
                forced[row, : len(response_ids[i])] = torch.tensor(list(response_ids[i]), dtype=torch.long)
            _, logprobs = _decode_batch(
                model,
                tokenizer,
                [list(prompt_ids[i]) for i in span],
                [num_candidates[i] for i in span],
                [page_sizes[i] for i in span],
                choose=lambda step, logp: forced[:, step],
                temperature=temperature,
                top_p=top_p,
                constrained=constrained,
                max_new=lengths,
            )
            out.extend(logprobs)
    return out
