"""Benchmark of per-token logprob + entropy from hidden states and an LM head (not a test).

Methods (each computes logprobs AND entropies, and backpropagates
``sum(a * logprobs + b * entropy)`` for random ``a``, ``b`` into hidden and weight):

* ``naive``  -- full logits -> log_softmax -> gather, entropy = -sum(p log p), all in
  the input dtype (what ``model(...).logits`` followed by a log_softmax does);
* ``chunked_sls`` -- our own implementation of the "selective log-softmax" idea used by
  TRL: full logits are still built, but logsumexp / gather / entropy run over
  row chunks so the log_softmax temporaries stay one chunk big; autograd does
  the backward;
* ``ours``   -- ``pagerl_kernels.fused_linear_logprobs`` (impl="auto": the chunked
  PyTorch path on CPU, the Triton kernels on CUDA);
* ``liger``  -- on CUDA only, when liger-kernel is installed: its fused linear cross
  entropy with ``reduction="none"`` (logprobs only: it has no entropy output).

Reported per (method, shape, dtype): median forward, backward and
forward+backward time over ``--repeats`` runs (after one warm-up). The timed
runs of all methods of one (shape, dtype) happen in one process, interleaved
round-robin, so background load on a shared machine falls on every method
alike rather than on whichever ran during a busy minute. GFLOP/s
counted as 2, 6 and 8 x N*H*V for forward, backward and both (the backward is
charged 6 for every method, i.e. as if it recomputed the logits, so the columns
compare like with like), and peak extra memory of one forward+backward and of
one no-grad forward (what the reference/old-policy scoring runs). "f+b CPU s"
is the median CPU time (all threads) of one forward+backward, and "load" the
1-minute load average before-after the config: on a shared machine, wall times
taken under load are inflated, CPU times much less so.

How memory is measured
----------------------
CPU: every (method, shape, dtype) is measured in a fresh subprocess of its own
(the timings run in another one). After the inputs exist and a warm-up
iteration has run, the process frees its gradients, calls
``malloc_trim(0)`` and reads its resident set size (VmRSS) as the baseline; it
then resets the kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``), runs
the measured iteration and reads the peak (VmHWM). Peak extra = VmHWM - baseline:
real pages touched by torch's allocator, libraries and all; the weight and
hidden gradients count for every method alike. (tracemalloc cannot see torch's
allocations, and ru_maxrss cannot be reset.) A run that would need more memory
than is available (extrapolated from the same method at a smaller N, or
estimated) is skipped and reported as such rather than letting the kernel's OOM
killer hit the machine; each worker also caps its address space so that an
underestimate fails with an allocation error, not an OOM kill. For a skipped
run extrapolated from a smaller N (the weight gradient taken as fixed, the rest
as linear in N), the estimate is printed and marked "(est.)", and the "vs naive"
share of the other methods uses it, also marked.
CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the run.

Usage:
    python benchmarks/bench_logprobs.py                 # full run (several minutes on 2 cores)
    python benchmarks/bench_logprobs.py --quick         # a small shape, seconds
    python benchmarks/bench_logprobs.py --shapes 2048,896,151936 --dtypes bf16 --repeats 5 --markdown
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from tables import format_table  # benchmarks/tables.py, beside this script

DEFAULT_SHAPES = "2048,896,151936;8192,896,151936;4096,512,32001"
QUICK_SHAPES = "512,256,32001"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
METHODS = ("naive", "chunked_sls", "ours", "liger")
# Rows per chunk of the chunked selective-log-softmax baseline.
SLS_CHUNK_ROWS = 512
# Rough peak-extra models (bytes) used only to skip runs that cannot fit when no
# smaller run of the same method has been measured yet.
_PEAK_MODEL = {
    "naive": lambda n, h, v, b: 6 * n * v * b + 2 * v * h * b,
    "chunked_sls": lambda n, h, v, b: 3 * n * v * max(b, 4) + 2 * v * h * b,
    "ours": lambda n, h, v, b: (256 << 20) + 2 * v * h * b,
    "liger": lambda n, h, v, b: 2 * v * h * 4,
}


@dataclass(frozen=True)
class Problem:
    n: int
    h: int
    v: int
    dtype: str  # key of DTYPES
    device: str
    threads: int
    seed: int = 0


# ----------------------------------------------------------------------------- methods


def _naive(h, w, t):
    from pagerl_kernels.naive import naive_linear_logprobs

    return naive_linear_logprobs(h, w, t, 1.0, True)


def _chunked_sls(h, w, t):
    """Selective log-softmax over row chunks of materialized logits (the TRL idea, our code)."""
    import torch

    logits = h @ w.t()
    logps, ents = [], []
    for start in range(0, logits.shape[0], SLS_CHUNK_ROWS):
        chunk = logits[start : start + SLS_CHUNK_ROWS]
        lse = torch.logsumexp(chunk.float(), dim=-1)
        picked = chunk.gather(-1, t[start : start + SLS_CHUNK_ROWS, None]).squeeze(-1).float()
        logps.append(picked - lse)
        logp_chunk = torch.log_softmax(chunk, dim=-1)
        ents.append(-(logp_chunk.exp() * logp_chunk).sum(-1).float())
    return torch.cat(logps), torch.cat(ents)


def _ours(h, w, t):
    from pagerl_kernels import fused_linear_logprobs

    return fused_linear_logprobs(h, w, t, return_entropy=True)


def _liger(h, w, t):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    out = liger_fused_linear_cross_entropy(h, w, t, reduction="none")
    loss = out[0] if isinstance(out, tuple) else out
    return -loss, None


RUNNERS: Dict[str, Callable] = {"naive": _naive, "chunked_sls": _chunked_sls, "ours": _ours, "liger": _liger}


# ----------------------------------------------------------------------------- worker


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


class Bench:
    """One problem's inputs, and one timed forward+backward of any method on them."""

    def __init__(self, problem: Problem) -> None:
        import torch

        torch.set_num_threads(problem.threads)
        self.torch = torch
        dtype = getattr(torch, DTYPES[problem.dtype])
        dev = torch.device(problem.device)
        gen = torch.Generator().manual_seed(problem.seed)
        self.hidden = torch.randn(problem.n, problem.h, generator=gen).to(dtype).to(dev).requires_grad_()
        self.weight = (torch.randn(problem.v, problem.h, generator=gen) * problem.h**-0.5).to(dtype).to(dev)
        self.weight.requires_grad_()
        self.targets = torch.randint(0, problem.v, (problem.n,), generator=gen).to(dev)
        self.a = torch.randn(problem.n, generator=gen).to(dev)
        self.b = torch.randn(problem.n, generator=gen).to(dev)
        self.cuda = dev.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def clear_grads(self) -> None:
        self.hidden.grad = self.weight.grad = None

    def iteration(self, method: str) -> Tuple[float, float, float]:
        """(forward s, backward s, CPU s of both) of sum(a * logp + b * entropy)."""
        fn = RUNNERS[method]
        self.clear_grads()
        self.sync()
        c0, t0 = time.process_time(), time.perf_counter()
        logp, ent = fn(self.hidden, self.weight, self.targets)
        self.sync()
        t1 = time.perf_counter()
        if method == "liger":
            loss = logp.sum()  # Liger computes its gradients inside the forward for a scalar loss
        else:
            loss = (logp * self.a).sum() + ((ent * self.b).sum() if ent is not None else 0.0)
        loss.backward()
        self.sync()
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, time.process_time() - c0

    def nograd_forward(self, method: str) -> None:
        with self.torch.no_grad():
            RUNNERS[method](self.hidden, self.weight, self.targets)
        self.sync()

    # peak tracking: CPU resident set (see module docstring) or the CUDA allocator
    def mark(self) -> int:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            return self.torch.cuda.memory_allocated()
        _trim()
        base = _rss_kb("VmRSS") * 1024
        _reset_peak()
        return base

    def peak_since(self, base: int) -> int:
        if self.cuda:
            return self.torch.cuda.max_memory_allocated() - base
        return _rss_kb("VmHWM") * 1024 - base


