"""The reward model's view of the evaluated pages, beside the simulator's: over-optimisation in one number.

An RL policy trained on a learned reward can raise that reward while the users'
true value falls (it finds the pages the model overrates). The evaluation
therefore also scores every method's held-out pages with the run's reward
model and reports, per method, the mean page reward and the mean of the summed
item rewards, and for each learned policy the paired differences against the
other methods on the same requests, exactly as the simulator's figures are
paired (:func:`pagerl.eval.scoring.paired_differences`). A policy whose
reward-model difference against SFT is positive while its simulator
difference is not is over-optimising its reward model. With a click-trained
reward model (:mod:`pagerl.rewards.clicks`) both figures are in expected clicks,
the simulator's unit.

Only valid pages are scored; each method's count of them is reported, and a
paired difference uses the requests where both pages are valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from pagerl.data.types import Request
from pagerl.eval.stats import mean_se
from pagerl.rewards.models import HEADS_FILE, load_reward_models

FIGURES = ("rm_page", "rm_item_sum")


def reward_model_dir(recipe: Any, run_dir: Path) -> Optional[Path]:
    """The run's trained reward model (``rewards.model_dir``, else ``<run_dir>/rm/final``), if there is one."""
    directory = Path(recipe.rewards.model_dir) if recipe.rewards.model_dir else run_dir / "rm" / "final"
    return directory if (directory / HEADS_FILE).is_file() else None


def reward_model_view(model_dir: Path, requests: Sequence[Request], pages: Mapping[str, Sequence[Any]],
                      learned: Sequence[str], others: Mapping[str, Sequence[str]], *, batch_size: int = 64,
                      dtype: Optional[str] = None, attn_implementation: str = "sdpa") -> Dict[str, Any]:
    """Reward-model figures of each method's pages (module doc).

    ``pages[name][i]`` is method ``name``'s valid page for ``requests[i]``, or
    None when it has no valid page there (not scored). ``others[policy]``
    names the methods each learned policy is paired with.
    """

    models = load_reward_models(model_dir, batch_size=batch_size, dtype=dtype,
                                attn_implementation=attn_implementation)
    values: Dict[str, Dict[str, np.ndarray]] = {}
    table: Dict[str, Dict[str, Any]] = {}
    for name, method_pages in pages.items():
        rows = [i for i, p in enumerate(method_pages) if p is not None]
        figures = {f: np.full(len(requests), np.nan) for f in FIGURES}
        if rows:
            page, item = models.score([requests[i] for i in rows], [list(method_pages[i]) for i in rows])
            figures["rm_page"][rows] = page.double().numpy()
            figures["rm_item_sum"][rows] = item.double().sum(dim=1).numpy()
        values[name] = figures
        row: Dict[str, Any] = {"scored": len(rows)}
        for f in FIGURES:
            row[f], row[f"{f}_se"] = mean_se(figures[f][rows])
        table[name] = row
    paired: Dict[str, Dict[str, Any]] = {}
    for name in learned:
        paired[name] = {}
        for other in others[name]:
            entry: Dict[str, Any] = {}
            for f in FIGURES:
                diff = values[name][f] - values[other][f]
                diff = diff[~np.isnan(diff)]
                entry[f"{f}_diff"], entry[f"{f}_diff_se"] = mean_se(diff)
            paired[name][other] = entry
    heads = models.model
    return {"model_dir": str(model_dir), "item_output": heads.item_output, "page_output": heads.page_output,
            "methods": table, "paired": paired}
