"""fused_linear_logprobs on the chunked PyTorch path, the public API around it, and the registry.

Accuracy criterion: against an fp64 reference computed
from the same (already rounded) inputs, the fused path's error must be no
worse than the naive path's error in the same dtype, plus a small tolerance
relative to the reference's magnitude. Tiny tiles (``token_chunk`` /
``vocab_chunk`` that do not divide M or V) exercise the cross-tile online
logsumexp and the masking of partial tiles.
"""

from __future__ import annotations

import math

import pytest
import torch

from pagerl_kernels import (
    IMPLS,
    chunked_linear_logprobs,
    fused_linear_logprobs,
    plan_tiles,
    register_impl,
    resolve_impl,
)
from pagerl_kernels.naive import naive_linear_logprobs

# Added to the naive path's error, times the reference's max magnitude.
RTOL = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def make_inputs(shape, H, V, dtype, seed, *, peaked_prob=None):
    """hidden[*shape, H], weight[V, H], targets[*shape] (rounded to dtype), reproducibly from seed.

    With ``peaked_prob`` the hidden states point along their target's weight
    row, scaled so the target gets about that probability (at temperature 1).
    """
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) / math.sqrt(H)
    targets = torch.randint(0, V, shape, generator=g)
    hidden = torch.randn(*shape, H, generator=g, dtype=torch.float64)
    if peaked_prob is not None:
        direction = weight[targets]
        direction = direction / direction.norm(dim=-1, keepdim=True)
        lo, hi = 0.0, 1e4
        for _ in range(60):  # bisection on the scale: the mean target prob is monotone in it
            mid = (lo + hi) / 2
            h = 0.1 * hidden + mid * direction
            p = torch.softmax(h @ weight.T, -1).gather(-1, targets[..., None]).mean()
            lo, hi = (mid, hi) if p < peaked_prob else (lo, mid)
        hidden = 0.1 * hidden + lo * direction
    return hidden.to(dtype), weight.to(dtype), targets


def run(fn, hidden, weight, targets, a, b, *, entropy=True):
    """Forward + backward of sum(a * logp + b * entropy); returns outputs and grads in fp64."""
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    logp, ent = fn(h, w, targets)
    loss = (logp.double() * a).sum()
    if entropy:
        loss = loss + (ent.double() * b).sum()
    loss.backward()
    return [logp.detach().double(), ent.detach().double(), h.grad.double(), w.grad.double()]


def naive_fn(temperature):
    return lambda h, w, t: naive_linear_logprobs(h.reshape(-1, h.shape[-1]), w, t.reshape(-1), 1 / temperature, True)


def torch_fn(temperature, plan=None):
    def fn(h, w, t):
        flat_h, flat_t = h.reshape(-1, h.shape[-1]), t.reshape(-1)
        p = plan or plan_tiles(flat_h.shape[0], w.shape[0])
        return chunked_linear_logprobs(flat_h, w, flat_t, 1 / temperature, True, plan=p)

    return fn


def assert_no_worse_than_naive(dtype, ours, naive, ref, names=("logp", "entropy", "grad_h", "grad_w")):
    for name, o, n, r in zip(names, ours, naive, ref):
        err_o = float((o - r).abs().max())
        err_n = float((n - r).abs().max())
        bound = err_n + RTOL[dtype] * max(1.0, float(r.abs().max()))
        assert err_o <= bound, f"{name} ({dtype}): error {err_o:.3e} > naive {err_n:.3e} + tolerance ({bound:.3e})"