def measure_memory(problem: Problem, method: str) -> Dict[str, Any]:
    """Peak extra memory of one no-grad forward and of one forward+backward (after a warm-up)."""
    bench = Bench(problem)
    bench.iteration(method)  # warm-up: thread pools, BLAS kernels, lazily built state
    bench.clear_grads()
    base = bench.mark()
    bench.nograd_forward(method)
    peak_fwd = bench.peak_since(base)
    bench.clear_grads()
    base = bench.mark()
    bench.iteration(method)
    return {"peak_fwd": peak_fwd, "peak_fb": bench.peak_since(base)}


def measure_times(problem: Problem, methods: List[str], repeats: int) -> Dict[str, Dict[str, float]]:
    """Median times per method, the methods' runs interleaved round-robin.

    Interleaving makes background load (a shared machine) fall on every method
    alike instead of on whichever ran during a busy minute.
    """
    bench = Bench(problem)
    for method in methods:
        bench.iteration(method)  # warm-up
    runs: Dict[str, List[Tuple[float, float, float]]] = {m: [] for m in methods}
    for r in range(repeats):
        order = methods[r % len(methods):] + methods[: r % len(methods)]
        for method in order:
            runs[method].append(bench.iteration(method))
    out = {}
    for method, rs in runs.items():
        out[method] = {
            "fwd_s": statistics.median(x[0] for x in rs),
            "bwd_s": statistics.median(x[1] for x in rs),
            "tot_s": statistics.median(x[0] + x[1] for x in rs),
            "cpu_s": statistics.median(x[2] for x in rs),
        }
    return out


