"""Exact logprobs of the *constrained* policy, the one that acts, without full-vocabulary logits.

Rollout samples from the constrained distribution (:mod:`pagerl.models.constrained`):
at each response step only this request's unused index tokens ``<cj>``
(``j < N_b``, while fewer than ``K_b`` items were chosen), then EOS (forced
after the K-th item, logit 0, hence logprob 0), then padding, have finite
logits, and the softmax runs over those alone. A trainer that scores the
same response with the full-vocabulary softmax computes another distribution:
on a fresh policy the two differ by several nats per token (the forced EOS
alone: 0 against about -log V). Ratios, KL terms and rollout/trainer sync
checks must use the constrained one, so this module computes it.

Why it needs no full logits: the allowed set is always a subset of the page
vocabulary, the ``N_max`` index tokens plus EOS (plus padding when it is not
EOS), so every other column would be ``-inf`` and contributes nothing to the
softmax. Only those ``S = N_max + 1 (+1)`` logits are computed: the head rows
of those tokens are gathered (``weight[ids]``, ``[S, H]``), multiplied with the
hidden states of the scored positions, and, for a candidate-pointer policy,
the pointer score ``h . content_j`` is added to column j, exactly as
:func:`pagerl.models.logprobs.head_logits` and
:class:`pagerl.models.candidates.CandidatePointer` do. Then the same steps as
rollout, in the same order and dtypes: float32 (float64 for a float64 model),
times the model's logit multiplier, masked by :func:`_mask_scores` with the
state of :func:`response_state` (the one rule, applied to column positions
instead of token ids), divided by the temperature, log-softmax.

What is exact: in exact arithmetic the result equals
``log_softmax(constrain_response_logits(policy_logits(...)) / T)`` gathered at
the labels, and its entropy is that of the same masked distribution. In
floating point the only differences are the reduction order of the head
matmul over S instead of V rows and of the log-sum-exp over S entries (fp32:
below 1e-5 per token in the tests). The head logits are formed in the model
dtype and then upcast, as rollout's are, so a bf16 trainer rounds them where a
bf16 rollout does.

Gradients reach the hidden states, the head weight (only its S gathered rows
get a nonzero gradient; tied embeddings are one Parameter and sum both uses)
and, through the pointer scores, the candidate contents. Under DeepSpeed
ZeRO-3 the head weight is an external parameter of
:class:`pagerl.models.logprobs.CausalLMLogprobs`, gathered for its forward and
backward, so indexing it there is valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from pagerl.models.candidates import INDEX_IDS
from pagerl.models.constrained import _mask_scores, check_page_shapes, response_state
from pagerl.tokenization.serialize import candidate_token_ids
from pagerl.tokenization.settings import settings_of

IGNORE_INDEX = -100
IntsLike = Union[Sequence[int], torch.Tensor]


@dataclass(frozen=True)
class PageTokens:
    """The page vocabulary of a policy: index tokens ``<c0>`` ... ``<c{N_max-1}>``, EOS, padding.

    These are the only tokens the constraint can ever allow, so they are the
    only head rows the constrained path computes. They must be the ids rollout
    masks with (:mod:`pagerl.models.generate` takes them from the tokenizer:
    :meth:`from_tokenizer`). A candidate-pointer policy also stores the index
    ids in its config (:meth:`from_config`), which build_policy fills from the
    same tokenizer.
    """

    candidate_ids: Tuple[int, ...]
    eos_id: int
    # None: EOS also pads (after EOS only EOS may follow), as in PageConstraintProcessor.
    pad_id: Optional[int] = None

    def __post_init__(self) -> None:
        ids = tuple(int(t) for t in self.candidate_ids)
        object.__setattr__(self, "candidate_ids", ids)
        if not ids:
            raise ValueError("PageTokens.candidate_ids: at least one candidate index token is needed")
        if len(set(ids)) != len(ids) or min(ids) < 0:
            raise ValueError(f"PageTokens.candidate_ids must be distinct non-negative token ids, got {list(ids)}")
        if isinstance(self.eos_id, bool) or not isinstance(self.eos_id, int) or self.eos_id < 0:
            raise ValueError(f"PageTokens.eos_id must be a token id, got {self.eos_id!r}")
        if self.eos_id in ids:
            raise ValueError(f"PageTokens.eos_id ({self.eos_id}) must not be a candidate index token")
        if self.pad_id is not None and (self.pad_id in ids or self.pad_id < 0):
            raise ValueError(f"PageTokens.pad_id ({self.pad_id}) must be a token id that is not a candidate index token")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "PageTokens":
        """The ids rollout uses: ``model.max_candidates`` index tokens, the tokenizer's EOS and pad."""
        if tokenizer.eos_token_id is None:
            raise ValueError("PageTokens.from_tokenizer: the tokenizer has no EOS token, so no page can end")
        ids = candidate_token_ids(tokenizer, settings_of(tokenizer).max_candidates)
        return cls(tuple(ids), int(tokenizer.eos_token_id), tokenizer.pad_token_id)

    @classmethod
    def from_config(cls, config: Any) -> Optional["PageTokens"]:
        """From a policy config that stores its index ids (candidate-pointer policies), else None."""
        ids = getattr(config, INDEX_IDS, None)
        eos = getattr(config, "eos_token_id", None)
        if not ids or isinstance(eos, bool) or not isinstance(eos, int):
            return None
        pad = getattr(config, "pad_token_id", None)
        return cls(tuple(ids), eos, pad if isinstance(pad, int) and not isinstance(pad, bool) else None)

    @property
    def num_candidates(self) -> int:
        """``N_max``: how many index tokens exist."""
        return len(self.candidate_ids)

    @property
    def pad(self) -> int:
        return self.eos_id if self.pad_id is None else self.pad_id

    @property
    def columns(self) -> Tuple[int, ...]:
        """Token id of each computed column: the index tokens, EOS, then padding when it is not EOS."""
        extra = () if self.pad == self.eos_id else (self.pad,)
        return self.candidate_ids + (self.eos_id,) + extra