CASES = [
    # (M, H, V, temperature, plan): odd V, tails in every tiled dim, temperature != 1
    pytest.param(37, 24, 1001, 1.0, (8, 128), id="V1001-tiles8x128"),
    pytest.param(37, 24, 1001, 0.7, None, id="V1001-T0.7-default-tiles"),
    pytest.param(16, 32, 32001, 1.3, (16, 4096), id="V32001-T1.3"),
    pytest.param(4, 16, 151936, 1.0, None, id="V151936-4tokens"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("M,H,V,temperature,plan", CASES)
def test_torch_path_error_no_worse_than_naive(M, H, V, temperature, plan, dtype):
    hidden, weight, targets = make_inputs((M,), H, V, dtype, seed=M + V)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(M, generator=g, dtype=torch.float64), torch.randn(M, generator=g, dtype=torch.float64)
    ref = run(naive_fn(temperature), hidden.double(), weight.double(), targets, a, b)
    naive = run(naive_fn(temperature), hidden, weight, targets, a, b)
    tile = plan_tiles(M, V, token_chunk=plan[0], vocab_chunk=plan[1]) if plan else None
    ours = run(torch_fn(temperature, tile), hidden, weight, targets, a, b)
    assert_no_worse_than_naive(dtype, ours, naive, ref)
    assert float(ours[0].max()) <= 0.0, "a logprob above 0: the vocabulary tail is not masked"
    assert float(ours[1].min()) >= -1e-6 and float(ours[1].max()) <= math.log(V) + 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_peaked_distribution(dtype):
    """Target probability ~0.999: logprob ~ -1e-3 and a tiny entropy, where cancellation would show."""
    M, H, V = 12, 32, 32001
    hidden, weight, targets = make_inputs((M,), H, V, dtype, seed=3, peaked_prob=0.999)
    p_target = naive_linear_logprobs(hidden.double(), weight.double(), targets, 1.0, False)[0].exp()
    assert 0.99 < float(p_target.mean()) < 0.9999
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(M, generator=g, dtype=torch.float64), torch.randn(M, generator=g, dtype=torch.float64)
    ref = run(naive_fn(1.0), hidden.double(), weight.double(), targets, a, b)
    naive = run(naive_fn(1.0), hidden, weight, targets, a, b)
    ours = run(torch_fn(1.0, plan_tiles(M, V, token_chunk=5, vocab_chunk=1000)), hidden, weight, targets, a, b)
    assert_no_worse_than_naive(dtype, ours, naive, ref)


@pytest.mark.parametrize("which", ["logp", "entropy", "both"])
def test_gradients_of_each_output_alone_and_together(which):
    """Only-logprob, only-entropy and both: each against the fp64 autograd of the naive path."""
    M, H, V = 9, 8, 203
    hidden, weight, targets = make_inputs((M,), H, V, torch.float64, seed=5)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(M, generator=g, dtype=torch.float64) * (which != "entropy")
    b = torch.randn(M, generator=g, dtype=torch.float64) * (which != "logp")

    def loss_and_grads(fn):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        logp, ent = fn(h, w, targets)
        terms = []
        if which in ("logp", "both"):
            terms.append((logp * a).sum())
        if which in ("entropy", "both"):
            terms.append((ent * b).sum())
        sum(terms).backward()
        return h.grad, w.grad

    ref = loss_and_grads(naive_fn(0.9))
    ours = loss_and_grads(torch_fn(0.9, plan_tiles(M, V, token_chunk=4, vocab_chunk=64)))
    for r, o in zip(ref, ours):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-12)


def test_gradcheck_fp64_both_outputs_small_tiles():
    M, H, V = 6, 5, 11
    hidden, weight, targets = make_inputs((M,), H, V, torch.float64, seed=7)
    plan = plan_tiles(M, V, token_chunk=4, vocab_chunk=4)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    assert torch.autograd.gradcheck(lambda h, w: chunked_linear_logprobs(h, w, targets, 1 / 0.8, True, plan=plan), (h, w))


def test_gradcheck_fp64_public_api_with_ignored_tokens_3d():
    hidden, weight, targets = make_inputs((2, 4), 5, 13, torch.float64, seed=8)
    targets[0, 1] = targets[1, 3] = -100
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    fn = lambda h, w: fused_linear_logprobs(h, w, targets, temperature=1.7, return_entropy=True, impl="torch")
    assert torch.autograd.gradcheck(fn, (h, w))


def test_ignored_tokens_3d_zero_output_zero_gradient_rest_exact():
    B, L, H, V = 3, 7, 16, 301
    hidden, weight, targets = make_inputs((B, L), H, V, torch.float32, seed=9)
    targets[0, :3] = -100
    targets[2, 5:] = -100
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, ent = fused_linear_logprobs(h, w, targets, temperature=0.6, return_entropy=True, impl="torch")
    assert logp.shape == ent.shape == (B, L) and logp.dtype == ent.dtype == torch.float32
    ignored = targets == -100
    assert torch.all(logp[ignored] == 0) and torch.all(ent[ignored] == 0)
    (logp.sum() + ent.sum()).backward()
    assert torch.all(h.grad[ignored] == 0)
    # the scored positions equal the naive fp64 values
    keep = ~ignored
    ref_lp, ref_ent = naive_linear_logprobs(hidden[keep].double(), weight.double(), targets[keep], 1 / 0.6, True)
    torch.testing.assert_close(logp[keep].double(), ref_lp, rtol=0, atol=2e-5)
    torch.testing.assert_close(ent[keep].double(), ref_ent, rtol=0, atol=2e-5)


def test_custom_ignore_index_and_all_ignored():
    hidden, weight, targets = make_inputs((5,), 8, 50, torch.float32, seed=10)
    targets[1] = 7_777
    h = hidden.clone().requires_grad_()
    logp = fused_linear_logprobs(h, weight, targets, ignore_index=7_777)
    assert logp[1] == 0
    # nothing to score: zeros, and backward still runs (zero gradient)
    h2 = hidden.clone().requires_grad_()
    none = fused_linear_logprobs(h2, weight, torch.full((5,), -100), return_entropy=True)
    assert torch.all(none[0] == 0) and torch.all(none[1] == 0)
    (none[0].sum() + none[1].sum()).backward()
    assert torch.all(h2.grad == 0)


def test_frozen_weight_gets_no_gradient_and_hidden_gradient_is_right():
    hidden, weight, targets = make_inputs((10,), 8, 77, torch.float64, seed=11)
    h = hidden.clone().requires_grad_()
    logp = fused_linear_logprobs(h, weight, targets, impl="torch")  # weight.requires_grad is False
    logp.sum().backward()
    assert weight.grad is None
    h_ref = hidden.clone().requires_grad_()
    naive_linear_logprobs(h_ref, weight, targets, 1.0, False)[0].sum().backward()
    torch.testing.assert_close(h.grad, h_ref.grad)


def test_no_grad_forward_matches_and_output_dtypes():
    hidden, weight, targets = make_inputs((6,), 8, 40, torch.bfloat16, seed=12)
    with torch.no_grad():
        logp, ent = fused_linear_logprobs(hidden, weight, targets, return_entropy=True)
    assert logp.dtype == ent.dtype == torch.float32 and not logp.requires_grad
    h64 = fused_linear_logprobs(hidden.double(), weight.double(), targets)
    assert h64.dtype == torch.float64


def test_auto_picks_torch_on_cpu_and_registry_names():
    hidden, weight, _ = make_inputs((2,), 4, 8, torch.float32, seed=0)
    assert resolve_impl("auto", hidden, weight).name == "torch"
    assert {"torch", "triton", "naive"} <= set(IMPLS)
    with pytest.raises(ValueError, match="already taken"):
        register_impl("torch", summary="dup")(lambda *a: None)


def test_impls_agree_through_the_public_api():
    hidden, weight, targets = make_inputs((3, 5), 16, 257, torch.float32, seed=13)
    out = {
        impl: fused_linear_logprobs(hidden, weight, targets, temperature=1.1, return_entropy=True, impl=impl)
        for impl in ("torch", "naive", "auto")
    }
    for impl in ("naive", "auto"):
        torch.testing.assert_close(out[impl][0], out["torch"][0], rtol=0, atol=3e-5)
        torch.testing.assert_close(out[impl][1], out["torch"][1], rtol=0, atol=3e-5)


def test_triton_requested_where_it_cannot_run_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    hidden, weight, targets = make_inputs((4,), 16, 32, torch.float32, seed=0)
    with pytest.raises(ValueError, match="impl='triton'.*(TRITON_INTERPRET|not installed)"):
        fused_linear_logprobs(hidden, weight, targets, impl="triton")
    with pytest.raises(ValueError, match="fp16/bf16/fp32"):
        fused_linear_logprobs(hidden.double(), weight.double(), targets, impl="triton")


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda h, w, t: (h, w, t, {"impl": "cuda-magic"}), "unknown impl 'cuda-magic'"),
        (lambda h, w, t: (h, w, t.masked_fill(t == t[0], 10_000), {}), r"target 10000 at flat position 0 is outside \[0, 64\)"),
        (lambda h, w, t: (h, w, t.masked_fill(t == t[0], -5), {}), "outside"),
        (lambda h, w, t: (h[:, :8], w, t, {}), "hidden size mismatch"),
        (lambda h, w, t: (h, w, t[:2], {}), "leading shape"),
        (lambda h, w, t: (h, w.half(), t, {}), "share one float dtype"),
        (lambda h, w, t: (h, w, t.float(), {}), "integer tensor"),
        (lambda h, w, t: (h, w[None], t, {}), r"weight must have shape \[V, H\]"),
        (lambda h, w, t: (h, w, t, {"temperature": 0.0}), "temperature must be"),
        (lambda h, w, t: (h, w, t, {"temperature": float("nan")}), "temperature must be"),
    ],
)
def test_bad_input_is_a_clear_error(mutate, match):
    hidden, weight, targets = make_inputs((3,), 16, 64, torch.float32, seed=0)
    h, w, t, kw = mutate(hidden, weight, targets)
    with pytest.raises(ValueError, match=match):
        fused_linear_logprobs(h, w, t, **kw)


def test_plan_tiles_bounds_and_validation():
    plan = plan_tiles(8192, 151936)
    assert plan.token_chunk == 8192 and 8192 * plan.vocab_chunk * 4 <= 128 << 20
    small = plan_tiles(4, 151936)
    assert small.token_chunk == 4 and small.vocab_chunk == 151936  # one tile, 2.4 MB
    with pytest.raises(ValueError, match="vocab_chunk must be a positive int"):
        plan_tiles(4, 10, vocab_chunk=0)
