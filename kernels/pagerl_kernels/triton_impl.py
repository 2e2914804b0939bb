"""The ``"triton"`` implementation: an autograd.Function that launches :mod:`pagerl_kernels.triton_kernels`.

Triton is imported on first use, not when ``pagerl_kernels`` is imported, so
the package works without triton and ``TRITON_INTERPRET=1`` (which must be in
the environment before the kernels are defined) can still be set by a test
process before its first call.

Where it runs: CUDA tensors with triton installed; or CPU tensors when
``TRITON_INTERPRET=1`` (Triton's interpreter: numpy, 600-13,000x slower than
PyTorch, for testing kernels at tiny shapes only). The interpreter's bf16
``tl.dot`` is wrong, so bf16 is refused there rather than silently wrong.
fp64 is not supported by these kernels (use ``impl="torch"``).

The backward's per-token coefficients (formula in :mod:`pagerl_kernels.chunked`)
are computed here in fp32 torch ops, so the kernels only evaluate
``p * (c + d q) + a/T [j = y]``; the hidden and weight gradients are
accumulated in fp32 buffers and cast to the input dtype at the end.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from .registry import register_impl

# Targets reaching the kernels are all valid (the entry point drops ignored
# tokens); the kernels still mask this id, which no vocabulary contains.
_KERNEL_IGNORE = -1


@dataclass(frozen=True)
class TritonBlocks:
    """Tile sizes of the kernels (powers of two, each >= 16 for ``tl.dot``)."""

    block_m: int
    block_v: int
    block_k: int
    num_warps: int = 4

    def check(self) -> None:
        for key in ("block_m", "block_v", "block_k"):
            val = getattr(self, key)
            if not isinstance(val, int) or val < 16 or val & (val - 1):
                raise ValueError(f"TritonBlocks.{key} must be a power of two >= 16, got {val!r}")


def default_blocks(dtype: torch.dtype) -> TritonBlocks:
    """GPU defaults. Untuned: this machine has no GPU; tune with benchmarks/bench_logprobs.py on one."""
    if dtype == torch.float32:
        return TritonBlocks(block_m=32, block_v=64, block_k=32, num_warps=4)
    return TritonBlocks(block_m=64, block_v=128, block_k=64, num_warps=8)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable(hidden: torch.Tensor, weight: torch.Tensor) -> Optional[str]:
    """None if the Triton kernels can run on these tensors, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton, or the `gpu` extra)"
    if hidden.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the Triton kernels take fp16/bf16/fp32 inputs, got {hidden.dtype} (use impl='torch')"
    if hidden.is_cuda:
        return None
    if hidden.device.type == "cpu" and _interpreting():
        if hidden.dtype == torch.bfloat16:
            return "Triton's interpreter computes bf16 tl.dot wrongly; bf16 runs on CUDA only"
        return None
    return (
        f"tensors are on {hidden.device}; Triton runs CUDA tensors, or CPU tensors only under "
        "TRITON_INTERPRET=1 set before triton is imported"
    )


_KERNELS: Optional[ModuleType] = None