@dataclass(frozen=True)
class ResponseConstraint:
    """Which page each row of a batch must lay out: ``N_b`` candidates, ``K_b`` items (both ``[B]``).

    With :class:`PageTokens` this is everything :class:`PageConstraintProcessor`
    knows, so the trainer scores a response under the distribution rollout drew
    it from.
    """

    num_candidates: IntsLike
    page_sizes: IntsLike

    @classmethod
    def from_requests(cls, requests: Sequence[Any]) -> "ResponseConstraint":
        """The constraint of a batch of :class:`pagerl.data.types.Request` (one row each, in order)."""
        return cls([len(r.candidates) for r in requests], [int(r.page_size) for r in requests])

    def tensors(self, batch: int, max_candidates: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(n, k)`` as long tensors on ``device``, checked against the batch size and ``N_max``."""
        n = torch.as_tensor(self.num_candidates, dtype=torch.long, device=device)
        k = torch.as_tensor(self.page_sizes, dtype=torch.long, device=device)
        if n.shape != (batch,):
            raise ValueError(f"constraint.num_candidates has shape {tuple(n.shape)}, expected ({batch},): one per row")
        check_page_shapes(n, k, max_candidates, where="constraint.")
        return n, k


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def nucleus_logprobs(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Log-probabilities of the top-``top_p`` nucleus of ``logp`` (last dim), renormalised.

    The nucleus is the smallest set of most likely tokens whose probability
    reaches ``top_p`` (the most likely token is always in it); every other
    token gets ``-inf``. Ties are ordered by token id (a stable sort), so the
    nucleus is a function of the logprobs alone and a teacher-forced pass
    finds the same one as the sampling pass did. ``top_p >= 1`` returns
    ``logp`` unchanged.
    """
    if top_p >= 1.0:
        return logp
    ranked, order = torch.sort(logp, dim=-1, descending=True, stable=True)
    probs = ranked.exp()
    above = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked before each one
    drop = torch.zeros_like(above, dtype=torch.bool).scatter(-1, order, above >= top_p)
    return torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)


