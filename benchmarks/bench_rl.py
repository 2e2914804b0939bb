"""RL throughput: the distributed loop against one plain single-process loop (a measurement, not a test).

For each shape it builds a fresh policy and a simulator world of that shape,
then runs the RL step of :class:`pagerl.rl.controller.RLController` three ways
on the same model and batch (32 requests x 4 pages, GRPO, simulator rewards):

- ``single process``: every role in this process (:mod:`pagerl.rl.roles.local`): one
  trainer rank, one rollout worker, one reward worker, the weight sync an
  in-memory hand-over. The controller's own step,
  with no Ray, no serialisation and no placement: the reference;
- ``ray on-policy``: the quickstart's layout, two ZeRO-2 trainer ranks, one
  rollout worker and one reward worker as Ray actors in one placement group,
  weights through the object store, on-policy; the rollout worker, which
  samples while every other role waits, runs a torch thread per core of the
  machine (``rl.rollout.torch_threads``);
- ``ray overlap``: the same with ``rl.overlap`` (step t+1 sampled while step t
  trains), the rollout worker at the one thread of its reserved CPUs, as in
  the quickstart.

It prints, per shape and mode: pages/s and tokens/s over the timed steps,
seconds per phase, the share of the timed wall time outside model compute
(seconds in which no role was generating, scoring rewards, computing
experience, updating or scoring the sync probe: the union of the spans the
roles record, :mod:`pagerl.distributed.compute_log`, so what overlaps counts
once; what is left is remote calls, serialisation, the weight transfer and
waiting), the weight-sync MB/s, peak resident memory per role, and the ratio
of the loop's pages/s to the single-process loop's. The single-process loop
runs before any Ray cluster is started, once per thread count in
``--single-threads``; the fastest is the reference.

Then, at the larger shape, the peak memory of one trainer micro-batch
(forward and backward of constrained logprobs and entropy) through the
trainer's constrained path against full-vocabulary logits, at the tiny
tokenizer's vocabulary and at grown ones (``--head-vocabs``), each in a
fresh process.

Usage:
    python benchmarks/bench_rl.py                      # both shapes, 2 warm-up + 10 timed steps
    python benchmarks/bench_rl.py --shapes quickstart --steps 8 --head-vocabs --markdown
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from tables import format_table  # benchmarks/tables.py, beside this script

REPO = Path(__file__).resolve().parents[1]

SHAPES: Dict[str, List[str]] = {
    # the quickstart's world and tiny model: 12 candidates, 5 slots, 2 layers, 64 wide
    "quickstart": [],
    # a larger page and model: 32 candidates, 10 slots, 4 layers, 256 wide
    "large": ["sim.candidates_per_request=32", "sim.page_size=10", "model.max_candidates=32",
              "model.tiny.num_layers=4", "model.tiny.hidden_size=256", "model.tiny.intermediate_size=512",
              "model.tiny.num_heads=8", "model.tiny.num_kv_heads=4", "model.tiny.max_position_embeddings=1024"],
}
MODES = ("single process", "ray on-policy", "ray overlap")
LOCAL = ["rl.trainer.num_ranks=1", "rl.trainer.cpus_per_rank=2", "rl.sync.transport=in_process"]


def recipe_for(shape: str, mode: str, out: Path, steps: int) -> Any:
    from pagerl.app.recipes import load_recipe

    overrides = [f"run.output_dir={out}", f"run.name={shape}", "run.stages=[rl]", "rewards.source=simulator",
                 "rl.algorithm=grpo", f"rl.steps={steps}", "rl.checkpoint_every=0", "rl.timeout_s=600",
                 "tracking.report=false", *SHAPES[shape]]
    if mode == "single process":
        overrides += LOCAL
    overrides.append(f"rl.overlap={'true' if mode == 'ray overlap' else 'false'}")  # the quickstart's is on
    if mode == "ray on-policy":  # the rollout worker samples while every other role waits: all cores
        overrides.append(f"rl.rollout.torch_threads={os.cpu_count() or 1}")
    recipe, _ = load_recipe(REPO / "recipes" / "quickstart.yaml", overrides)
    return recipe


def save_policy(recipe: Any, directory: Path, vocab: int = 0):
    """A fresh policy for the shape's requests, saved as a run would save it; ``(model, tokenizer)``.

    ``vocab`` above the tiny tokenizer's size grows the embedding and head to that many rows
    (tokens never sampled), as a real tokenizer's vocabulary would.
    """
    from pagerl.models.build import build_policy
    from pagerl.tokenization.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(recipe.model, world_requests(recipe))
    model = build_policy(recipe.model, tokenizer, seed=5)
    if vocab > model.get_output_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


def run_mode(shape: str, mode: str, out: Path, warmup: int, steps: int, threads: int = 0) -> Dict[str, Any]:
    """``warmup`` untimed steps, then ``steps`` timed ones; ``threads``: torch threads of the single process."""
    from pagerl.distributed.compute_log import covered_seconds
    from pagerl.rl.controller import RLController
    from pagerl.rl.roles.local import local_roles

    recipe = recipe_for(shape, mode, out, warmup + steps)
    policy_dir = out / shape / "policy"
    if not policy_dir.is_dir():
        policy_dir.mkdir(parents=True)
        save_policy(recipe, policy_dir)
    requests = world_requests(recipe)
    local = mode == "single process"
    controller = RLController(recipe, out / shape / mode.replace(" ", "_"), str(policy_dir), requests,
                              build_roles=local_roles if local else None)
    if local:
        torch.set_num_threads(threads)  # after the roles, which each set their own count
    total = warmup + steps
    try:
        for step in range(warmup):
            controller.step(step, prefetch=True)
        start = time.time()
        rows = [controller.step(step, prefetch=step + 1 < total) for step in range(warmup, total)]
        end = time.time()
        # Every role's compute spans, clipped to the timed window: warm-up spans fall outside it.
        spans = [span for group in (controller.trainers, controller.rollouts)
                 for spans in group.call("take_compute_spans") for span in spans]
        spans += controller.rewards.take_compute_spans()
        memory = {"trainer": max(m["rss_mb"] for m in controller.trainers.call("peak_memory_mb")),
                  "rollout": max(m["rss_mb"] for m in controller.rollouts.call("peak_memory_mb")),
                  "reward": max(m["rss_mb"] for m in controller.rewards.peak_memory_mb())}
    finally:
        controller.shutdown()
    wall = end - start
    return {
        "pages_per_s": sum(r["pages"] for r in rows) / wall,
        "tokens_per_s": sum(r["tokens_per_s"] * r["step_s"] for r in rows) / wall,
        "step_s": wall / len(rows),
        "phases": {p: float(np.mean([r[f"seconds_{p}"] for r in rows]))
                   for p in ("generate", "reward", "experience", "train", "sync")},
        "outside_share": 1.0 - covered_seconds(spans, start, end) / wall,
        "sync_mb_per_s": float(np.mean([r["sync_mb_per_s"] for r in rows])),
        "memory_mb": memory,
    }


_REQUESTS: Dict[str, Any] = {}


def world_requests(recipe: Any):
    """The shape's requests (rebuilt from the same seed, so every mode trains on the same ones)."""
    key = f"{recipe.sim.candidates_per_request}x{recipe.sim.page_size}"
    if key not in _REQUESTS:
        from pagerl.sim import Simulator, World

        sim = Simulator(World.from_config(recipe.sim, recipe.run.seed))
        rng = np.random.default_rng(11)
        _REQUESTS[key] = [sim.sample_request(rng, f"b{i}") for i in range(64)]
    return _REQUESTS[key]


