"""Deterministic, resumable batching of tokenized examples across data-parallel ranks.

The order of examples in an epoch is a permutation drawn from ``(seed,
epoch)`` alone, and every rank takes a disjoint slice of it. So the batch a
rank sees at optimizer step ``s`` is a pure function of ``s``: a resumed run
sees exactly the batches the uninterrupted run would have seen, from any step,
including an epoch boundary (a classic resume bug elsewhere trains zero steps
in the epoch it resumes into). The tail of an epoch that cannot fill one full
global batch is dropped, so all ranks take the same number of steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Sequence

import numpy as np
import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Schedule:
    num_examples: int
    micro_batch_size: int
    grad_accum_steps: int
    world_size: int
    epochs: int
    max_steps: int = 0

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch

    @property
    def total_steps(self) -> int:
        full = self.steps_per_epoch * self.epochs
        return min(full, self.max_steps) if self.max_steps > 0 else full

    def check(self) -> None:
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{self.num_examples} training examples cannot fill one global batch of {self.global_batch} "
                "(sft.micro_batch_size x sft.grad_accum_steps x distributed.num_workers): lower those or add data"
            )


def micro_batches(schedule: Schedule, seed: int, rank: int, step: int) -> List[np.ndarray]:
    """Example indices of this rank's micro-batches for optimizer step ``step`` (0-based)."""
    epoch, within = divmod(step, schedule.steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(schedule.num_examples)
    start = within * schedule.global_batch
    step_indices = order[start : start + schedule.global_batch]
    mine = step_indices[rank :: schedule.world_size]
    mb = schedule.micro_batch_size
    return [mine[i * mb : (i + 1) * mb] for i in range(schedule.grad_accum_steps)]


def collate(examples: Sequence[Dict[str, object]], pad_id: int) -> Dict[str, torch.Tensor]:
    """Right-pad a list of ``{input_ids, labels, weight}`` into tensors.

    Examples that carry their page's shape (``num_candidates`` and
    ``page_size``, as :func:`pagerl.stages.sft.encode_examples` writes) give the
    batch ``num_candidates`` and ``page_sizes`` ``[B]`` too, for the
    constrained loss; they are left out unless every example has both.
    """
    width = max(len(e["input_ids"]) for e in examples)  # type: ignore[arg-type]
    n = len(examples)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids, lab = e["input_ids"], e["labels"]
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)  # type: ignore[arg-type]
        labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)  # type: ignore[arg-type]
        attention[i, : len(ids)] = 1  # type: ignore[arg-type]
    weights = torch.tensor([float(e.get("weight", 1.0)) for e in examples], dtype=torch.float32)  # type: ignore[union-attr]
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention, "weight": weights}
    if all("num_candidates" in e and "page_size" in e for e in examples):
        batch["num_candidates"] = torch.tensor([int(e["num_candidates"]) for e in examples], dtype=torch.long)  # type: ignore[call-overload]
        batch["page_sizes"] = torch.tensor([int(e["page_size"]) for e in examples], dtype=torch.long)  # type: ignore[call-overload]
    return batch


def iterate_steps(schedule: Schedule, start_step: int) -> Iterator[int]:
    return iter(range(start_step, schedule.total_steps))


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio * base_lr`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