def run_worker(task: Dict[str, Any], mem_cap_bytes: Optional[int]) -> Dict[str, Any]:
    problem = Problem(**task["problem"])
    if problem.device == "cpu" and mem_cap_bytes is not None:
        vms = _rss_kb("VmSize") * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vms + mem_cap_bytes, vms + mem_cap_bytes))
    if task["kind"] == "memory":
        return measure_memory(problem, task["methods"][0])
    return measure_times(problem, list(task["methods"]), int(task["repeats"]))


# ----------------------------------------------------------------------------- driver


def _available_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read available memory")


def _wait_idle(threshold: float, max_seconds: float) -> None:
    """Wait (at most ``max_seconds``) until the 1-minute load average is below ``threshold``."""
    deadline = time.monotonic() + max_seconds
    while os.getloadavg()[0] >= threshold and time.monotonic() < deadline:
        time.sleep(5)


def _itemsize(dtype: str) -> int:
    return {"fp32": 4, "bf16": 2, "fp16": 2}[dtype]


def _device_peak_tflops(dtype: str) -> Optional[float]:
    """Dense peak of the CUDA device (from its name), or None when unknown."""
    import torch

    name = torch.cuda.get_device_name().lower()
    table = {  # (fp32 without tf32, bf16/fp16 tensor-core dense), TFLOP/s
        "h100": (67.0, 989.0), "a100": (19.5, 312.0), "l40s": (91.6, 362.0), "l4": (30.3, 121.0),
        "a10": (31.2, 125.0), "4090": (82.6, 165.0), "v100": (15.7, 125.0), "t4": (8.1, 65.0),
    }
    for key, (fp32, half) in table.items():
        if key in name:
            return fp32 if dtype == "fp32" else half
    return None


