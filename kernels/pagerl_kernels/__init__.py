"""Fused log-probability and entropy kernels for PageRL (imported as ``pagerl_kernels``).

Every RL step scores sampled tokens under the policy, the old policy and the
reference model, and the SFT loss scores logged tokens. Done naively that
builds a ``[tokens, vocabulary]`` logits tensor (8,192 x 151,936 fp32 is 5 GB,
and its gradient as much again). :func:`fused_linear_logprobs` computes the
same per-token logprobs (and entropies) from the last hidden states and the
LM-head weight while holding at most one tile of logits.

Implementations live in a registry (:data:`pagerl_kernels.registry.IMPLS`):

* ``"torch"``  -- :mod:`pagerl_kernels.chunked`, a chunked autograd.Function; runs anywhere;
* ``"triton"`` -- :mod:`pagerl_kernels.triton_impl`, Triton kernels for CUDA (and for CPU
  tensors under ``TRITON_INTERPRET=1``, set before triton is imported: a test aid);
* ``"naive"``  -- :mod:`pagerl_kernels.naive`, full logits, the reference and baseline.

Importing this package does not import triton; the Triton implementation
imports it on first use.
"""

from __future__ import annotations

from . import chunked, naive, triton_impl  # noqa: F401  (register the implementations)
from .api import fused_linear_logprobs
from .chunked import TilePlan, chunked_linear_logprobs, plan_tiles
from .registry import AUTO_ORDER, IMPLS, LogprobImpl, register_impl, resolve_impl

__all__ = [
    "fused_linear_logprobs",
    "chunked_linear_logprobs",
    "plan_tiles",
    "TilePlan",
    "IMPLS",
    "AUTO_ORDER",
    "LogprobImpl",
    "register_impl",
    "resolve_impl",
]
