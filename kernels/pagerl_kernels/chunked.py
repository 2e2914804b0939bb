"""The chunked PyTorch path: tiles of logits, online logsumexp, recompute in backward.

Why this shape
--------------
The naive path keeps several ``[N, V]`` tensors alive (logits, log_softmax,
their gradients). Here the logits only ever exist as one tile of
``token_chunk x vocab_chunk`` entries (128 MB of fp32 at most by default, whatever N
and V are). The loop runs over vocabulary slices outside and token chunks
inside, carrying per-token running statistics across slices, so that

* the forward needs no second pass: a running max ``m``, ``s = sum exp(z - m)``
  and ``t = sum exp(z - m) (z - m)`` are rescaled whenever ``m`` grows (online
  logsumexp), giving ``lse = m + log s`` and ``entropy = log s - t / s``. Both
  terms are small for a peaked distribution, so the entropy keeps its
  precision there (``lse - sum p z`` would cancel two large numbers);
* the backward knows ``m``, ``log s`` and the entropy of every token (saved, ``[N]``),
  so each tile's probabilities are independent of the others: recompute the
  tile, form its logit gradient, and multiply it straight into the hidden
  gradient (an fp32 ``[N, H]`` accumulator) and into the weight-gradient rows
  of this vocabulary slice, which are finished when the slice is. No
  ``[V, H]`` fp32 accumulator is needed when all tokens fit one chunk.

The matmuls are large (up to 8192 tokens x vocab_chunk x H), so on a 2-core
CPU they run at BLAS speed; elementwise work is done in place on two reused
tile buffers (fresh large allocations would page-fault on every chunk).

Precision
---------
All softmax arithmetic is fp32 (fp64 for fp64 inputs). For fp16/bf16 inputs the
logit matmuls run in the input dtype (fp32 accumulation inside the BLAS, so
AMX/tensor units are used; torch has no CPU matmul with a low-precision input
and an fp32 output) and the tile is upcast once; the logit gradient is rounded
to the input dtype for the two gradient matmuls, as the naive path does, and
their partial products are summed in fp32.

Gradient, with z = h W^T / T, p = softmax(z), q = log p = z - lse, Hent = entropy,
a = dL/dlogp, b = dL/dHent:

    dlogp/dz_j = [j = y] - p_j          dHent/dz_j = -p_j (q_j + Hent)
    dL/dz_j    = p_j * (-(a + b Hent) - b q_j) + a [j = y]
    dL/dh      = (dL/dz) W / T          dL/dW = (dL/dz)^T h / T

``b`` is absent (and its term skipped) when the entropy output gets no
gradient; the weight-gradient matmul is skipped when the weight is frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from .registry import register_impl

# Bytes of one fp32 logits tile, at most. Two such buffers (plus, for fp16/bf16
# inputs, two half-size ones) are the whole working set besides the [N, H]
# gradient. A problem gets 1/8 of its full fp32 logits per tile (at least
# MIN_TILE_BYTES), so the working set stays a small share of the naive path's
# (which holds several full-size tensors) while the loop has few iterations.
# Why few and large: measured on 2 idle cores (N=2048, H=896, V=151936), tiles
# of 8 to 128 MB all run at BLAS speed, but with the cores shared by other
# processes every elementwise op is an OpenMP region whose threads wait for each
# other, and the number of ops is what counts: the same forward took 14 s with
# 8 MB tiles, 4.7 s with 32 MB and 3.0 s with 128 MB.
DEFAULT_TILE_BYTES = 128 << 20
MIN_TILE_BYTES = 8 << 20
# Tokens per chunk: all of them up to this many (then the weight gradient of a
# vocabulary slice is one matmul, rounded once, like the naive path's).
MAX_TOKEN_CHUNK = 8192
# Vocabulary slices are multiples of this (and at least this wide).
VOCAB_ALIGN = 128

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class TilePlan:
    """How the ``[N, V]`` logits are cut: ``token_chunk`` rows by ``vocab_chunk`` columns."""

    token_chunk: int
    vocab_chunk: int


def plan_tiles(
    n_tokens: int,
    vocab: int,
    *,
    tile_bytes: Optional[int] = None,
    token_chunk: Optional[int] = None,
    vocab_chunk: Optional[int] = None,
) -> TilePlan:
    """Pick tile sizes: all tokens (up to :data:`MAX_TOKEN_CHUNK`), then as many vocabulary columns as fit.

    ``tile_bytes`` (the fp32 size of one tile) defaults to
    ``min(DEFAULT_TILE_BYTES, max(MIN_TILE_BYTES, n_tokens * vocab * 4 / 8))``.

    Explicit ``token_chunk``/``vocab_chunk`` override the choice (tests use tiny
    tiles to exercise the cross-tile merging; the benchmark tunes them).
    """
    for key, val in (("token_chunk", token_chunk), ("vocab_chunk", vocab_chunk)):
        if val is not None and (not isinstance(val, int) or val < 1):
            raise ValueError(f"plan_tiles: {key} must be a positive int, got {val!r}")
    if tile_bytes is None:
        tile_bytes = min(DEFAULT_TILE_BYTES, max(MIN_TILE_BYTES, n_tokens * vocab * 4 // 8))
    if tile_bytes < 4 * VOCAB_ALIGN:
        raise ValueError(f"plan_tiles: tile_bytes must be at least {4 * VOCAB_ALIGN}, got {tile_bytes}")
    rows = token_chunk if token_chunk is not None else max(1, min(n_tokens, MAX_TOKEN_CHUNK))
    if vocab_chunk is None:
        cols = tile_bytes // (4 * rows)
        cols = max(VOCAB_ALIGN, cols // VOCAB_ALIGN * VOCAB_ALIGN)
        vocab_chunk = max(1, min(cols, vocab))
    return TilePlan(token_chunk=rows, vocab_chunk=vocab_chunk)


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Tiles:
    """Reused flat buffers, viewed as contiguous ``[rows, cols]`` tiles of any size up to the plan's."""

    def __init__(self, plan: TilePlan, dtype: torch.dtype, device: torch.device) -> None:
        n = plan.token_chunk * plan.vocab_chunk
        self.math_dtype = _math_dtype(dtype)
        self.low = dtype in _LOW_PRECISION
        self.z = torch.empty(n, dtype=self.math_dtype, device=device)
        self.e = torch.empty(n, dtype=self.math_dtype, device=device)
        # Low-precision matmul output in forward, low-precision logit gradient in backward.
        self.z_low = torch.empty(n, dtype=dtype, device=device) if self.low else None

    @staticmethod
    def view(buf: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        return buf[: rows * cols].view(rows, cols)

    def logits(self, h_chunk: torch.Tensor, w_slice: torch.Tensor, inv_temperature: float) -> torch.Tensor:
        """``h_chunk @ w_slice.T * inv_temperature`` in the math dtype, written into the ``z`` tile."""
        rows, cols = h_chunk.shape[0], w_slice.shape[0]
        z = self.view(self.z, rows, cols)
        if self.low:
            z_low = self.view(self.z_low, rows, cols)
            torch.addmm(z_low, h_chunk, w_slice.t(), beta=0, alpha=inv_temperature, out=z_low)
            z.copy_(z_low)
        else:
            torch.addmm(z, h_chunk, w_slice.t(), beta=0, alpha=inv_temperature, out=z)
        return z


def _target_columns(targets: torch.Tensor, v0: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Column of each token's target inside the slice ``[v0, v0 + width)`` (clamped) and whether it is there."""
    local = targets - v0
    inside = (local >= 0) & (local < width)
    return local.clamp(0, width - 1).unsqueeze(1), inside


def chunked_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    inv_temperature: float,
    return_entropy: bool,
    plan: TilePlan,
) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor], Optional[torch.Tensor]]:
    """Forward over tiles: ``(logprobs[M], (m[M], log_s[M]), entropy[M] or None)`` in the math dtype.

    ``lse = m + log_s``; the two are kept apart for the backward's precision.
    """
    n_tokens = hidden.shape[0]
    vocab = weight.shape[0]
    tiles = _Tiles(plan, hidden.dtype, hidden.device)
    md = tiles.math_dtype
    # Running statistics per token. m starts at the most negative finite value
    # (not -inf) so that the first rescale is exp(-huge) * 0 = 0, never nan.
    m = torch.full((n_tokens,), torch.finfo(md).min, dtype=md, device=hidden.device)
    s = torch.zeros(n_tokens, dtype=md, device=hidden.device)
    t = torch.zeros(n_tokens, dtype=md, device=hidden.device) if return_entropy else None
    z_target = torch.zeros(n_tokens, dtype=md, device=hidden.device)
    C, Vs = plan.token_chunk, plan.vocab_chunk
    for v0 in range(0, vocab, Vs):
        v1 = min(vocab, v0 + Vs)
        w_slice = weight[v0:v1]
        for c0 in range(0, n_tokens, C):
            c1 = min(n_tokens, c0 + C)
            z = tiles.logits(hidden[c0:c1], w_slice, inv_temperature)
            cols, inside = _target_columns(targets[c0:c1], v0, v1 - v0)
            picked = z.gather(1, cols).squeeze(1)
            z_target[c0:c1] = torch.where(inside, picked, z_target[c0:c1])

            m_old, s_old = m[c0:c1], s[c0:c1]
            m_new = torch.maximum(m_old, z.amax(dim=1))
            shift = m_old - m_new  # <= 0
            alpha = shift.exp()
            z.sub_(m_new.unsqueeze(1))  # y = z - m_new <= 0
            e = tiles.view(tiles.e, c1 - c0, v1 - v0)
            torch.exp(z, out=e)
            s_tile = e.sum(dim=1)
            if t is not None:
                e.mul_(z)
                t_tile = e.sum(dim=1)
                # sum e'(z - m_new) over old columns = alpha * (t_old + shift * s_old)
                t[c0:c1] = alpha * (t[c0:c1] + shift * s_old) + t_tile
            s[c0:c1] = alpha * s_old + s_tile
            m[c0:c1] = m_new
    log_s = s.log()
    # (z_y - m) - log s, not z_y - (m + log s): near the max z_y - m is exact,
    # so a peaked logprob (~ -1e-3) keeps its relative precision.
    logp = (z_target - m) - log_s
    entropy = log_s - t / s if t is not None else None
    return logp, (m, log_s), entropy