# ------------------------------------------------------------------------------ head memory
HEAD_PATHS = ("constrained", "full logits")


def _rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}")


def head_memory(shape: str, vocab: int, path: str, micro_batch: int) -> Dict[str, float]:
    """Peak memory of one trainer micro-batch (forward and backward of constrained logprobs and entropy).

    ``constrained``: the trainer's path, :class:`pagerl.models.logprobs.CausalLMLogprobs` with the
    page constraint, which forms only the page vocabulary's logits. ``full logits``: the
    ``[B, L, V]`` float32 logits of every position, constrained and log-softmaxed afterwards, as a
    trainer that calls the model's head does. The policy's vocabulary is grown to ``vocab`` rows
    (new tokens never sampled), which is what a real tokenizer costs the second path.
    """
    from pagerl.models.constrained import constrain_response_logits
    from pagerl.models.constrained_logprobs import PageTokens, ResponseConstraint
    from pagerl.models.logprobs import CausalLMLogprobs, policy_logits
    from pagerl.rl.frames import pack
    from pagerl.rl.roles.layout import rollout_args
    from pagerl.rl.roles.rollout import RolloutWorker

    with tempfile.TemporaryDirectory(prefix="bench_rl_head_") as tmp:
        recipe = recipe_for(shape, "single process", Path(tmp), 1)
        model, tokenizer = save_policy(recipe, Path(tmp), vocab)
        native = len(tokenizer)
        samples = int(recipe.rl.rollout.samples_per_request)
        worker = RolloutWorker(*rollout_args(recipe, tmp))
        rollout = worker.generate(world_requests(recipe)[: max(1, micro_batch // samples)], 3)
    torch.set_num_threads(1)
    b = pack(rollout.prompt_ids, rollout.response_ids, rollout.num_candidates, rollout.page_sizes,
             int(tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id))
    tokens = PageTokens.from_tokenizer(tokenizer)
    temperature = float(recipe.rl.rollout.temperature)

    def constrained(rows: slice) -> torch.Tensor:
        wrapper = CausalLMLogprobs(model, page_tokens=tokens)
        logp, ent = wrapper(b["input_ids"][rows], b["attention_mask"][rows], b["labels"][rows],
                            temperature=temperature, return_entropy=True, prompt_end=b["prompt_end"][rows],
                            constraint=ResponseConstraint(b["num_candidates"][rows], b["page_sizes"][rows]))
        return logp.sum() + ent.sum()

    def full_logits(rows: slice) -> torch.Tensor:
        logits = policy_logits(model, b["input_ids"][rows], b["attention_mask"][rows], b["prompt_end"][rows])
        total = logits.new_zeros(())
        for i in range(logits.shape[0]):
            i_all = rows.start + i
            p, r = int(b["prompt_end"][i_all]), int(b["response_len"][i_all])
            emitted = b["input_ids"][i_all : i_all + 1, p : p + r]
            masked = constrain_response_logits(logits[i : i + 1, p - 1 : p + r - 1], emitted, tokens.candidate_ids,
                                               b["num_candidates"][i_all : i_all + 1],
                                               b["page_sizes"][i_all : i_all + 1], tokens.eos_id, tokens.pad_id)
            logp_all = torch.log_softmax(masked / temperature, -1)
            finite = torch.isfinite(logp_all)
            total = total + logp_all.gather(-1, emitted[..., None]).sum()
            total = total - (logp_all.exp() * logp_all.masked_fill(~finite, 0.0)).sum()
        return total

    step = {"constrained": constrained, "full logits": full_logits}[path]
    step(slice(0, 1)).backward()  # lazy allocations (autograd, BLAS workspaces) before the measurement
    model.zero_grad(set_to_none=True)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM) to the current one
    before = _rss_mb("VmRSS")
    started = time.perf_counter()
    step(slice(0, len(rollout))).backward()
    return {"peak_mb": _rss_mb("VmHWM") - before, "seconds": time.perf_counter() - started,
            "pages": len(rollout), "length": int(b["input_ids"].shape[1]), "native_vocab": native}


def measure_head_memory(shape: str, vocabs: List[int], micro_batch: int) -> List[Dict[str, Any]]:
    """:func:`head_memory` for every vocabulary and path, each in a fresh process (peaks do not mix)."""
    import json
    import subprocess
    import sys

    rows = []
    for vocab in vocabs:
        for path in HEAD_PATHS:
            proc = subprocess.run([sys.executable, __file__, "--head-memory", shape, str(vocab), path,
                                   str(micro_batch)], capture_output=True, text=True, timeout=1800)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("HEAD ")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"head memory ({shape}, V={vocab}, {path}) failed:\n{proc.stderr[-3000:]}")
            rows.append({"vocab": vocab, "path": path, **json.loads(lines[-1][5:])})
            print(f"[bench] head memory, V={vocab}, {path}: {rows[-1]['peak_mb']:.0f} MB", flush=True)
    return rows


def main() -> None:
    import json
    import sys

    if len(sys.argv) == 6 and sys.argv[1] == "--head-memory":  # one measurement of measure_head_memory
        print("HEAD " + json.dumps(head_memory(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--warmup", type=int, default=2)
    # 6 timed steps at the larger shape put the on-policy loop at 0.94x in one run and 10 at 1.00x in the next
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--single-threads", nargs="+", type=int, default=sorted({1, os.cpu_count() or 1}),
                        help="torch threads of the single-process loop; the fastest is the reference")
    parser.add_argument("--head-vocabs", nargs="*", type=int, default=[0, 32768, 131072],
                        help="vocabularies of the head-memory table (0: the tiny tokenizer's own)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    from pagerl.distributed import ray_cluster

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    results: Dict[str, Dict[str, Any]] = {}
    reference: Dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_rl_") as tmp:
        for shape in args.shapes:
            # The single-process loop first, with no Ray cluster on the machine at all.
            for threads in args.single_threads:
                started = time.perf_counter()
                key = f"{shape} | single process, {threads} thread{'s' if threads > 1 else ''}"
                results[key] = run_mode(shape, "single process", Path(tmp), args.warmup, args.steps, threads)
                reference[shape] = max(reference.get(shape, 0.0), results[key]["pages_per_s"])
                print(f"[bench] {key}: {time.perf_counter() - started:.0f} s", flush=True)
            owned = ray_cluster.connect("")
            try:
                for mode in MODES[1:]:
                    started = time.perf_counter()
                    results[f"{shape} | {mode}"] = run_mode(shape, mode, Path(tmp), args.warmup, args.steps)
                    print(f"[bench] {shape}, {mode}: {time.perf_counter() - started:.0f} s", flush=True)
            finally:
                ray_cluster.shutdown(owned)
    head = ["shape", "mode", "pages/s", "vs single", "tokens/s", "step s", "generate", "reward", "experience",
            "train", "sync", "outside compute", "sync MB/s", "trainer MB", "rollout MB", "reward MB"]
    lines = []
    for key, r in results.items():
        shape, mode = key.split(" | ")
        p = r["phases"]
        lines.append([shape, mode, f"{r['pages_per_s']:.1f}", f"{r['pages_per_s'] / reference[shape]:.2f}x",
                      f"{r['tokens_per_s']:.0f}", f"{r['step_s']:.2f}", *(f"{p[k]:.2f}" for k in p),
                      f"{100 * r['outside_share']:.1f}%", f"{r['sync_mb_per_s']:.0f}",
                      *(f"{r['memory_mb'][k]:.0f}" for k in ("trainer", "rollout", "reward"))])
    print()
    print(format_table(head, lines, args.markdown, text_columns=2))
    if args.head_vocabs:
        shape = "large" if "large" in args.shapes else args.shapes[-1]
        micro = int(recipe_for(shape, "single process", Path("."), 1).rl.trainer.micro_batch_size)
        rows = measure_head_memory(shape, [v for v in args.head_vocabs], micro)
        print(f"\ntrainer micro-batch at the {shape} shape ({rows[0]['pages']} pages, {rows[0]['length']} tokens): "
              "peak memory of forward + backward of the constrained logprobs and entropy")
        head = ["vocabulary", "path", "peak MB", "seconds"]
        print(format_table(head, [[str(r["vocab"] or r["native_vocab"]), r["path"], f"{r['peak_mb']:.0f}",
                                   f"{r['seconds']:.2f}"] for r in rows], args.markdown, text_columns=2))


if __name__ == "__main__":
    main()
