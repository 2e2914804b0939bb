"""Name -> implementation registry of the fused linear-logprob computation.

Every implementation computes the same thing on the same already-validated,
already-compacted inputs (see :mod:`pagerl_kernels.api`):

    fn(hidden[M, H], weight[V, H], targets[M] int64, inv_temperature: float,
       return_entropy: bool) -> (logprobs[M], entropy[M] | None)

with every target in ``[0, V)``. The public entry point picks one by name;
a new backend (say a CUDA-graph or a vocabulary-parallel variant) is a new
registered function, not a new branch in the entry point.

Each entry also carries ``unavailable``: a function of the input tensors that
returns ``None`` when the implementation can run on them, or a sentence saying
why it cannot. ``impl="auto"`` walks :data:`AUTO_ORDER` and takes the first
available entry; an explicitly requested impl that is unavailable is an error
carrying that sentence, never a silent fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

ImplFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, bool], Tuple[torch.Tensor, Optional[torch.Tensor]]]
UnavailableFn = Callable[[torch.Tensor, torch.Tensor], Optional[str]]


def _always_available(hidden: torch.Tensor, weight: torch.Tensor) -> Optional[str]:
    return None


@dataclass(frozen=True)
class LogprobImpl:
    """One registered implementation: its name, its function, and when it cannot run."""

    name: str
    fn: ImplFn
    unavailable: UnavailableFn
    # One line for error messages and the benchmark table.
    summary: str


IMPLS: Dict[str, LogprobImpl] = {}

# What ``impl="auto"`` tries, in order. "naive" is registered (it is the
# reference and a baseline) but never chosen automatically: it materializes
# the full [tokens, vocabulary] logits, the very thing this package avoids.
AUTO_ORDER: Tuple[str, ...] = ("triton", "torch")


def register_impl(
    name: str, *, summary: str, unavailable: UnavailableFn = _always_available
) -> Callable[[ImplFn], ImplFn]:
    """Decorator: register ``fn`` under ``name`` (a name may be registered once)."""

    def deco(fn: ImplFn) -> ImplFn:
        if name in IMPLS or name == "auto":
            raise ValueError(f"logprob impl name {name!r} is already taken")
        IMPLS[name] = LogprobImpl(name=name, fn=fn, unavailable=unavailable, summary=summary)
        return fn

    return deco


def resolve_impl(name: str, hidden: torch.Tensor, weight: torch.Tensor) -> LogprobImpl:
    """The implementation to run for ``impl=name`` on these tensors, or a ValueError saying why none."""
    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            entry = IMPLS.get(candidate)
            if entry is None:
                continue
            why = entry.unavailable(hidden, weight)
            if why is None:
                return entry
            reasons.append(f"{candidate}: {why}")
        raise ValueError("fused_linear_logprobs(impl='auto'): no implementation can run: " + "; ".join(reasons))
    entry = IMPLS.get(name)
    if entry is None:
        known = ", ".join(["auto", *sorted(IMPLS)])
        raise ValueError(f"fused_linear_logprobs: unknown impl {name!r}; expected one of: {known}")
    why = entry.unavailable(hidden, weight)
    if why is not None:
        raise ValueError(f"fused_linear_logprobs(impl={name!r}) cannot run here: {why}")
    return entry