def _kernels(on_cpu: bool) -> ModuleType:
    global _KERNELS
    if _KERNELS is None:
        from . import triton_kernels

        _KERNELS = triton_kernels
    if on_cpu and type(_KERNELS.fwd_kernel).__name__ != "InterpretedFunction":
        raise RuntimeError(
            "impl='triton' on CPU tensors needs Triton's interpreter, but the kernels were compiled "
            "without it: set TRITON_INTERPRET=1 before triton (and pagerl_kernels.triton_kernels) is imported"
        )
    return _KERNELS


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs must not be rounded to tf32 on tensor cores: the result
    # would be less precise than the naive fp32 path.
    return "ieee" if dtype == torch.float32 else "tf32"


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class TritonLinearLogprobs(torch.autograd.Function):
    """``apply(hidden[M, H], weight[V, H], targets[M], inv_temperature, return_entropy, blocks)``."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temperature, return_entropy, blocks):  # type: ignore[override]
        kernels = _kernels(hidden.device.type == "cpu")
        M, H = hidden.shape
        V = weight.shape[0]
        logp = torch.empty(M, dtype=torch.float32, device=hidden.device)
        row_max = torch.empty(M, dtype=torch.float32, device=hidden.device)
        log_s = torch.empty(M, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(M, dtype=torch.float32, device=hidden.device) if return_entropy else None
        if M > 0:
            kernels.fwd_kernel[(_cdiv(M, blocks.block_m),)](
                hidden, weight, targets, logp, ent if return_entropy else logp, row_max, log_s,
                M, V, H,
                hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
                float(inv_temperature), _KERNEL_IGNORE,
                HAS_ENTROPY=bool(return_entropy),
                BLOCK_M=blocks.block_m, BLOCK_V=blocks.block_v, BLOCK_K=blocks.block_k,
                DOT_PRECISION=_dot_precision(hidden.dtype), num_warps=blocks.num_warps,
            )
        ctx.save_for_backward(hidden, weight, targets, row_max, log_s, ent if ent is not None else log_s.new_empty(0))
        ctx.has_entropy = ent is not None
        ctx.inv_temperature = float(inv_temperature)
        ctx.blocks = blocks
        ctx.set_materialize_grads(False)
        if return_entropy:
            return logp, ent
        return logp

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp, grad_entropy=None):  # type: ignore[override]
        hidden, weight, targets, row_max, log_s, ent = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (grad_logp is None and grad_entropy is None) or not (need_h or need_w):
            return None, None, None, None, None, None
        kernels = _kernels(hidden.device.type == "cpu")
        blocks: TritonBlocks = ctx.blocks
        inv_t = ctx.inv_temperature
        M, H = hidden.shape
        V = weight.shape[0]
        a = grad_logp.float() if grad_logp is not None else torch.zeros(M, dtype=torch.float32, device=hidden.device)
        has_d = grad_entropy is not None
        if has_d:
            b = grad_entropy.float()
            c = (-(a + b * ent) * inv_t).contiguous()
            d = (-b * inv_t).contiguous()
        else:
            c = (-a * inv_t).contiguous()
            d = c  # not read by the kernels
        a_scaled = (a * inv_t).contiguous()
        common = dict(
            HAS_D=has_d, BLOCK_M=blocks.block_m, BLOCK_V=blocks.block_v, BLOCK_K=blocks.block_k,
            DOT_PRECISION=_dot_precision(hidden.dtype), num_warps=blocks.num_warps,
        )
        grad_h = grad_w = None
        if need_h:
            dh = torch.zeros(M, H, dtype=torch.float32, device=hidden.device)
            if M > 0:
                kernels.bwd_dh_kernel[(_cdiv(M, blocks.block_m),)](
                    hidden, weight, targets, row_max, log_s, c, d, a_scaled, dh,
                    M, V, H,
                    hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), dh.stride(0),
                    inv_t, **common,
                )
            grad_h = dh.to(hidden.dtype)
        if need_w:
            dw = torch.zeros(V, H, dtype=torch.float32, device=hidden.device)
            if M > 0:
                kernels.bwd_dw_kernel[(_cdiv(V, blocks.block_v),)](
                    hidden, weight, targets, row_max, log_s, c, d, a_scaled, dw,
                    M, V, H,
                    hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), dw.stride(0),
                    inv_t, **common,
                )
            grad_w = dw.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None


def triton_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    inv_temperature: float,
    return_entropy: bool,
    *,
    blocks: Optional[TritonBlocks] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The registered ``"triton"`` implementation (contract in :mod:`pagerl_kernels.registry`)."""
    why = triton_unavailable(hidden, weight)
    if why is not None:
        raise ValueError(f"triton_linear_logprobs cannot run here: {why}")
    blocks = blocks or default_blocks(hidden.dtype)
    blocks.check()
    out = TritonLinearLogprobs.apply(
        hidden, weight, targets.contiguous(), float(inv_temperature), bool(return_entropy), blocks
    )
    if return_entropy:
        return out[0], out[1]
    return out, None


register_impl(
    "triton",
    summary="Triton kernels: online-logsumexp forward, recomputing dh and dW backward kernels",
    unavailable=triton_unavailable,
)(triton_linear_logprobs)