def _run_subprocess(task: Dict[str, Any], cap: Optional[int]) -> Tuple[Optional[Dict[str, Any]], str]:
    """Run one worker task in a fresh interpreter: (result or None, failure reason)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(task)]
    if cap is not None:
        cmd += ["--mem-cap", str(cap)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return None, ("OOM" if "memory" in tail.lower() else f"failed: {tail[:120]}")
    return json.loads(lines[-1][len("RESULT ") :]), ""


def run_problem_cpu(
    problem: Problem, methods: List[str], repeats: int,
    measured: Dict[Tuple[str, str, int, int], Tuple[int, int]],
) -> List[Dict[str, Any]]:
    """Memory of each method (one fresh process each), then interleaved timings (one process)."""
    rows = {m: {"method": m, "n": problem.n, "h": problem.h, "v": problem.v, "dtype": problem.dtype} for m in methods}
    fits = []
    margin = 1 << 30
    for method in methods:
        row = rows[method]
        avail = _available_bytes()
        prev = measured.get((method, problem.dtype, problem.h, problem.v))
        if prev is not None:
            # The weight gradient (V*H) does not grow with N; the rest is taken as linear in N.
            fixed = problem.v * problem.h * _itemsize(problem.dtype)
            estimate: Optional[float] = fixed + max(0, prev[1] - fixed) * problem.n / prev[0]
            need = int(estimate * 1.1)
        else:
            estimate = None
            need = _PEAK_MODEL[method](problem.n, problem.h, problem.v, _itemsize(problem.dtype))
        if need + margin > avail:
            row["skipped"] = f"needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available"
            if estimate is not None:
                row["est_peak_fb"] = int(estimate)
            continue
        res, why = _run_subprocess({"kind": "memory", "problem": problem.__dict__, "methods": [method]},
                                   avail - margin // 2)
        if res is None:
            row["skipped"] = why
            continue
        row.update(res)
        measured[(method, problem.dtype, problem.h, problem.v)] = (problem.n, int(res["peak_fb"]))
        fits.append((method, int(res["peak_fb"])))
    if fits:
        avail = _available_bytes()
        res, why = _run_subprocess(
            {"kind": "time", "problem": problem.__dict__, "methods": [m for m, _ in fits], "repeats": repeats},
            avail - margin // 2,
        )
        for method, _ in fits:
            if res is None:
                rows[method]["skipped"] = f"timing run {why}"
            else:
                rows[method].update(res[method])
    return [rows[m] for m in methods]


def run_problem_cuda(problem: Problem, methods: List[str], repeats: int) -> List[Dict[str, Any]]:
    import torch

    rows = []
    ok = []
    for method in methods:
        row: Dict[str, Any] = {"method": method, "n": problem.n, "h": problem.h, "v": problem.v,
                               "dtype": problem.dtype, "device_peak_tflops": _device_peak_tflops(problem.dtype)}
        try:
            row.update(measure_memory(problem, method))
            ok.append(method)
        except RuntimeError as exc:  # e.g. CUDA OOM of the naive path
            row["skipped"] = str(exc).splitlines()[0][:80]
        torch.cuda.empty_cache()
        rows.append(row)
    if ok:
        times = measure_times(problem, ok, repeats)
        for row in rows:
            row.update(times.get(row["method"], {}))
    return rows


def _fmt_table(rows: List[Dict[str, Any]], markdown: bool, peak_share: bool) -> str:
    heads = ["method", "dtype", "N", "H", "V", "fwd ms", "bwd ms", "f+b ms", "f+b CPU s", "fwd GF/s", "bwd GF/s",
             "f+b GF/s", "peak f+b MiB", "vs naive", "peak fwd(no grad) MiB", "load"]
    if peak_share:
        heads.append("f+b % of peak")
    naive_peak: Dict[Tuple[int, int, int, str], Tuple[float, str]] = {}
    for r in rows:
        if r["method"] != "naive":
            continue
        key = (r["n"], r["h"], r["v"], r["dtype"])
        if r.get("peak_fb") is not None:
            naive_peak[key] = (r["peak_fb"], "")
        elif r.get("est_peak_fb") is not None:  # too big to run here: extrapolated from a smaller N
            naive_peak[key] = (r["est_peak_fb"], " (est.)")
    body = []
    for r in rows:
        nhv = r["n"] * r["h"] * r["v"]
        if "skipped" in r:
            cells = [r["method"], r["dtype"], str(r["n"]), str(r["h"]), str(r["v"]), f"skipped: {r['skipped']}"]
            cells += [""] * (len(heads) - len(cells))
            if r.get("est_peak_fb") is not None:
                cells[heads.index("peak f+b MiB")] = f"~{r['est_peak_fb'] / 2**20:.0f} (est.)"
        else:
            ref = naive_peak.get((r["n"], r["h"], r["v"], r["dtype"]))
            share = f"{100 * r['peak_fb'] / ref[0]:.1f}%{ref[1]}" if ref else "-"
            cells = [
                r["method"], r["dtype"], str(r["n"]), str(r["h"]), str(r["v"]),
                f"{1e3 * r['fwd_s']:.0f}", f"{1e3 * r['bwd_s']:.0f}", f"{1e3 * r['tot_s']:.0f}",
                f"{r['cpu_s']:.1f}" if r.get("cpu_s") is not None else "-",
                f"{2 * nhv / r['fwd_s'] / 1e9:.0f}", f"{6 * nhv / r['bwd_s'] / 1e9:.0f}",
                f"{8 * nhv / r['tot_s'] / 1e9:.0f}",
                f"{r['peak_fb'] / 2**20:.0f}", share, f"{r['peak_fwd'] / 2**20:.0f}",
                r.get("load", "-"),
            ]
            if peak_share:
                pk = r.get("device_peak_tflops")
                cells.append(f"{100 * 8 * nhv / r['tot_s'] / 1e12 / pk:.1f}%" if pk else "-")
        body.append(cells)
    return format_table(heads, body, markdown, text_columns=5)


def _parse_shapes(text: str) -> List[Tuple[int, int, int]]:
    shapes = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        try:
            n, h, v = (int(x) for x in part.split(","))
        except ValueError:
            raise SystemExit(f"--shapes: expected 'N,H,V;N,H,V...' with integers, got {part!r}")
        if min(n, h, v) < 1:
            raise SystemExit(f"--shapes: sizes must be positive, got {part!r}")
        shapes.append((n, h, v))
    return shapes


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"one small shape ({QUICK_SHAPES}), 2 repeats")
    ap.add_argument("--shapes", default=None, help=f"'N,H,V;...' (default {DEFAULT_SHAPES})")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16, fp16")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per config (median); default 3, quick 2")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="before each CPU config, wait up to this long for the 1-min load average to fall "
                         "below threads + 0.5 (other work on a shared machine skews timings)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mem-cap", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker is not None:
        res = run_worker(json.loads(args.worker), args.mem_cap)
        print("RESULT " + json.dumps(res), flush=True)
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shapes = _parse_shapes(args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES))
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            raise SystemExit(f"--dtypes: unknown dtype {d!r}; expected some of {', '.join(DTYPES)}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown method {m!r}; expected some of {', '.join(METHODS)}")
    if "liger" in methods:
        import importlib.util

        if device != "cuda" or importlib.util.find_spec("liger_kernel") is None:
            methods.remove("liger")
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 3)
    if repeats < 1:
        raise SystemExit("--repeats must be >= 1")

    print(f"# device={device} threads={args.threads} repeats={repeats} torch={torch.__version__}", flush=True)
    rows: List[Dict[str, Any]] = []
    measured: Dict[Tuple[str, str, int, int], Tuple[int, int]] = {}
    for n, h, v in sorted(shapes, key=lambda s: (s[1], s[2], s[0])):
        for dtype in dtypes:
            problem = Problem(n=n, h=h, v=v, dtype=dtype, device=device, threads=args.threads)
            t0 = time.perf_counter()
            if device == "cpu" and args.wait_idle > 0:
                _wait_idle(args.threads + 0.5, args.wait_idle)
            load_before = os.getloadavg()[0]
            if device == "cuda":
                got = run_problem_cuda(problem, methods, repeats)
            else:
                got = run_problem_cpu(problem, methods, repeats, measured)
            load = f"{load_before:.1f}-{os.getloadavg()[0]:.1f}"
            for row in got:
                row["load"] = load
                status = row.get("skipped", f"f+b {row.get('tot_s', 0):.2f}s")
                print(f"# {row['method']:12s} {dtype} N={n} H={h} V={v}: {status}", flush=True)
            print(f"#   ({time.perf_counter() - t0:.0f}s wall, load {load})", flush=True)
            rows.extend(got)
    order = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (r["h"], r["v"], r["n"], r["dtype"], order[r["method"]]))
    print(_fmt_table(rows, args.markdown, peak_share=device == "cuda"))


if __name__ == "__main__":
    main()
