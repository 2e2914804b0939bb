"""Rollout/trainer logprob parity of the constrained policy, in fp32 and bf16 (a measurement, not a test).

Pages are sampled by rollout (``generate_pages(..., greedy=False,
constrained=True)``) with the policy in float32 or bfloat16, then rescored by
the trainer path ``CausalLMLogprobs(..., constraint=...)`` with the policy in
float32 or bfloat16 (the same weights cast). For every pair it prints, over
all response tokens (items and the forced EOS), the max and mean of
``|rollout logprob - trainer logprob|``; the row ``full vocab`` rescores with
the unconstrained trainer path, the mismatch the constrained mode removes.

Why bf16 rows are not 0: a bf16 rollout runs the backbone step by step on a
KV cache, the trainer runs it once over the whole sequence; both round every
activation to bf16, but in a different order, and the head logits themselves
are rounded to bf16 (8 mantissa bits) in both. The fp32 rows are the exactness
check of the constrained mode (the tests hold them to 1e-5).

Usage:
    python benchmarks/bench_constrained_parity.py                    # a fresh tiny pointer policy
    python benchmarks/bench_constrained_parity.py --run-dir runs/quickstart   # its trained SFT policy
    python benchmarks/bench_constrained_parity.py --requests 200 --markdown
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch
from tables import format_table  # benchmarks/tables.py, beside this script

from pagerl.config.schema import ModelConfig, TinyModelConfig
from pagerl.data.io import read_impressions
from pagerl.data.types import Item, Request, User
from pagerl.models.build import build_policy, load_policy
from pagerl.models.constrained_logprobs import PageTokens, ResponseConstraint
from pagerl.models.generate import GeneratedPage, generate_pages
from pagerl.models.logprobs import CausalLMLogprobs
from pagerl.tokenization import build_tokenizer, encode_prompt, load_policy_tokenizer


def synthetic_requests(count: int, max_candidates: int, seed: int) -> List[Request]:
    """Requests with varied N (2..max) and K (1..N), as the model tests use."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for r in range(count):
        n = int(torch.randint(2, max_candidates + 1, (1,), generator=gen))
        k = int(torch.randint(1, n + 1, (1,), generator=gen))
        items = [Item(f"r{r}-{j}", f"item {int(torch.randint(0, 50, (1,), generator=gen))}", f"cat{j % 5}",
                      2.0 + 9 * j) for j in range(n)]
        history = [f"cat{int(c)}" for c in torch.randint(0, 5, (r % 6,), generator=gen)]
        out.append(Request(f"r{r}", User("u", history_categories=history), items, k, query="q" if r % 2 else None))
    return out


def fresh_policy(count: int, seed: int) -> Tuple[Any, Any, List[Request], str]:
    cfg = ModelConfig(max_candidates=12, tiny=TinyModelConfig())  # the quickstart's tiny shape
    requests = synthetic_requests(count, 12, seed)
    tokenizer = build_tokenizer(cfg, requests)
    model = build_policy(cfg, tokenizer, seed=seed)
    return model, tokenizer, requests, f"fresh tiny pointer policy (hidden {cfg.tiny.hidden_size}, {cfg.tiny.num_layers} layers)"


def trained_policy(run_dir: Path, count: int) -> Tuple[Any, Any, List[Request], str]:
    model_dir = run_dir / "sft" / "final"
    model = load_policy(model_dir, ModelConfig(dtype="float32"))
    tokenizer = load_policy_tokenizer(str(model_dir))
    loaded = read_impressions(str(run_dir / "data" / "eval.jsonl"))
    requests = [imp.request for imp in loaded.impressions[:count]]
    return model, tokenizer, requests, f"SFT policy of {run_dir}"


