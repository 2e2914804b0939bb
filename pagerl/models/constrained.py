"""Constrained decoding: a generated page can only be a valid page (docs/method.md, "Constrained decoding").

At each step every sequence of the batch may emit only

- an index token ``<ci>`` with ``i < N_b`` (its own number of candidates) that
  it has not emitted yet in this response, while fewer than ``K_b`` (its own
  page size) items were chosen;
- EOS, once ``K_b`` items were chosen;
- padding, after EOS.

Everything else gets ``-inf``. A forced token (EOS after the K-th item,
padding after EOS) gets logit 0: being the only finite entry its probability
is 1 whatever its value, and 0 keeps the softmax finite even when the model's
own logit was ``-inf``. The masks are built with tensor ops over the batch and
the ``N_max`` candidate columns; nothing loops over the vocabulary or the batch.

It is a ``transformers.LogitsProcessor``, so it plugs into ``model.generate``
as well as into pagerl's own decoding loop (:mod:`pagerl.models.generate`).
:func:`constrain_response_logits` applies the same rule to a whole
teacher-forced response in one pass, for a trainer that must score responses
under the distribution they were sampled from; :func:`response_state` is the
state it masks with, shared with the trainer's constrained logprobs
(:mod:`pagerl.models.constrained_logprobs`), which apply the same
:func:`_mask_scores` to the few columns the constraint can allow.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from transformers import LogitsProcessor


class PageConstraintProcessor(LogitsProcessor):
    """Masks logits so that each response is a page of distinct candidates, then EOS.

    Args:
        candidate_token_ids: ids of ``<c0>`` ... ``<c{N_max-1}>``.
        num_candidates: ``N_b`` per sequence, shape ``(B,)``.
        page_sizes: ``K_b`` per sequence, shape ``(B,)``.
        response_start: index in ``input_ids`` where each response starts: an
            int (left-padded batches all start at the prompt width) or ``(B,)``.
        eos_token_id, pad_token_id: the end and padding tokens (pad may be
            ``None``; EOS is then repeated after the end).
    """

    def __init__(
        self,
        candidate_token_ids: Sequence[int],
        num_candidates: Union[Sequence[int], torch.Tensor],
        page_sizes: Union[Sequence[int], torch.Tensor],
        response_start: Union[int, Sequence[int], torch.Tensor],
        eos_token_id: int,
        pad_token_id: Optional[int] = None,
    ) -> None:
        self.candidate_ids = torch.as_tensor(list(candidate_token_ids), dtype=torch.long)
        self.num_candidates = torch.as_tensor(num_candidates, dtype=torch.long)
        self.page_sizes = torch.as_tensor(page_sizes, dtype=torch.long)
        batch = self.num_candidates.shape[0]
        self.response_start = torch.as_tensor(response_start, dtype=torch.long).expand(batch).clone()
        check_page_shapes(self.num_candidates, self.page_sizes, len(self.candidate_ids))
        if eos_token_id in set(self.candidate_ids.tolist()):
            raise ValueError("EOS must not be a candidate index token")
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = self.eos_token_id if pad_token_id is None else int(pad_token_id)

    def _state(self, input_ids: torch.Tensor):
        """Per sequence: which candidates were used, how many items, whether EOS was emitted."""
        device = input_ids.device
        start = self.response_start.to(device)
        first = int(start.min())
        tail = input_ids[:, first:]  # only the responses (and, for ragged starts, some prompt)
        positions = torch.arange(first, input_ids.shape[1], device=device)
        in_response = positions[None, :] >= start[:, None]  # (B, T)
        is_slot = tail[:, :, None] == self.candidate_ids.to(device)[None, None, :]  # (B, T, N_max)
        is_slot &= in_response[:, :, None]
        used = is_slot.any(dim=1)  # (B, N_max)
        count = is_slot.any(dim=2).sum(dim=1)  # (B,)
        ended = ((tail == self.eos_token_id) & in_response).any(dim=1)  # (B,)
        return used, count, ended

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        used, count, ended = self._state(input_ids)
        device = scores.device
        return _mask_scores(
            scores,
            self.candidate_ids.to(device),
            used,
            count,
            ended,
            self.num_candidates.to(device),
            self.page_sizes.to(device),
            self.eos_token_id,
            self.pad_token_id,
        )


def check_page_shapes(
    num_candidates: torch.Tensor, page_sizes: torch.Tensor, max_candidates: int, where: str = ""
) -> None:
    """Refuse ``(N_b, K_b)`` that admit no valid page: the rule needs ``1 <= K_b <= N_b <= N_max``.

    ``num_candidates`` and ``page_sizes`` are ``(B,)`` integer tensors;
    ``where`` prefixes the argument names in the messages (e.g. ``"constraint."``).
    """
    if num_candidates.dim() != 1:
        raise ValueError(f"{where}num_candidates must have shape (B,), got {tuple(num_candidates.shape)}")
    batch = num_candidates.shape[0]
    if page_sizes.shape != (batch,):
        raise ValueError(f"{where}page_sizes has shape {tuple(page_sizes.shape)}, expected ({batch},)")
    if bool((num_candidates > max_candidates).any()):
        raise ValueError(
            f"{where}num_candidates: a sequence has more candidates ({int(num_candidates.max())}) than there "
            f"are candidate tokens ({max_candidates}, model.max_candidates)"
        )
    if bool((page_sizes > num_candidates).any() or (page_sizes < 1).any()):
        raise ValueError(f"{where}page_sizes: every page size must be between 1 and its number of candidates")


def _mask_scores(
    scores: torch.Tensor,
    cand: torch.Tensor,
    used: torch.Tensor,
    count: torch.Tensor,
    ended: torch.Tensor,
    n: torch.Tensor,
    k: torch.Tensor,
    eos: int,
    pad: int,
) -> torch.Tensor:
    """The masking rule, for scores ``(..., V)`` and a state with matching leading dims.

    ``used`` is ``(..., N_max)``; ``count``, ``ended``, ``n``, ``k`` are ``(...)``.
    ``cand``, ``eos`` and ``pad`` are column indices of ``scores``: token ids
    for full-vocabulary logits, or positions in a smaller set of columns that
    holds only the index tokens, EOS and padding (the constrained trainer path,
    :mod:`pagerl.models.constrained_logprobs`, which never builds full logits).
    The columns outside ``cand``, ``eos`` and ``pad`` all become ``-inf``.
    """
    device = scores.device
    slot_index = torch.arange(len(cand), device=device)
    choosing = (count < k) & ~ended
    allowed = (~used) & (slot_index < n[..., None]) & choosing[..., None]  # (..., N_max)
    must_end = (count >= k) & ~ended

    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=device)
    zero = torch.zeros((), dtype=scores.dtype, device=device)
    out = torch.full_like(scores, float("-inf"))
    out[..., cand] = torch.where(allowed, scores[..., cand], neg_inf)
    out[..., eos] = torch.where(must_end, zero, neg_inf)
    # After EOS only padding (== EOS when there is no pad token).
    out[..., pad] = torch.where(ended, zero, out[..., pad])
    return out


def constrain_response_logits(
    logits: torch.Tensor,
    response_ids: torch.Tensor,
    candidate_token_ids: Sequence[int],
    num_candidates: Union[Sequence[int], torch.Tensor],
    page_sizes: Union[Sequence[int], torch.Tensor],
    eos_token_id: int,
    pad_token_id: Optional[int] = None,
) -> torch.Tensor:
    """The constraint applied to a whole teacher-forced response at once.

    ``logits[:, t]`` are the logits that predict ``response_ids[:, t]`` (shape
    ``(B, T, V)`` and ``(B, T)``). The result equals what
    :class:`PageConstraintProcessor` gives step by step, so a trainer can score
    rollout responses under the same constrained distribution they were
    sampled from (rollout and trainer logprobs then agree).
    """
    device = logits.device
    cand = torch.as_tensor(list(candidate_token_ids), dtype=torch.long, device=device)
    pad = eos_token_id if pad_token_id is None else pad_token_id
    n = torch.as_tensor(num_candidates, dtype=torch.long, device=device)[:, None]
    k = torch.as_tensor(page_sizes, dtype=torch.long, device=device)[:, None]
    used, count, ended = response_state(response_ids, cand, int(eos_token_id))
    return _mask_scores(logits, cand, used, count, ended, n, k, int(eos_token_id), int(pad))


def response_state(
    response_ids: torch.Tensor,
    candidate_ids: torch.Tensor,
    eos_token_id: int,
    in_response: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(used (B, T, N_max), count (B, T), ended (B, T))``: the constraint state *before* each step.

    ``response_ids[:, t]`` is the token emitted at step t (``(B, T)``); the
    state at t counts the tokens of steps ``< t`` only (exclusive cumulative
    sums over time), which is what :class:`PageConstraintProcessor` sees when
    it masks step t. ``in_response`` (``(B, T)`` bool) marks the steps that
    belong to the response; the others (prompt tokens of a row whose response
    starts later than column 0) count for nothing. None: every step does.
    """
    is_slot = response_ids[:, :, None] == candidate_ids[None, None, :]  # (B, T, N_max)
    is_eos = response_ids == eos_token_id
    if in_response is not None:
        is_slot = is_slot & in_response[:, :, None]
        is_eos = is_eos & in_response
    used = (is_slot.long().cumsum(dim=1) - is_slot.long()) > 0
    step_slot = is_slot.any(dim=2).long()
    count = step_slot.cumsum(dim=1) - step_slot
    step_eos = is_eos.long()
    ended = (step_eos.cumsum(dim=1) - step_eos) > 0
    return used, count, ended
