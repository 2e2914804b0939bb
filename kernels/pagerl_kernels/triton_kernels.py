"""Triton kernels of the fused linear logprob/entropy (imported only by :mod:`pagerl_kernels.triton_impl`).

This module imports triton at import time; :mod:`pagerl_kernels.triton_impl`
imports it lazily (on the first Triton call), so a machine without triton can
still import the package. ``TRITON_INTERPRET=1`` must be in the environment
before the ``@triton.jit`` below run; the safe rule is to set it before triton
itself is imported.

Layout: ``hidden`` is ``[M, H]``, ``weight`` is ``[V, H]`` (any strides), targets
``[M]`` int64. Every offset is computed in int64 (row and column indices are
cast before they meet a stride), so ``V * H`` or ``M * H`` past 2**31 is safe.

* :func:`fwd_kernel` -- one program per block of ``BLOCK_M`` tokens walks the
  vocabulary in ``BLOCK_V`` blocks, each logit tile a ``tl.dot`` over ``H`` in
  ``BLOCK_K`` steps with an fp32 accumulator, and keeps an online logsumexp
  (running max ``m``, ``s = sum e^(z-m)``, ``t = sum e^(z-m) (z-m)``). Columns
  past ``V`` are set to ``-inf`` before the max and contribute ``0`` to ``s`` and
  ``t`` (``e * y`` would be ``0 * -inf = nan`` there, hence the ``where``).
* :func:`bwd_dh_kernel` -- one program per token block: recompute each logit
  tile, form the logit gradient ``g`` (formula in :mod:`pagerl_kernels.chunked`)
  and add ``g @ W_tile`` into the fp32 ``dh`` rows it alone owns.
* :func:`bwd_dw_kernel` -- one program per vocabulary block: walk the token
  blocks, recompute, and add ``g^T @ h_tile`` into the fp32 ``dw`` rows it alone
  owns. Two kernels (each recomputing the logits) instead of one with
  atomics: the result is deterministic, and the weight kernel is simply not
  launched for a frozen weight.

Rows past ``M`` load zeros and get zero coefficients, so they add nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _logit_tile(
    h_ptr, w_ptr, rows, cols, row_mask, col_mask, H,
    stride_hm, stride_hk, stride_wv, stride_wk,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """``h[rows] @ w[cols].T`` as an fp32 ``[BLOCK_M, BLOCK_V]`` tile (masked rows/cols load zeros)."""
    acc = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < H
        h = tl.load(
            h_ptr + rows[:, None] * stride_hm + ks[None, :] * stride_hk,
            mask=row_mask[:, None] & k_mask[None, :], other=0.0,
        )
        w = tl.load(
            w_ptr + cols[:, None] * stride_wv + ks[None, :] * stride_wk,
            mask=col_mask[:, None] & k_mask[None, :], other=0.0,
        )
        acc = tl.dot(h, tl.trans(w), acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _grad_logit_tile(z, cols, col_mask, tgt, row_max, log_s, c, d, a_scaled, HAS_D: tl.constexpr):
    """dL/dz for one tile: ``p * (c + d q) + a/T [col = target]``, zero on masked columns.

    ``q = (z - m) - log s``: subtracting the max first is exact near the max,
    where ``z - (m + log s)`` would round ``lse`` and lose a peaked ``1 - p``.
    """
    q = (z - row_max[:, None]) - log_s[:, None]
    p = tl.exp(q)
    if HAS_D:
        g = p * (c[:, None] + d[:, None] * q)
    else:
        g = p * c[:, None]
    g = tl.where(col_mask[None, :], g, 0.0)
    g += tl.where(cols[None, :] == tgt[:, None], a_scaled[:, None], 0.0)
    return g


@triton.jit
def fwd_kernel(
    h_ptr, w_ptr, tgt_ptr, logp_ptr, ent_ptr, max_ptr, logs_ptr,
    M, V, H,
    stride_hm, stride_hk, stride_wv, stride_wk,
    inv_temp, ignore_index,
    HAS_ENTROPY: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_mask = rows < M
    tgt = tl.load(tgt_ptr + rows, mask=row_mask, other=ignore_index)

    # A finite "minus infinity" for the running max: the first rescale is then
    # exp(-huge) * 0 = 0 instead of (-inf) * 0 = nan.
    m = tl.full((BLOCK_M,), -3.0e38, dtype=tl.float32)
    s = tl.zeros((BLOCK_M,), dtype=tl.float32)
    t = tl.zeros((BLOCK_M,), dtype=tl.float32)
    z_target = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        col_mask = cols < V
        z = _logit_tile(
            h_ptr, w_ptr, rows, cols, row_mask, col_mask, H,
            stride_hm, stride_hk, stride_wv, stride_wk,
            BLOCK_M, BLOCK_V, BLOCK_K, DOT_PRECISION,
        ) * inv_temp
        z = tl.where(col_mask[None, :], z, float("-inf"))
        z_target += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        shift = m - m_new
        alpha = tl.exp(shift)
        y = z - m_new[:, None]
        e = tl.exp(y)
        if HAS_ENTROPY:
            t = alpha * (t + shift * s) + tl.sum(tl.where(col_mask[None, :], e * y, 0.0), axis=1)
        s = alpha * s + tl.sum(e, axis=1)
        m = m_new

    log_s = tl.log(s)
    valid = row_mask & (tgt != ignore_index)
    tl.store(logp_ptr + rows, tl.where(valid, (z_target - m) - log_s, 0.0), mask=row_mask)
    tl.store(max_ptr + rows, m, mask=row_mask)
    tl.store(logs_ptr + rows, log_s, mask=row_mask)
    if HAS_ENTROPY:
        tl.store(ent_ptr + rows, tl.where(valid, log_s - t / s, 0.0), mask=row_mask)


@triton.jit
def bwd_dh_kernel(
    h_ptr, w_ptr, tgt_ptr, max_ptr, logs_ptr, c_ptr, d_ptr, a_ptr, dh_ptr,
    M, V, H,
    stride_hm, stride_hk, stride_wv, stride_wk, stride_dhm,
    inv_temp,
    HAS_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_mask = rows < M
    tgt = tl.load(tgt_ptr + rows, mask=row_mask, other=-1)
    row_max = tl.load(max_ptr + rows, mask=row_mask, other=0.0)
    log_s = tl.load(logs_ptr + rows, mask=row_mask, other=0.0)
    c = tl.load(c_ptr + rows, mask=row_mask, other=0.0)
    d = tl.load(d_ptr + rows, mask=row_mask, other=0.0)
    a_scaled = tl.load(a_ptr + rows, mask=row_mask, other=0.0)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        col_mask = cols < V
        z = _logit_tile(
            h_ptr, w_ptr, rows, cols, row_mask, col_mask, H,
            stride_hm, stride_hk, stride_wv, stride_wk,
            BLOCK_M, BLOCK_V, BLOCK_K, DOT_PRECISION,
        ) * inv_temp
        g = _grad_logit_tile(z, cols, col_mask, tgt, row_max, log_s, c, d, a_scaled, HAS_D)
        g = g.to(w_ptr.dtype.element_ty)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_mask = ks < H
            w = tl.load(
                w_ptr + cols[:, None] * stride_wv + ks[None, :] * stride_wk,
                mask=col_mask[:, None] & k_mask[None, :], other=0.0,
            )
            out_ptrs = dh_ptr + rows[:, None] * stride_dhm + ks[None, :]
            out_mask = row_mask[:, None] & k_mask[None, :]
            acc = tl.load(out_ptrs, mask=out_mask, other=0.0)
            acc = tl.dot(g, w, acc, input_precision=DOT_PRECISION)
            tl.store(out_ptrs, acc, mask=out_mask)


@triton.jit
def bwd_dw_kernel(
    h_ptr, w_ptr, tgt_ptr, max_ptr, logs_ptr, c_ptr, d_ptr, a_ptr, dw_ptr,
    M, V, H,
    stride_hm, stride_hk, stride_wv, stride_wk, stride_dwv,
    inv_temp,
    HAS_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    cols = pid * BLOCK_V + tl.arange(0, BLOCK_V).to(tl.int64)
    col_mask = cols < V
    for m0 in range(0, M, BLOCK_M):
        rows = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        row_mask = rows < M
        tgt = tl.load(tgt_ptr + rows, mask=row_mask, other=-1)
        row_max = tl.load(max_ptr + rows, mask=row_mask, other=0.0)
        log_s = tl.load(logs_ptr + rows, mask=row_mask, other=0.0)
        c = tl.load(c_ptr + rows, mask=row_mask, other=0.0)
        d = tl.load(d_ptr + rows, mask=row_mask, other=0.0)
        a_scaled = tl.load(a_ptr + rows, mask=row_mask, other=0.0)
        z = _logit_tile(
            h_ptr, w_ptr, rows, cols, row_mask, col_mask, H,
            stride_hm, stride_hk, stride_wv, stride_wk,
            BLOCK_M, BLOCK_V, BLOCK_K, DOT_PRECISION,
        ) * inv_temp
        g = _grad_logit_tile(z, cols, col_mask, tgt, row_max, log_s, c, d, a_scaled, HAS_D)
        g = g.to(w_ptr.dtype.element_ty)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_mask = ks < H
            h = tl.load(
                h_ptr + rows[:, None] * stride_hm + ks[None, :] * stride_hk,
                mask=row_mask[:, None] & k_mask[None, :], other=0.0,
            )
            out_ptrs = dw_ptr + cols[:, None] * stride_dwv + ks[None, :]
            out_mask = col_mask[:, None] & k_mask[None, :]
            acc = tl.load(out_ptrs, mask=out_mask, other=0.0)
            acc = tl.dot(tl.trans(g), h, acc, input_precision=DOT_PRECISION)
            tl.store(out_ptrs, acc, mask=out_mask)
