"""Candidate-aware index tokens: the echo and the pointer (our design; the paper gives none).

A page is written as candidate-local index tokens ``<c0>`` ... ``<cN-1>``
(see :mod:`pagerl.tokenization.serialize`). Such a token means nothing by
itself: ``<c3>`` is whatever item the prompt lists third. A pretrained LLM
relates the two with the copy/induction heads it already has; a model that
starts from scratch must discover that lookup by gradient descent, and on
the CPU quickstart a fresh tiny policy did not, in any budget we tried (up
to 3,000 steps, tied or untied embeddings, index tokens after the item text,
a 4-layer model; the held-out loss stayed at "uniform over the 12
candidates" and its pages were no better than random).

Two parameter-free additions make the meaning explicit. Both read the
**content** of candidate j: the mean input embedding of its span in the
prompt (its index token and the words up to the next one; the response
marker that ends every prompt is excluded).

- **Echo** (input side): every index token ``<cj>``, in the prompt and in
  the response, has candidate j's content added to its input embedding, so
  from layer 0 it carries what item it stands for (the reward models use the
  same echo on their slot tokens).
- **Pointer** (output side): the logit of ``<cj>`` at every position gets
  ``h . content_j`` added, h the last hidden state. Choosing a candidate is
  then "make h look like the item you want", the pointer-network form of
  selecting from a set, and the model no longer has to route an identity
  through attention. Measured on quickstart data, single process, same
  schedule: with the pointer a fresh tiny policy's greedy pages beat the
  logging policy within 500-750 steps; without it they stayed at random.

Both are on with ``model.candidate_pointer`` (the default). The policy stays
a plain Hugging Face causal LM with no new weights; its config carries the
three attributes below, so a checkpoint says how it must be run, and every
way PageRL turns it into probabilities (training logprobs through the fused
kernel, :func:`policy_logits`, generation) goes through this module. Other
tools that run the checkpoint as a plain LM see the same weights without the
candidate terms, i.e. a different policy.

Exactness with the fused kernel: the pointer adds a row-specific term to M
columns of the logits. :meth:`CandidatePointer.augment` writes that as one
linear head, ``[h, s] @ [W, P].T`` with ``s`` the M pointer scores and ``P``
the one-hot columns of the index tokens, so the kernel computes the exact
distribution without full logits. The price is one concatenated copy of the
head weight per forward (``V x (H + M)``), which is small next to the
logits it avoids but not free for 150k vocabularies.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
from torch import nn

# Attributes of the policy's config (saved in config.json).
POINTER_FLAG = "pagerl_candidate_pointer"
INDEX_IDS = "pagerl_index_token_ids"
MARKER_LEN = "pagerl_response_marker_len"


def candidate_spans(input_ids: torch.Tensor, index_token_ids: torch.Tensor, prompt_end: torch.Tensor,
                    marker_len: int) -> torch.Tensor:
    """``[N, L]``: the candidate each prompt token describes, -1 for the others.

    Candidates are listed in order, each as its index token then its words,
    so a token belongs to candidate j when j+1 index tokens precede it
    (itself included). Only tokens before ``prompt_end[n] - marker_len`` (the
    response marker) count; padding on either side is never an index token
    and falls outside.
    """
    n, length = input_ids.shape
    positions = torch.arange(length, device=input_ids.device)[None, :]
    in_list = positions < (prompt_end.reshape(n, 1) - int(marker_len))
    is_index = torch.isin(input_ids, index_token_ids) & in_list
    span = torch.cumsum(is_index.long(), dim=1) - 1
    return torch.where(in_list, span, torch.full_like(span, -1))


def candidate_contents(embeds: torch.Tensor, span: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """``[N, M, H]``: mean of ``embeds`` over each candidate's span (zeros for absent candidates)."""
    slots = torch.arange(num_candidates, device=span.device)
    member = (span[:, None, :] == slots[None, :, None]).to(embeds.dtype)  # [N, M, L]
    return member @ embeds / member.sum(dim=-1, keepdim=True).clamp_min(1.0)


