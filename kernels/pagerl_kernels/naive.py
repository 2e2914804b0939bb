"""The naive path: full logits, log_softmax, gather. The baseline the fused paths replace.

It materializes the whole ``[tokens, vocabulary]`` logits in the input dtype,
exactly as ``model(...).logits.log_softmax(-1).gather(...)`` does, and lets
autograd keep what it needs (several more tensors of that size). It is
registered as ``impl="naive"`` because it is the reference the tests and the
benchmark compare against, and a debugging aid; ``impl="auto"`` never picks it.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .registry import register_impl


def naive_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    inv_temperature: float,
    return_entropy: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Logprobs (and entropy) of ``targets`` computed in the input dtype with full logits.

    Everything is done in ``hidden.dtype`` (the naive same-dtype error the
    fused paths are held against); results are returned as float32 (float64
    for float64 inputs) to match the fused paths' output type.
    """
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logits = hidden @ weight.t()
    if inv_temperature != 1.0:
        logits = logits * inv_temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1).to(out_dtype)
    if not return_entropy:
        return logp, None
    entropy = -(logp_all.exp() * logp_all).sum(-1).to(out_dtype)
    return logp, entropy


register_impl(
    "naive",
    summary="full logits -> log_softmax -> gather in the input dtype (reference; materializes [N, V])",
)(naive_linear_logprobs)