def chunked_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    row_max: torch.Tensor,
    log_s: torch.Tensor,
    entropy: Optional[torch.Tensor],
    grad_logp: Optional[torch.Tensor],
    grad_entropy: Optional[torch.Tensor],
    inv_temperature: float,
    plan: TilePlan,
    *,
    need_hidden: bool,
    need_weight: bool,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients w.r.t. hidden and weight (each only if needed), recomputing logits tile by tile."""
    n_tokens, H = hidden.shape
    vocab = weight.shape[0]
    if not (need_hidden or need_weight):
        return None, None
    tiles = _Tiles(plan, hidden.dtype, hidden.device)
    md, low = tiles.math_dtype, tiles.low
    dev = hidden.device
    a = grad_logp.to(md) if grad_logp is not None else torch.zeros(n_tokens, dtype=md, device=dev)
    # dL/dz = p (c + d q) + a/T [j = y] with the 1/T folded into c, d. With
    # y = z - m, p = e^y / s and q = y - log s, that is e^y (c2 + d2 y) + a/T [j = y]
    # where c2 = (c - d log s) / s and d2 = d / s: the tile is shifted by the
    # running max only (exact near the max; lse = m + log s would round), and
    # the 1/s and log s terms ride on per-token coefficients.
    inv_s = torch.exp(-log_s)
    if grad_entropy is not None:
        b = grad_entropy.to(md)
        c = -(a + b * entropy) * inv_temperature
        d = -b * inv_temperature
        c2 = (c - d * log_s) * inv_s
        d2: Optional[torch.Tensor] = d * inv_s
    else:
        c2 = -a * inv_temperature * inv_s
        d2 = None
    a_scaled = a * inv_temperature

    C, Vs = plan.token_chunk, plan.vocab_chunk
    single_chunk = n_tokens <= C
    grad_h = torch.zeros(n_tokens, H, dtype=md, device=dev) if need_hidden else None
    grad_w = torch.zeros(vocab, H, dtype=weight.dtype, device=dev) if need_weight else None
    # Low precision: the matmul partial products come out in the input dtype and
    # are summed in fp32 (over vocabulary slices for grad_h; over token chunks for grad_w).
    part_h = torch.empty(C, H, dtype=weight.dtype, device=dev) if (low and need_hidden) else None
    acc_w = part_w = None
    if low and need_weight and not single_chunk:
        acc_w = torch.empty(Vs, H, dtype=md, device=dev)
        part_w = torch.empty(Vs, H, dtype=weight.dtype, device=dev)

    for v0 in range(0, vocab, Vs):
        v1 = min(vocab, v0 + Vs)
        width = v1 - v0
        w_slice = weight[v0:v1]
        if acc_w is not None:
            acc_w[:width].zero_()
        for c0 in range(0, n_tokens, C):
            c1 = min(n_tokens, c0 + C)
            rows = c1 - c0
            z = tiles.logits(hidden[c0:c1], w_slice, inv_temperature)
            z.sub_(row_max[c0:c1].unsqueeze(1))  # y = z - m
            g = tiles.view(tiles.e, rows, width)
            torch.exp(z, out=g)  # e^y = s p
            if d2 is not None:
                torch.addcmul(c2[c0:c1].unsqueeze(1), z, d2[c0:c1].unsqueeze(1), out=z)  # c2 + d2 y
                g.mul_(z)
            else:
                g.mul_(c2[c0:c1].unsqueeze(1))
            cols, inside = _target_columns(targets[c0:c1], v0, width)
            g.scatter_add_(1, cols, (a_scaled[c0:c1] * inside).unsqueeze(1))
            if low:
                g_mm = tiles.view(tiles.z_low, rows, width)
                g_mm.copy_(g)
            else:
                g_mm = g
            h_chunk = hidden[c0:c1]
            if grad_h is not None:
                if part_h is not None:
                    torch.mm(g_mm, w_slice, out=part_h[:rows])
                    grad_h[c0:c1].add_(part_h[:rows])
                else:
                    torch.addmm(grad_h[c0:c1], g_mm, w_slice, out=grad_h[c0:c1])
            if grad_w is not None:
                if not low:
                    torch.addmm(grad_w[v0:v1], g_mm.t(), h_chunk, out=grad_w[v0:v1])
                elif acc_w is None:
                    torch.mm(g_mm.t(), h_chunk, out=grad_w[v0:v1])
                else:
                    torch.mm(g_mm.t(), h_chunk, out=part_w[:width])
                    acc_w[:width].add_(part_w[:width])
        if grad_w is not None and acc_w is not None:
            grad_w[v0:v1].copy_(acc_w[:width])
    if grad_h is not None:
        grad_h = grad_h.to(hidden.dtype)
    return grad_h, grad_w


class ChunkedLinearLogprobs(torch.autograd.Function):
    """autograd.Function over :func:`chunked_forward` / :func:`chunked_backward`.

    ``apply(hidden[M, H], weight[V, H], targets[M], inv_temperature, return_entropy, plan)``
    returns ``logprobs`` or ``(logprobs, entropy)``. Inputs must be contiguous
    and all targets valid (the public entry point compacts ignored tokens away).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temperature, return_entropy, plan):  # type: ignore[override]
        logp, (row_max, log_s), entropy = chunked_forward(hidden, weight, targets, inv_temperature, return_entropy, plan)
        ctx.save_for_backward(
            hidden, weight, targets, row_max, log_s, entropy if entropy is not None else log_s.new_empty(0)
        )
        ctx.inv_temperature = inv_temperature
        ctx.has_entropy = entropy is not None
        ctx.plan = plan
        # Unused outputs then get None gradients: that is how the backward
        # knows to skip the entropy term (or the logprob term).
        ctx.set_materialize_grads(False)
        if return_entropy:
            return logp, entropy
        return logp

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp, grad_entropy=None):  # type: ignore[override]
        hidden, weight, targets, row_max, log_s, entropy = ctx.saved_tensors
        if grad_logp is None and grad_entropy is None:
            return None, None, None, None, None, None
        grad_h, grad_w = chunked_backward(
            hidden, weight, targets, row_max, log_s, entropy if ctx.has_entropy else None,
            grad_logp, grad_entropy, ctx.inv_temperature, ctx.plan,
            need_hidden=ctx.needs_input_grad[0], need_weight=ctx.needs_input_grad[1],
        )
        return grad_h, grad_w, None, None, None, None


def chunked_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    inv_temperature: float,
    return_entropy: bool,
    *,
    plan: Optional[TilePlan] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The registered ``"torch"`` implementation (see :mod:`pagerl_kernels.registry` for the contract)."""
    if plan is None:
        plan = plan_tiles(hidden.shape[0], weight.shape[0])
    out = ChunkedLinearLogprobs.apply(
        hidden.contiguous(), weight.contiguous(), targets.contiguous(), float(inv_temperature),
        bool(return_entropy), plan,
    )
    if return_entropy:
        return out[0], out[1]
    return out, None


register_impl(
    "torch",
    summary="chunked PyTorch autograd.Function: logits in tiles, online logsumexp, recompute in backward",
)(chunked_linear_logprobs)
