"""RL throughput: the distributed loop against one plain single-process loop (a measurement, not a test).

For each shape it builds a fresh policy and a simulator world of that shape,
then runs the RL step of :class:`pagerl.rl.controller.RLController` three ways
on the same model and batch (32 requests x 4 pages, GRPO, simulator rewards):

- ``single process``: every role in this process (:mod:`pagerl.rl.local`): one
  trainer rank, one rollout worker, one reward worker, the weight sync an
  in-memory hand-over, torch using every core. The controller's own step,
  with no Ray, no serialisation and no placement: the reference;
- ``ray on-policy``: the quickstart's layout, two ZeRO-2 trainer ranks, one
  rollout worker and one reward worker as Ray actors in one placement group,
  weights through the object store;
- ``ray overlap``: the same with ``rl.overlap`` (step t+1 sampled while step t trains).

It prints, per shape and mode: pages/s and tokens/s over the timed steps,
seconds per phase, the share of step time outside model compute (the step's
wall time minus the seconds the roles spent generating, scoring experience and
updating, measured inside them; reward scoring and the weight sync count as
outside, since the rewards here come from the simulator), the weight-sync
MB/s, peak resident memory per role, and the ratio of the distributed loop's
pages/s to the single-process loop's.

Usage:
    python benchmarks/bench_rl.py                      # both shapes, 1 warm-up + 4 timed steps
    python benchmarks/bench_rl.py --shapes quickstart --steps 8 --markdown
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
    from pagerl.config.load import load_recipe

    overrides = [f"run.output_dir={out}", f"run.name={shape}", "run.stages=[rl]", "rewards.source=simulator",
                 "rl.algorithm=grpo", f"rl.steps={steps}", "rl.checkpoint_every=0", "rl.timeout_s=600",
                 "tracking.report=false", *SHAPES[shape]]
    if mode == "single process":
        overrides += LOCAL
    if mode == "ray overlap":
        overrides.append("rl.overlap=true")
    recipe, _ = load_recipe(REPO / "recipes" / "quickstart.yaml", overrides)
    return recipe


def save_policy(recipe: Any, directory: Path) -> None:
    """A fresh policy for the shape's requests, saved as a run would save it."""
    from pagerl.models.build import build_policy
    from pagerl.tokenization.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(recipe.model, world_requests(recipe))
    model = build_policy(recipe.model, tokenizer, seed=5)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def run_mode(shape: str, mode: str, out: Path, warmup: int, steps: int) -> Dict[str, Any]:
    from pagerl.rl.controller import RLController
    from pagerl.rl.local import local_roles

    recipe = recipe_for(shape, mode, out, warmup + steps)
    policy_dir = out / shape / "policy"
    if not policy_dir.is_dir():
        policy_dir.mkdir(parents=True)
        save_policy(recipe, policy_dir)
    requests = world_requests(recipe)
    local = mode == "single process"
    controller = RLController(recipe, out / shape, str(policy_dir), requests,
                              build_roles=local_roles if local else None)
    if local:
        torch.set_num_threads(os.cpu_count() or 1)  # the reference gets the whole machine
    rows, compute = [], []
    try:
        for step in range(warmup + steps):
            controller.trainers.call("take_compute_seconds")
            row = controller.step(step, prefetch=step + 1 < warmup + steps)
            spent = controller.trainers.call("take_compute_seconds")
            if step >= warmup:
                rows.append(row)
                # ranks work in parallel: a phase takes as long as its slowest rank
                compute.append(max(s.get("experience", 0.0) for s in spent) + max(s.get("train", 0.0) for s in spent)
                               + controller.last_rollout_seconds)
        memory = {"trainer": max(m["rss_mb"] for m in controller.trainers.call("peak_memory_mb")),
                  "rollout": max(m["rss_mb"] for m in controller.rollouts.call("peak_memory_mb")),
                  "reward": max(m["rss_mb"] for m in controller.rewards.peak_memory_mb())}
    finally:
        controller.shutdown()
    wall = sum(r["step_s"] for r in rows)
    return {
        "pages_per_s": sum(r["pages"] for r in rows) / wall,
        "tokens_per_s": sum(r["tokens_per_s"] * r["step_s"] for r in rows) / wall,
        "step_s": wall / len(rows),
        "phases": {p: float(np.mean([r[f"seconds_{p}"] for r in rows]))
                   for p in ("generate", "reward", "experience", "train", "sync")},
        "outside_share": 1.0 - sum(compute) / wall,
        "sync_mb_per_s": float(np.mean([r["sync_mb_per_s"] for r in rows])),
        "sync_mb": rows[-1]["sync_mb"],
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    from pagerl.distributed import ray_cluster

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    results: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_rl_") as tmp:
        owned = ray_cluster.connect("")
        try:
            for shape in args.shapes:
                for mode in MODES:
                    started = time.perf_counter()
                    results[f"{shape} | {mode}"] = run_mode(shape, mode, Path(tmp), args.warmup, args.steps)
                    print(f"[bench] {shape}, {mode}: {time.perf_counter() - started:.0f} s", flush=True)
        finally:
            ray_cluster.shutdown(owned)
    header = ["shape", "mode", "pages/s", "vs single", "tokens/s", "step s", "generate", "reward", "experience",
              "train", "sync", "outside compute", "sync MB/s", "trainer MB", "rollout MB", "reward MB"]
    lines = []
    for key, r in results.items():
        shape, mode = key.split(" | ")
        base = results[f"{shape} | single process"]["pages_per_s"]
        p = r["phases"]
        lines.append([shape, mode, f"{r['pages_per_s']:.1f}", f"{r['pages_per_s'] / base:.2f}x",
                      f"{r['tokens_per_s']:.0f}", f"{r['step_s']:.2f}", *(f"{p[k]:.2f}" for k in p),
                      f"{100 * r['outside_share']:.0f}%", f"{r['sync_mb_per_s']:.0f}",
                      *(f"{r['memory_mb'][k]:.0f}" for k in ("trainer", "rollout", "reward"))])
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + " --- |" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for line in lines:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)))


if __name__ == "__main__":
    main()
