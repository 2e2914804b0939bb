"""One RL step's experience as tensors, and the two frames they live in.

Two frames, and why both:

- **sequence frame** ``[B, L]``: prompt then response, right-padded, what a
  model's forward pass takes. A logprob column ``j`` of
  :class:`~pagerl.models.logprobs.CausalLMLogprobs` scores the token at
  ``j + 1`` from the hidden state at ``j``.
- **response frame** ``[B, T]``, T = max K + 1: response token ``t`` (slot t
  for t < K, EOS at t = K) of every page in column ``t``. Rewards, KL,
  advantages and losses live here, so position t *is* slot t, which is what
  per-slot credit needs. The response token at sequence position
  ``prompt_end + t`` is scored by logprob column ``prompt_end + t - 1``, the
  hidden state of the state *before* the action: the critic's value of
  response token t is read there too.

:func:`pack` builds the sequence frame of a :class:`~pagerl.rl.roles.rollout.RolloutBatch`;
:func:`to_response_frame` moves per-column values into the response frame;
:func:`split` cuts a batch into equal shards for the trainer ranks.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch

IGNORE_INDEX = -100
Batch = Dict[str, torch.Tensor]


def pack(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], num_candidates: Sequence[int],
         page_sizes: Sequence[int], pad_id: int) -> Batch:
    """The sequence-frame batch of (prompt, response) pairs, right-padded.

    Keys: ``input_ids``, ``attention_mask``, ``labels`` (``-100`` except on
    response tokens) ``[B, L]``; ``prompt_end``, ``response_len``,
    ``num_candidates``, ``page_sizes`` ``[B]``; ``mask`` ``[B, T]`` (the
    response frame's token mask).
    """
    if not (len(prompt_ids) == len(response_ids) == len(num_candidates) == len(page_sizes)):
        raise ValueError("pack: prompt_ids, response_ids, num_candidates and page_sizes must have one entry per page")
    if any(len(r) == 0 for r in response_ids):
        raise ValueError("pack: every page needs a non-empty response")
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    width, batch = max(lengths), len(prompt_ids)
    t_max = max(len(r) for r in response_ids)
    ids = torch.full((batch, width), int(pad_id), dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    mask = torch.zeros((batch, t_max), dtype=torch.bool)
    for b, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        p, r = len(prompt), len(response)
        ids[b, :p] = torch.as_tensor(list(prompt), dtype=torch.long)
        ids[b, p:p + r] = torch.as_tensor(list(response), dtype=torch.long)
        labels[b, p:p + r] = ids[b, p:p + r]
        attention[b, :p + r] = 1
        mask[b, :r] = True
    return {
        "input_ids": ids, "attention_mask": attention, "labels": labels, "mask": mask,
        "prompt_end": torch.as_tensor([len(p) for p in prompt_ids], dtype=torch.long),
        "response_len": torch.as_tensor([len(r) for r in response_ids], dtype=torch.long),
        "num_candidates": torch.as_tensor(list(num_candidates), dtype=torch.long),
        "page_sizes": torch.as_tensor(list(page_sizes), dtype=torch.long),
    }


def response_columns(prompt_end: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, T]`` logprob column that scores response token t: ``prompt_end - 1 + t``."""
    t = torch.arange(width, device=prompt_end.device)
    return prompt_end[:, None] - 1 + t[None, :]


def to_response_frame(columns: torch.Tensor, prompt_end: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Values per logprob column ``[B, L-1]`` (or per hidden state ``[B, L]``) -> response frame ``[B, T]``.

    Positions outside ``mask`` are 0.
    """
    index = response_columns(prompt_end.to(columns.device), mask.shape[1])
    index = index.clamp(0, columns.shape[1] - 1)
    out = columns.gather(1, index)
    return torch.where(mask.to(out.device), out, torch.zeros((), dtype=out.dtype, device=out.device))


def ragged_to_frame(rows: Sequence[Sequence[float]], width: int) -> torch.Tensor:
    """Per-page lists of per-token numbers -> ``[B, width]`` float32 (0 beyond each list)."""
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for b, row in enumerate(rows):
        out[b, : len(row)] = torch.as_tensor(list(row), dtype=torch.float32)
    return out


def frame_to_rows(values: torch.Tensor, mask: torch.Tensor) -> List[List[float]]:
    """``[B, T]`` -> per-page lists of the masked entries."""
    return [values[b][mask[b]].tolist() for b in range(values.shape[0])]


def split(batch: Batch, parts: int) -> List[Batch]:
    """``parts`` equal shards along the batch dimension (the size must divide)."""
    size = next(iter(batch.values())).shape[0]
    if size % parts:
        raise ValueError(f"a batch of {size} pages cannot be split evenly over {parts} trainer ranks")
    step = size // parts
    return [{k: v[i * step:(i + 1) * step] for k, v in batch.items()} for i in range(parts)]


def concat(shards: Sequence[Batch]) -> Batch:
    """The inverse of :func:`split` (shards may be of any sizes; keys of the first shard)."""
    out: Batch = {}
    for key in shards[0]:
        values = [s[key] for s in shards]
        width = max(v.shape[1] for v in values) if values[0].dim() == 2 else None
        if width is not None:
            values = [torch.nn.functional.pad(v, (0, width - v.shape[1])) for v in values]
        out[key] = torch.cat(values, dim=0)
    return out


def trim(batch: Batch) -> Batch:
    """Cut sequence-frame padding that no row of this shard needs (shards of a batch differ)."""
    length = int((batch["prompt_end"] + batch["response_len"]).max())
    out = dict(batch)
    for key in ("input_ids", "attention_mask", "labels"):
        if key in out:
            out[key] = out[key][:, :length]
    return out