def rescore(wrapper: CausalLMLogprobs, tokenizer: Any, requests: Sequence[Request], pages: Sequence[GeneratedPage],
            temperature: float, constrained: bool, batch_size: int = 32) -> List[List[float]]:
    """Per page, the trainer's logprob of each response token (right-padded batches, as SFT lays them out)."""
    out: List[List[float]] = []
    for begin in range(0, len(requests), batch_size):
        reqs, pgs = requests[begin : begin + batch_size], pages[begin : begin + batch_size]
        rows = []
        for request, page in zip(reqs, pgs):
            prompt = encode_prompt(tokenizer, request)
            rows.append((prompt + page.response_ids, [-100] * len(prompt) + page.response_ids))
        width = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for i, (row_ids, row_labels) in enumerate(rows):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            labels[i, : len(row_labels)] = torch.tensor(row_labels)
            mask[i, : len(row_ids)] = 1
        constraint = ResponseConstraint([len(r.candidates) for r in reqs], [r.page_size for r in reqs])
        with torch.no_grad():
            logp = wrapper(ids, mask, labels, temperature=temperature, constraint=constraint if constrained else None)
        keep = labels[:, 1:] != -100
        out += [logp[i][keep[i]].tolist() for i in range(len(rows))]
    return out


def gaps(pages: Sequence[GeneratedPage], trainer: Sequence[Sequence[float]]) -> Dict[str, float]:
    deltas = torch.cat([torch.tensor(p.token_logprobs, dtype=torch.float64) - torch.tensor(t, dtype=torch.float64)
                        for p, t in zip(pages, trainer)]).abs()
    eos = torch.tensor([abs(p.token_logprobs[-1] - t[-1]) for p, t in zip(pages, trainer)], dtype=torch.float64)
    per_page = torch.tensor([abs(p.logprob - sum(t)) for p, t in zip(pages, trainer)], dtype=torch.float64)
    return {"tokens": float(deltas.numel()), "max": float(deltas.max()), "mean": float(deltas.mean()),
            "eos_max": float(eos.max()), "page_mean": float(per_page.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="a finished run directory: use its sft/final policy and data/eval.jsonl requests")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--temperatures", default="0.7,1.0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    torch.manual_seed(args.seed)  # nothing here draws from the global RNG; fixed anyway

    if args.run_dir is not None:
        model, tokenizer, requests, what = trained_policy(args.run_dir, args.requests)
    else:
        model, tokenizer, requests, what = fresh_policy(args.requests, args.seed)
    models = {"fp32": model.to(torch.float32).eval(), "bf16": copy.deepcopy(model).to(torch.bfloat16).eval()}
    tokens = PageTokens.from_tokenizer(tokenizer)
    wrappers = {name: CausalLMLogprobs(m, page_tokens=tokens) for name, m in models.items()}
    shapes = sorted({(len(r.candidates), r.page_size) for r in requests})
    print(f"# {what}: {len(requests)} requests, {len(shapes)} distinct (N, K), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")

    header = ["T", "rollout", "trainer", "mode", "tokens", "max |Δ|", "mean |Δ|", "max |Δ| EOS", "mean |Δ| page"]
    rows: List[List[str]] = []
    t0 = time.perf_counter()
    for temperature in [float(t) for t in args.temperatures.split(",")]:
        for rollout_dtype in ("fp32", "bf16"):
            pages = generate_pages(models[rollout_dtype], tokenizer, requests, greedy=False, constrained=True,
                                   temperature=temperature, seed=args.seed)
            assert all(p.valid for p in pages)
            cases = [(d, True) for d in ("fp32", "bf16")] + ([("fp32", False)] if rollout_dtype == "fp32" else [])
            for trainer_dtype, constrained in cases:
                trainer = rescore(wrappers[trainer_dtype], tokenizer, requests, pages, temperature, constrained)
                g = gaps(pages, trainer)
                rows.append([f"{temperature:g}", rollout_dtype, trainer_dtype,
                             "constrained" if constrained else "full vocab", f"{int(g['tokens'])}",
                             f"{g['max']:.2e}", f"{g['mean']:.2e}", f"{g['eos_max']:.2e}", f"{g['page_mean']:.2e}"])
    elapsed = time.perf_counter() - t0

    print(format_table(header, rows, args.markdown, text_columns=4))
    print(f"# |Δ| = |rollout logprob - trainer logprob| per response token (nats); {elapsed:.1f} s")


if __name__ == "__main__":
    main()
