"""Pages for held-out requests: which requests, and how each kind of method lays out its pages.

The held-out requests are the eval data files' (``data.eval_files``, or the
synth stage's eval split), the first ``eval.num_requests`` of them. A saved
policy lays out its pages by its kind (:mod:`pagerl.eval.policy_kinds`; a
language model, ``"lm"``, is registered here and decodes as ``eval.*`` says),
a baseline by its function in :mod:`pagerl.eval.baseline_policies`.

A language model's held-out pages are decoded and scored through one entry
point, :class:`HeldoutEval`: the eval stage decodes with it in this process
(:func:`policy_pages`), the RL stage's periodic evaluation
(:mod:`pagerl.rl.controller`, ``rl.eval_every``) spreads its chunks over the
rollout workers' synced weights and turns their pages into figures with it, so
that curve's last point is the eval stage's number for the RL policy.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pagerl.data.io import read_impressions
from pagerl.data.types import Request
from pagerl.envs import PageEnv, env_from_recipe
from pagerl.eval.baseline_policies import BASELINES, baseline_rng
from pagerl.eval.policy_kinds import LM, register_policy_kind
from pagerl.eval.scoring import METRICS, PAIRED_METRICS, EvalError, MethodPages, Page, aggregate, score_method
from pagerl.models.build import load_policy
from pagerl.models.generate import generate_pages
from pagerl.tokenization.tokenizer import load_policy_tokenizer
from pagerl.tracking.progress import Progress

log = logging.getLogger(__name__)


def heldout_requests(recipe: Any, run_dir: Path, limit: Optional[int] = None) -> List[Request]:
    """The first ``eval.num_requests`` requests (0: all) of the eval data files, or the first
    ``limit`` (0: ``eval.num_requests``) when given (the RL stage's ``rl.eval_requests``).

    Files: ``data.eval_files``, or ``<run_dir>/data/eval.jsonl`` (what the
    synth stage writes) when that list is empty.
    """
    files = heldout_files(recipe, run_dir)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        key = "data.eval_files" if recipe.data.eval_files else "the synth stage's output"
        raise EvalError(f"{key}: held-out data file(s) not found: {', '.join(missing)}")
    loaded = read_impressions(files, on_bad_row=recipe.data.on_bad_row,
                              max_bad_fraction=recipe.data.max_bad_fraction)
    log.info("[eval] %s", loaded.summary)
    key = "eval.num_requests" if not limit else "rl.eval_requests"
    limit = int(limit or recipe.eval.num_requests)
    if limit < 0:
        raise EvalError(f"{key}: expected 0 (all) or a positive count, got {limit}")
    requests = [imp.request for imp in loaded.impressions]
    if limit:
        requests = requests[:limit]
    if not requests:
        raise EvalError(f"{', '.join(files)}: no held-out requests to evaluate")
    return requests


def heldout_files(recipe: Any, run_dir: Path) -> List[str]:
    """``data.eval_files``, or ``<run_dir>/data/eval.jsonl`` (the synth stage's eval split)."""
    return list(recipe.data.eval_files) or [str(Path(run_dir) / "data" / "eval.jsonl")]


def policy_pages(recipe: Any, model_dir: str, requests: Sequence[Request]) -> MethodPages:
    """Pages of a saved policy for ``requests``, decoded as ``eval.*`` says.

    The checkpoint directory holds the model (safetensors) and the tokenizer
    it was trained with, whose stored serialization settings make the prompts
    exactly those of training. An invalid generated page (possible only with
    ``eval.constrained: false``) becomes None for scoring; its parsed prefix
    and the parser's reason are kept for ``pages.jsonl``.
    """
    model = load_policy(model_dir, recipe.model)
    tokenizer = load_policy_tokenizer(model_dir)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise EvalError(
            f"{model_dir}: the tokenizer has {len(tokenizer)} tokens but the model only {rows} embeddings; "
            "was the tokenizer saved with this checkpoint?"
        )
    progress = Progress("eval", total=len(requests), every_s=recipe.tracking.progress_every_s)
    return learned_pages(HeldoutEval(recipe, requests).decode(model, tokenizer, progress))


@register_policy_kind(LM)
def _language_model_pages(recipe: Any, policy_dir: str, requests: Sequence[Request], env: Any) -> MethodPages:
    return policy_pages(recipe, policy_dir, requests)


def decoding_options(recipe: Any) -> Dict[str, Any]:
    """The keyword arguments of :func:`pagerl.models.generate.generate_pages` that ``eval.*`` sets."""
    e = recipe.eval
    return {"greedy": e.decoding == "greedy", "temperature": float(e.temperature),
            "constrained": bool(e.constrained), "batch_size": int(e.batch_size)}


def decoding_chunks(recipe: Any, requests: Sequence[Request]) -> List[Tuple[List[Request], int]]:
    """``requests`` in chunks of ``eval.batch_size``, each with its own seed (``run.seed`` + its
    offset), so a chunk's pages depend neither on how far another chunk sampled nor on which
    process decodes it. (A chunk is one call of ``generate_pages``, which batches by prompt length.)"""
    size = int(recipe.eval.batch_size)
    return [(list(requests[start:start + size]), int(recipe.run.seed) + start)
            for start in range(0, len(requests), size)]


def learned_pages(generated: Sequence[Any]) -> MethodPages:
    """A learned policy's generated pages for scoring: an invalid one (possible only with
    ``eval.constrained: false``) becomes None, its parsed prefix and reason kept."""
    return MethodPages(
        pages=[list(g.item_ids) if g.valid else None for g in generated],
        generation=[{"items": list(g.item_ids), "valid": g.valid, "reason": g.reason, "detail": g.detail}
                    for g in generated],
    )


class HeldoutEval:
    """A language model's pages for held-out ``requests`` as the eval stage decodes and scores them.

    ``chunks`` (:func:`decoding_chunks`: the requests in chunks of ``eval.batch_size``, each with its
    own seed) and ``options`` (:func:`decoding_options`: the ``generate_pages`` keywords of
    ``eval.*``) are what to decode, wherever the weights are: :meth:`decode` runs them in this
    process (the eval stage), the RL stage hands them to its rollout workers. :meth:`figures` scores
    the pages decoded, in request order, by the eval stage's :func:`~pagerl.eval.scoring.score_method`
    and :func:`~pagerl.eval.scoring.aggregate` on the recipe's environment.
    """

    def __init__(self, recipe: Any, requests: Sequence[Request]) -> None:
        self.recipe = recipe
        self.requests = list(requests)
        self.chunks = decoding_chunks(recipe, self.requests)
        self.options = decoding_options(recipe)
        self._sim: Optional[PageEnv] = None  # built at the first scoring; a decoding caller never needs it

    def decode(self, model: Any, tokenizer: Any, progress: Optional[Progress] = None) -> List[Any]:
        """One :class:`~pagerl.models.generate.GeneratedPage` per request, decoded here, chunk by chunk."""
        generated: List[Any] = []
        for chunk, seed in self.chunks:
            generated.extend(generate_pages(model, tokenizer, chunk, seed=seed, **self.options))
            if progress is not None:
                progress.update(len(generated))
        return generated

    def figures(self, generated: Sequence[Any]) -> Dict[str, float]:
        """``eval/<metric>`` (the names of ``eval/results.json``: means over the requests, an invalid page
        scoring 0), ``eval/<metric>_se`` of the paired metrics and ``eval/requests``, of the pages
        ``generated`` for the requests in order (one per request)."""
        if self._sim is None:
            self._sim = eval_simulator(self.recipe)
        row = aggregate(score_method(learned_pages(generated).pages, self.requests, self._sim,
                                     k=eval_k(self.recipe)))
        out = {f"eval/{m}": float(row[m]) for m in METRICS if row[m] is not None}
        out.update({f"eval/{m}_se": float(row[f"{m}_se"]) for m in PAIRED_METRICS if row[f"{m}_se"] is not None})
        out["eval/requests"] = float(row["count"])
        return out


def eval_simulator(recipe: Any) -> PageEnv:
    """The environment whose ground truth scores every page: ``env.name`` of the recipe,
    its world fixed by ``run.seed`` (:func:`pagerl.envs.env_from_recipe`)."""
    return env_from_recipe(recipe)


def eval_k(recipe: Any) -> Optional[int]:
    """The NDCG cut-off passed to ``score_page`` (None: the page size)."""
    return int(recipe.eval.ndcg_k) or None


def baseline_pages(name: str, sim: PageEnv, requests: Sequence[Request], seed: int,
                   every_s: float = 10.0) -> MethodPages:
    """Pages of one registered baseline, from its own random stream."""
    fn, rng = BASELINES[name], baseline_rng(seed, name)
    progress = Progress(f"eval {name}", total=len(requests), every_s=every_s)
    pages: List[Page] = []
    inexact = 0
    for request in requests:
        page = fn(sim, request, rng)
        inexact += getattr(page, "exact", True) is False
        pages.append(list(page))
        progress.update(len(pages))
    notes = []
    if inexact:
        notes.append(f"`{name}`: {inexact} of {len(requests)} pages came from beam search, "
                     "not an exhaustive search (not proven optimal).")
    return MethodPages(pages=pages, notes=notes)
