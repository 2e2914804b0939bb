"""Runs Triton-kernel cases under TRITON_INTERPRET=1 and prints their errors as JSON (helper, not a test).

Triton reads TRITON_INTERPRET when kernels are defined, so it must be in the
environment before triton is imported; pytest's process may already have
imported triton (deepspeed and transformers do), hence this separate process,
started by test_triton_interpreted.py with the case list as JSON on stdin.

For every case it computes logprobs, entropies and the gradients of
``sum(a * logp + b * entropy)`` three ways -- an fp64 reference (the naive path on
the same, already rounded, inputs in float64), the naive path in the case's
dtype, and the Triton kernels -- and reports max absolute errors against the
reference, plus facts the test checks (largest logprob, whether the frozen
weight got a gradient, outputs at ignored positions).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

# The same inputs as the PyTorch-path tests (this script's folder is sys.path[0]).
from test_fused_logprobs import make_inputs  # noqa: E402

from pagerl_kernels import fused_linear_logprobs  # noqa: E402
from pagerl_kernels.naive import naive_linear_logprobs  # noqa: E402
from pagerl_kernels.triton_impl import TritonBlocks, triton_linear_logprobs  # noqa: E402

NAMES = ("logp", "entropy", "grad_h", "grad_w")


def run_case(case):
    dtype = getattr(torch, case["dtype"])
    shape = tuple(case["shape"])
    hidden, weight, targets = make_inputs(shape, case["H"], case["V"], dtype, case["seed"], peaked_prob=case.get("peaked"))
    if case.get("ignore"):
        flat = targets.view(-1)
        flat[:: 3] = -100
    temperature = case.get("temperature", 1.0)
    grads = case.get("grads", "both")
    frozen = case.get("frozen_weight", False)
    g = torch.Generator().manual_seed(case["seed"] + 1)
    a = torch.randn(shape, generator=g, dtype=torch.float64) * (grads != "entropy")
    b = torch.randn(shape, generator=g, dtype=torch.float64) * (grads != "logp")
    keep = targets != -100
    blocks = TritonBlocks(*case["blocks"]) if case.get("blocks") else None

    def naive(h, w, t):
        flat_h, flat_t = h[keep], t[keep]
        lp, ent = naive_linear_logprobs(flat_h, w, flat_t, 1 / temperature, True)
        out_lp = torch.zeros(shape, dtype=lp.dtype).masked_scatter(keep, lp)
        out_ent = torch.zeros(shape, dtype=ent.dtype).masked_scatter(keep, ent)
        return out_lp, out_ent

    def triton(h, w, t):
        if blocks is None:
            return fused_linear_logprobs(h, w, t, temperature=temperature, return_entropy=True, impl="triton")
        lp, ent = triton_linear_logprobs(
            h.reshape(-1, h.shape[-1]), w, t.reshape(-1), 1 / temperature, True, blocks=blocks
        )
        return lp.reshape(shape), ent.reshape(shape)

    def run(fn, h0, w0, weight_grad=True):
        h = h0.detach().clone().requires_grad_()
        w = w0.detach().clone().requires_grad_(weight_grad)
        lp, ent = fn(h, w, targets)
        loss = 0.0
        if grads in ("logp", "both"):
            loss = loss + (lp.double() * a).sum()
        if grads in ("entropy", "both"):
            loss = loss + (ent.double() * b).sum()
        loss.backward()
        wg = w.grad.double() if w.grad is not None else None
        return [lp.detach().double(), ent.detach().double(), h.grad.double(), wg]

    ref = run(naive, hidden.double(), weight.double())
    nai = run(naive, hidden, weight)
    t0 = time.perf_counter()
    tri = run(triton, hidden, weight, weight_grad=not frozen)
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "ref_max": {}, "err_triton": {}, "err_naive": {}}
    for name, r, n, t in zip(NAMES, ref, nai, tri):
        out["ref_max"][name] = float(r.abs().max())
        out["err_naive"][name] = float((n - r).abs().max())
        out["err_triton"][name] = None if t is None else float((t - r).abs().max())
    out["max_logp"] = float(tri[0].max())
    out["weight_grad_is_none"] = tri[3] is None
    ign = ~keep
    out["ignored_outputs_zero"] = bool(torch.all(tri[0][ign] == 0) and torch.all(tri[1][ign] == 0))
    out["ignored_grads_zero"] = bool(torch.all(tri[2][ign] == 0))
    return out


def refusal_message(case):
    hidden, weight, targets = make_inputs((3,), 16, 20, getattr(torch, case["dtype"]), 0)
    try:
        fused_linear_logprobs(hidden, weight, targets, impl="triton")
    except ValueError as exc:
        return {"error": str(exc)}
    return {"error": None}


def main() -> None:
    cases = json.load(sys.stdin)
    results = {}
    for case in cases:
        fn = refusal_message if case.get("kind") == "refusal" else run_case
        results[case["id"]] = fn(case)
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main()