def constrained_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    response_ids: torch.Tensor,
    in_response: torch.Tensor,
    tokens: PageTokens,
    constraint: ResponseConstraint,
    *,
    pointer_scores: Optional[torch.Tensor] = None,
    logit_multiplier: float = 1.0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    return_entropy: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Logprobs (and entropies) of ``targets`` under the constrained, tempered policy.

    With ``top_p < 1`` the distribution is the nucleus of the constrained one,
    renormalised (:func:`nucleus_logprobs`, the function rollout samples
    with): its allowed set lies within the page columns, so the nucleus over
    them is the nucleus over the vocabulary.

    Args:
        hidden: ``[B, T, H]``; ``hidden[:, t]`` predicts ``targets[:, t]``.
        weight: ``[V, H]`` LM-head weight (same dtype as ``hidden``).
        targets: ``[B, T]`` token ids, ``-100`` where nothing is scored.
        response_ids: ``[B, T]`` the tokens actually emitted at each step
            (the inputs shifted by one), from which the constraint state is
            built; unlike ``targets`` they are never ``-100``.
        in_response: ``[B, T]`` bool, step t belongs to the response (prompt
            steps count for nothing in the state and must not be scored).
        tokens: the page vocabulary (:class:`PageTokens`).
        constraint: ``N_b`` and ``K_b`` per row (:class:`ResponseConstraint`).
        pointer_scores: ``[B, T, N_max]`` candidate-pointer scores added to the
            index-token logits (None for a policy without the pointer).
        logit_multiplier: the model's logit scaling (applied before masking).
        temperature: the sampling temperature the logits are divided by.
        top_p: the sampling nucleus (1.0: the whole constrained distribution).
        return_entropy: also return each scored position's entropy.

    Returns:
        ``logprobs [B, T]`` (float32; float64 for float64 inputs), or
        ``(logprobs, entropy)``; 0 where ``targets`` is -100, with no gradient.

    Raises:
        ValueError: on mismatched shapes, a bad temperature or constraint, a
            target scored outside the response, a target that is not a page
            token, or a target the constraint forbids (an invalid page, whose
            constrained probability is 0).
    """
    temperature = _check_temperature(temperature)
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, H], got {tuple(hidden.shape)}")
    batch, steps, width = hidden.shape
    for name, value in (("targets", targets), ("response_ids", response_ids), ("in_response", in_response)):
        if tuple(value.shape) != (batch, steps):
            raise ValueError(f"{name} must be [B, T] = {(batch, steps)} like hidden's leading dims, got {tuple(value.shape)}")
    if weight.dim() != 2 or weight.shape[1] != width or weight.dtype != hidden.dtype:
        raise ValueError(
            f"weight must be [V, {width}] in hidden's dtype {hidden.dtype}, got {tuple(weight.shape)} {weight.dtype}"
        )
    m = tokens.num_candidates
    if pointer_scores is not None and tuple(pointer_scores.shape) != (batch, steps, m):
        raise ValueError(f"pointer_scores must be [B, T, N_max] = {(batch, steps, m)}, got {tuple(pointer_scores.shape)}")
    columns = tokens.columns
    if max(columns) >= weight.shape[0]:
        raise ValueError(f"PageTokens hold token id {max(columns)}, outside the head's vocabulary of {weight.shape[0]}")
    device = hidden.device
    n, k = constraint.tensors(batch, m, device)
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32

    scored = targets != IGNORE_INDEX
    if bool((scored & ~in_response).any()):
        raise ValueError("a target is scored outside the response (before prompt_end): the constraint only "
                         "defines response tokens; put -100 on the prompt")
    keep = scored.reshape(-1).nonzero().squeeze(1)
    rows = keep // steps

    columns_t = torch.tensor(columns, dtype=torch.long, device=device)
    target_v = targets.reshape(-1).index_select(0, keep)
    match = target_v[:, None] == columns_t[None, :]  # [n_scored, S]
    if not bool(match.any(dim=1).all()):
        bad = int(target_v[~match.any(dim=1)][0])
        raise ValueError(f"target token {bad} is not a page token (an index token, EOS or padding): the "
                         "constrained policy gives it probability 0")
    local_target = match.long().argmax(dim=1)

    cand_t = torch.as_tensor(tokens.candidate_ids, dtype=torch.long, device=device)
    used, count, ended = response_state(response_ids, cand_t, tokens.eos_id, in_response)
    used_v = used.reshape(-1, m).index_select(0, keep)
    count_v = count.reshape(-1).index_select(0, keep)
    ended_v = ended.reshape(-1).index_select(0, keep)

    h_v = hidden.reshape(-1, width).index_select(0, keep)
    logits = F.linear(h_v, weight.index_select(0, columns_t))  # model dtype, like the LM head's
    if pointer_scores is not None:
        s_v = pointer_scores.reshape(-1, m).index_select(0, keep).to(logits.dtype)
        logits = logits + F.pad(s_v, (0, len(columns) - m))
    logits = logits.to(out_dtype) * logit_multiplier
    local_cand = torch.arange(m, device=device)
    local_pad = m if tokens.pad == tokens.eos_id else m + 1
    masked = _mask_scores(logits, local_cand, used_v, count_v, ended_v, n.index_select(0, rows),
                          k.index_select(0, rows), m, local_pad)
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logp_all = nucleus_logprobs(torch.log_softmax(masked / temperature, dim=-1), float(top_p))
    logp_v = logp_all.gather(1, local_target[:, None]).squeeze(1)
    if not bool(torch.isfinite(logp_v).all()):
        where = int(keep[~torch.isfinite(logp_v)][0])
        raise ValueError(
            f"the target at row {where // steps}, step {where % steps} is forbidden by the constraint (a repeated "
            "or out-of-range candidate, EOS before K items or an item after them): not a valid page"
            + (f", or outside the top_p={top_p} nucleus" if top_p < 1 else "")
        )

    def scatter_back(values: torch.Tensor) -> torch.Tensor:
        return values.new_zeros(batch * steps).index_copy(0, keep, values).reshape(batch, steps)

    logp = scatter_back(logp_v)
    if not return_entropy:
        return logp
    # Forbidden columns have p = 0 and log p = -inf: take 0 * 0 there, so neither the value nor its
    # gradient sees 0 * inf.
    allowed = torch.isfinite(logp_all)
    entropy_v = -(logp_all.exp() * logp_all.masked_fill(~allowed, 0.0)).sum(dim=-1)
    return logp, scatter_back(entropy_v)


__all__ = ["PageTokens", "ResponseConstraint", "constrained_linear_logprobs", "nucleus_logprobs"]
