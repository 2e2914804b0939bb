"""The Triton kernels, run by Triton's interpreter on CPU at tiny shapes (fp32 and fp16).

One subprocess (triton_interpret_cases.py, with TRITON_INTERPRET=1 set before
triton is imported) runs every case; the tests here judge its numbers by the
same criterion as the PyTorch path: error against the fp64 reference no worse
than the naive same-dtype path's, plus a tolerance. Shapes are tiny because the
interpreter is 600-13,000x slower than PyTorch; they are chosen so every tile
dimension has a masked tail (M, H and V not multiples of the blocks). bf16 is
not run: the interpreter's bf16 tl.dot is wrong, and the kernels refuse it there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

RUNNER = Path(__file__).with_name("triton_interpret_cases.py")
RTOL = {"float32": 2e-6, "float16": 1e-3}

CASES = [
    # odd small V (37): tails in M (13 of 16), H (20 of 16+16) and V (37 of 16 * 3)
    {"id": "odd-V37", "shape": [13], "H": 20, "V": 37, "blocks": [16, 16, 16], "seed": 1},
    {"id": "odd-V37-T0.7", "shape": [13], "H": 20, "V": 37, "blocks": [16, 32, 16], "seed": 2, "temperature": 0.7},
    {"id": "V32001-few-tokens", "shape": [5], "H": 16, "V": 32001, "blocks": [16, 512, 16], "seed": 3},
    {"id": "peaked-0.999", "shape": [6], "H": 32, "V": 301, "blocks": [16, 64, 16], "seed": 4, "peaked": 0.999},
    {"id": "only-logp-grad", "shape": [9], "H": 16, "V": 50, "blocks": [16, 16, 16], "seed": 5, "grads": "logp"},
    {"id": "only-entropy-grad", "shape": [9], "H": 16, "V": 50, "blocks": [16, 16, 16], "seed": 6, "grads": "entropy"},
    {"id": "frozen-weight", "shape": [7], "H": 16, "V": 45, "blocks": [16, 32, 16], "seed": 7, "frozen_weight": True},
    # through the public API (default blocks): 3-D input, ignore_index, temperature
    {"id": "api-3d-ignore-T1.5", "shape": [2, 6], "H": 24, "V": 97, "seed": 8, "ignore": True, "temperature": 1.5},
]
DTYPES = ["float32", "float16"]


@pytest.fixture(scope="module")
def results():
    cases = [dict(c, id=f"{c['id']}-{dt}", dtype=dt) for c in CASES for dt in DTYPES]
    cases.append({"id": "refusal-bf16", "kind": "refusal", "dtype": "bfloat16"})
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, str(RUNNER)], input=json.dumps(cases), capture_output=True, text=True, env=env, timeout=600
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"interpreter run failed:\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_triton_kernel_error_no_worse_than_naive(results, case, dtype):
    res = results[f"{case['id']}-{dtype}"]
    for name, err in res["err_triton"].items():
        if name == "grad_w" and case.get("frozen_weight"):
            continue
        bound = res["err_naive"][name] + RTOL[dtype] * max(1.0, res["ref_max"][name])
        assert err <= bound, f"{name}: triton error {err:.3e} > naive {res['err_naive'][name]:.3e} + tol ({bound:.3e})"
    assert res["max_logp"] <= 0.0, "a logprob above 0: the vocabulary tail is not masked"
    if case.get("frozen_weight"):
        assert res["weight_grad_is_none"]
    if case.get("ignore"):
        assert res["ignored_outputs_zero"] and res["ignored_grads_zero"]


def test_bf16_is_refused_under_the_interpreter(results):
    assert results["refusal-bf16"]["error"] is not None
    assert "bf16" in results["refusal-bf16"]["error"]