def echo_index_tokens(input_ids: torch.Tensor, embeds: torch.Tensor, contents: torch.Tensor,
                      candidate_of_token: torch.Tensor, where: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``embeds`` with candidate j's content added at every ``<cj>`` of ``input_ids`` (where ``where``).

    ``candidate_of_token[t]`` is j for the token id of ``<cj>`` and -1 for
    other ids (ids beyond its length are not index tokens).
    """
    known = input_ids < candidate_of_token.numel()
    slot = candidate_of_token[torch.where(known, input_ids, torch.zeros_like(input_ids))]
    hit = known & (slot >= 0)
    if where is not None:
        hit = hit & where
    picked = torch.gather(contents, 1, slot.clamp_min(0)[..., None].expand(*slot.shape, contents.shape[-1]))
    return embeds + picked * hit[..., None].to(embeds.dtype)


def enable_pointer(config: Any, index_token_ids: Sequence[int], marker_len: int) -> None:
    """Mark a policy config as run with the echo and the pointer (stored in config.json)."""
    setattr(config, POINTER_FLAG, True)
    setattr(config, INDEX_IDS, [int(t) for t in index_token_ids])
    setattr(config, MARKER_LEN, int(marker_len))


class CandidatePointer(nn.Module):
    """The echo and the pointer of one policy, built from its config (see the module docstring)."""

    def __init__(self, index_token_ids: Sequence[int], marker_len: int) -> None:
        super().__init__()
        ids = torch.as_tensor([int(t) for t in index_token_ids], dtype=torch.long)
        if ids.numel() == 0:
            raise ValueError(f"config.{INDEX_IDS}: the candidate pointer needs the index token ids")
        table = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
        table[ids] = torch.arange(ids.numel())
        self.marker_len = int(marker_len)
        self.register_buffer("index_ids", ids, persistent=False)
        self.register_buffer("candidate_of_token", table, persistent=False)

    @classmethod
    def of(cls, model: nn.Module) -> Optional["CandidatePointer"]:
        """The pointer a policy's config asks for, or None for a plain causal LM."""
        config = getattr(model, "config", None)
        if not getattr(config, POINTER_FLAG, False):
            return None
        pointer = cls(getattr(config, INDEX_IDS, ()), getattr(config, MARKER_LEN, 0))
        try:
            device = model.get_input_embeddings().weight.device
        except AttributeError:
            device = torch.device("cpu")
        return pointer.to(device)

    @property
    def num_candidates(self) -> int:
        return int(self.index_ids.numel())

    def prompt_inputs(self, model: nn.Module, input_ids: torch.Tensor,
                      prompt_end: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(inputs_embeds [N, L, H], contents [N, M, H])`` of sequences whose prompts end at ``prompt_end``.

        The embedding module is called as a module, so ZeRO-3 gathers its weight.
        """
        embeds = model.get_input_embeddings()(input_ids)
        contents = self.contents(input_ids, embeds, prompt_end)
        return self.echo(input_ids, embeds, contents), contents

    def contents(self, input_ids: torch.Tensor, embeds: torch.Tensor, prompt_end: torch.Tensor) -> torch.Tensor:
        """``[N, M, H]`` content of each candidate of prompts ending at ``prompt_end``."""
        span = candidate_spans(input_ids, self.index_ids, prompt_end, self.marker_len)
        return candidate_contents(embeds, span, self.num_candidates)

    def echo(self, input_ids: torch.Tensor, embeds: torch.Tensor, contents: torch.Tensor,
             where: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``embeds`` with the contents added at the index tokens (only where ``where``, if given)."""
        return echo_index_tokens(input_ids, embeds, contents, self.candidate_of_token, where)

    def step_inputs(self, model: nn.Module, input_ids: torch.Tensor, contents: torch.Tensor) -> torch.Tensor:
        """Input embeddings of response tokens (decoding), echoed with the prompt's contents."""
        return self.echo(input_ids, model.get_input_embeddings()(input_ids), contents)

    @staticmethod
    def scores(hidden: torch.Tensor, contents: torch.Tensor) -> torch.Tensor:
        """``[N, T, M]`` pointer scores ``h . content_j`` (zero for absent candidates)."""
        return hidden @ contents.transpose(1, 2).to(hidden.dtype)

    def add_to_logits(self, logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Explicit logits ``[N, T, V]`` with the pointer scores added on the index-token columns."""
        return logits.index_add(-1, self.index_ids, scores.to(logits.dtype))

    def augment(self, hidden: torch.Tensor, weight: torch.Tensor,
                scores: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(hidden', weight')`` with ``hidden' @ weight'.T == hidden @ weight.T + pointer``, exactly.

        ``weight'`` is ``[W, P]``: P ``[V, M]`` has a 1 at (id of ``<cj>``, j)
        and zeros elsewhere, so column block P picks up score j only on the
        logit of ``<cj>``. Gradients reach ``hidden``, ``weight`` and, through
        the scores, the contents.
        """
        onehot = torch.zeros(weight.shape[0], self.num_candidates, dtype=weight.dtype, device=weight.device)
        onehot[self.index_ids, torch.arange(self.num_candidates, device=weight.device)] = 1
        return torch.cat([hidden, scores.to(hidden.dtype)], dim=-1), torch.cat([weight, onehot], dim=1)


def prompt_end_from_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``[N]`` position of each row's first scored token: where its prompt ends.

    A row without scored tokens gets its full length (its whole sequence is
    context)."""
    scored = labels != ignore_index
    length = labels.shape[1]
    first = torch.where(scored, torch.arange(length, device=labels.device)[None, :],
                        torch.full_like(labels, length))
    return first.min(dim=1).values
