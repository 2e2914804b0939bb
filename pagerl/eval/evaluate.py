"""The evaluation stage: pages for held-out requests, scored exactly by the simulator.

Every method (the learned policy and the reference policies of
:mod:`pagerl.eval.baselines`) lays out one page per held-out request; each
page is scored by :meth:`pagerl.sim.simulator.Simulator.score_page`, which
computes expectations under the simulator's ground truth (no sampling noise
in the metric itself). A method's number is the mean over requests, with its
standard error over requests, so two methods can be compared with the
spread the request sample implies.

Outputs: ``<run_dir>/eval/results.json`` (the table the report reads),
``<run_dir>/eval/pages.jsonl`` (every page of every method, for inspection),
and the means in ``metrics.jsonl`` / TensorBoard under stage ``eval``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from pagerl.config.schema import RecipeConfig
from pagerl.data.io import read_impressions
from pagerl.data.types import Request
from pagerl.errors import PageRLError
from pagerl.eval.baselines import BASELINES
from pagerl.sim.simulator import PageScore, Simulator
from pagerl.sim.world import World
from pagerl.tracking.metrics import MetricsLogger
from pagerl.tracking.progress import Progress

METRICS = ("ndcg", "expected_clicks", "expected_gmv", "valid_rate", "diversity", "redundancy")


def aggregate(scores: Sequence[PageScore]) -> Dict[str, float]:
    """Mean and standard error over requests of each metric of :data:`METRICS`."""
    out: Dict[str, float] = {"count": len(scores)}
    columns = {
        "ndcg": [s.ndcg for s in scores],
        "expected_clicks": [s.expected_clicks for s in scores],
        "expected_gmv": [s.expected_gmv for s in scores],
        "valid_rate": [float(s.valid) for s in scores],
        "diversity": [s.diversity for s in scores],
        "redundancy": [s.redundancy for s in scores],
    }
    for name, values in columns.items():
        arr = np.asarray(values, dtype=np.float64)
        out[name] = float(arr.mean()) if len(arr) else math.nan
        out[f"{name}_se"] = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else math.nan
    return out


def evaluate(
    pages_by_method: Dict[str, Sequence[Optional[Sequence[str]]]],
    requests: Sequence[Request],
    sim: Simulator,
    k: Optional[int] = None,
) -> Dict[str, Dict[str, float]]:
    """Score every method's pages (``None`` = no page: scored as an invalid empty page)."""
    table: Dict[str, Dict[str, float]] = {}
    for method, pages in pages_by_method.items():
        if len(pages) != len(requests):
            raise ValueError(f"method {method!r} has {len(pages)} pages for {len(requests)} requests")
        scores = [sim.score_page(req, list(page) if page is not None else [], k=k)
                  for req, page in zip(requests, pages)]
        table[method] = aggregate(scores)
    return table


def heldout_requests(recipe: RecipeConfig, run_dir: Path) -> List[Request]:
    files = list(recipe.data.eval_files) or [str(run_dir / "data" / "eval.jsonl")]
    loaded = read_impressions(files, on_bad_row=recipe.data.on_bad_row,
                              max_bad_fraction=recipe.data.max_bad_fraction)
    print(f"[eval] {loaded.summary}", flush=True)
    requests = [imp.request for imp in loaded.impressions][: recipe.eval.num_requests]
    if not requests:
        raise PageRLError(f"{', '.join(files)}: no held-out requests to evaluate (eval.num_requests="
                          f"{recipe.eval.num_requests})")
    return requests


def policy_pages(recipe: RecipeConfig, model_dir: str, requests: Sequence[Request]) -> List[Any]:
    """Pages of a saved policy for ``requests``, decoded as ``eval.*`` says, with progress."""
    from pagerl.models.build import load_policy
    from pagerl.models.generate import generate_pages
    from pagerl.tokenization.tokenizer import load_policy_tokenizer

    model = load_policy(model_dir, recipe.model)
    model.eval()
    tokenizer = load_policy_tokenizer(model_dir)
    e = recipe.eval
    progress = Progress("eval", total=len(requests))
    out: List[Any] = []
    for start in range(0, len(requests), e.batch_size):
        chunk = list(requests[start : start + e.batch_size])
        out.extend(generate_pages(model, tokenizer, chunk, greedy=e.decoding == "greedy",
                                  temperature=e.temperature, constrained=e.constrained,
                                  batch_size=e.batch_size, seed=recipe.run.seed + start))
        progress.update(len(out))
    return out


def run_eval_stage(
    recipe: RecipeConfig, run_dir: Path, model_dir: Optional[str] = None, policy_name: str = "sft"
) -> Dict[str, Any]:
    """Evaluate the policy in ``model_dir`` (if any) and the recipe's baselines; write and return the table."""
    run_dir = Path(run_dir)
    requests = heldout_requests(recipe, run_dir)
    sim = Simulator(World.from_config(recipe.sim, recipe.run.seed))
    k = recipe.eval.ndcg_k or None
    pages: Dict[str, List[Optional[List[str]]]] = {}
    details: Dict[str, List[Dict[str, Any]]] = {}
    if model_dir is not None:
        generated = policy_pages(recipe, model_dir, requests)
        pages[policy_name] = [g.item_ids if g.valid else None for g in generated]
        details[policy_name] = [{"valid": g.valid, "reason": g.reason} for g in generated]
    rng = np.random.default_rng([recipe.run.seed, 7])  # a stream of its own: eval is repeatable
    for name in recipe.eval.baselines:
        if name not in BASELINES:
            raise PageRLError(f"eval.baselines: unknown baseline {name!r}; known: {', '.join(sorted(BASELINES))}")
        pages[name] = [BASELINES[name](sim, req, rng) for req in requests]

    table = evaluate(pages, requests, sim, k=k)
    results = {
        "methods": table,
        "k": k or recipe.sim.page_size,
        "num_requests": len(requests),
        "decoding": recipe.eval.decoding,
        "constrained": recipe.eval.constrained,
        "model_dir": model_dir,
    }
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    with open(out / "pages.jsonl", "w") as f:
        for i, req in enumerate(requests):
            row = {"request_id": req.request_id,
                   "pages": {name: pages[name][i] for name in pages}}
            for name, det in details.items():
                row[f"{name}_decoding"] = det[i]
            f.write(json.dumps(row) + "\n")
    with MetricsLogger(run_dir, jsonl=recipe.tracking.jsonl, tensorboard=recipe.tracking.tensorboard) as log:
        log.log("eval", 0, {f"{m}/{metric}": row[metric] for m, row in table.items() for metric in METRICS})
    print(_format_table(table), flush=True)
    return results


def _format_table(table: Dict[str, Dict[str, float]]) -> str:
    head = f"{'method':<12}" + "".join(f"{m:>17}" for m in METRICS)
    lines = [head]
    for name, row in table.items():
        lines.append(f"{name:<12}" + "".join(f"{row[m]:>17.4f}" for m in METRICS))
    return "\n".join(lines)


__all__ = ["aggregate", "evaluate", "run_eval_stage", "METRICS"]
