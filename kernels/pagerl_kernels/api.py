"""The public entry point: :func:`fused_linear_logprobs`.

It owns everything the implementations share, so each of them sees the same
simple problem: validation with clear errors, flattening of leading
dimensions, and removal of ignored tokens before any logits are computed
(prompt and padding positions are often most of a batch, and a token that is
never computed can neither produce output nor receive gradient). Outputs are
scattered back to the input's shape with zeros at ignored positions.
"""

from __future__ import annotations

import math
from typing import Tuple, Union

import torch

from .registry import resolve_impl

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_inputs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float) -> None:
    where = "fused_linear_logprobs"
    if not isinstance(hidden, torch.Tensor) or not isinstance(weight, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise ValueError(f"{where}: hidden, weight and targets must be torch tensors")
    if hidden.dim() < 1:
        raise ValueError(f"{where}: hidden must have shape [..., H], got a scalar")
    if weight.dim() != 2:
        raise ValueError(f"{where}: weight must have shape [V, H], got {tuple(weight.shape)}")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{where}: hidden size mismatch: hidden is {tuple(hidden.shape)} (H={hidden.shape[-1]}) "
            f"but weight is {tuple(weight.shape)} (H={weight.shape[1]})"
        )
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"{where}: targets must have hidden's leading shape {tuple(hidden.shape[:-1])}, got {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"{where}: targets must be an integer tensor of token ids, got dtype {targets.dtype}")
    if hidden.dtype not in _FLOAT_DTYPES or weight.dtype != hidden.dtype:
        raise ValueError(
            f"{where}: hidden and weight must share one float dtype among fp16/bf16/fp32/fp64, "
            f"got hidden {hidden.dtype} and weight {weight.dtype}"
        )
    if hidden.device != weight.device or targets.device != hidden.device:
        raise ValueError(
            f"{where}: hidden ({hidden.device}), weight ({weight.device}) and targets ({targets.device}) "
            "must be on one device"
        )
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"{where}: temperature must be a finite number > 0, got {temperature!r}")


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    impl: str = "auto",
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Log-probabilities of ``targets`` under ``softmax(hidden @ weight.T / temperature)``, without full logits.

    Args:
        hidden: ``[..., H]`` last hidden states (fp16, bf16, fp32 or fp64).
        weight: ``[V, H]`` LM-head weight, same dtype and device as ``hidden``.
            If it does not require grad (a frozen or reference model), no
            weight gradient is computed.
        targets: ``[...]`` integer token ids in ``[0, V)``, or ``ignore_index``.
        temperature: the logits are divided by it (> 0), as in sampling.
        ignore_index: targets equal to it give logprob 0 and entropy 0 and
            send no gradient to their hidden state.
        return_entropy: also return the entropy of each position's full
            distribution (needed for an entropy bonus).
        impl: ``"auto"`` (Triton on CUDA tensors when triton is installed,
            else the chunked PyTorch path), or a registered name: ``"torch"``,
            ``"triton"`` (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``),
            ``"naive"`` (full logits; the reference).

    Returns:
        ``logprobs`` of shape ``targets.shape``, or ``(logprobs, entropy)``
        if ``return_entropy``. float32 (float64 for float64 inputs) whatever the
        input dtype; both differentiable w.r.t. ``hidden`` and ``weight``.

    Raises:
        ValueError: on shape/dtype/device mismatch, a target outside
            ``[0, V)`` that is not ``ignore_index``, a bad temperature, an
            unknown impl, or an impl that cannot run on these tensors.
    """
    _check_inputs(hidden, weight, targets, temperature)
    entry = resolve_impl(impl, hidden, weight)
    vocab, width = weight.shape
    lead_shape = tuple(targets.shape)
    flat_h = hidden.reshape(-1, width)
    flat_t = targets.reshape(-1).long()

    valid = flat_t != ignore_index
    bad = valid & ((flat_t < 0) | (flat_t >= vocab))
    if bool(bad.any()):
        pos = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"fused_linear_logprobs: target {int(flat_t[pos])} at flat position {pos} is outside [0, {vocab}) "
            f"and is not ignore_index={ignore_index}"
        )
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    n_total = flat_t.shape[0]
    all_valid = bool(valid.all())
    if all_valid:
        h_valid, t_valid = flat_h, flat_t
    else:
        keep = valid.nonzero().squeeze(1)
        h_valid, t_valid = flat_h.index_select(0, keep), flat_t.index_select(0, keep)

    logp_v, ent_v = entry.fn(h_valid, weight, t_valid, 1.0 / float(temperature), return_entropy)

    def scatter_back(values: torch.Tensor) -> torch.Tensor:
        values = values.to(out_dtype)
        if not all_valid:
            values = values.new_zeros(n_total).index_copy(0, keep, values)
        return values.reshape(lead_shape)

    logp = scatter_back(logp_v)
    if not return_entropy:
        return logp
    assert ent_v is not None
    return logp, scatter_back(ent_v)
