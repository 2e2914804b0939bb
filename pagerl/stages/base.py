"""The shape every stage has, and the registry the pipeline walks.

A stage declares what it reads, what it writes (its directory in the run
directory, and the policy it produces for the stages after it), how it knows
that it is complete, whether it needs Ray, how to run it, the line it shows
when it is done, and its own sections of the run report. The pipeline
(:mod:`pagerl.app.pipeline`) and the report (:mod:`pagerl.app.report`) walk
this registry and know no stage by name, so a new stage is a new file in
``pagerl/stages/`` with one :func:`register_stage` call, not a new branch.

Completeness is read from the run directory, never from memory: a rerun of a
finished run skips every stage (no work repeated, no metrics rows appended),
and a run interrupted inside a stage resumes that stage from its last
checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pagerl.config.schema import RecipeConfig
from pagerl.data.io import read_impressions
from pagerl.registry import Registry
from pagerl.tracking.console import CONSOLE
from pagerl.tracking.records import read_json, write_json


@dataclass
class RunContext:
    """What the stages of one run share: the recipe, the run directory, and what earlier stages made."""

    recipe: RecipeConfig
    run_dir: Path
    # Name -> directory of every policy the run's stages produced so far, in
    # stage order (the last language-model one is "the policy" for later stages).
    policies: Dict[str, str] = field(default_factory=dict)
    outputs: Dict[str, Any] = field(default_factory=dict)
    _train_data: Any = None

    @property
    def policy_dir(self) -> Optional[str]:
        """The last language-model policy: what rm and rl build on (an RLlib baseline's is none)."""
        lm = [d for name, d in self.policies.items() if name not in STAGES or STAGES[name].policy_kind == "lm"]
        return lm[-1] if lm else None

    def data_files(self, split: str) -> List[str]:
        """``data.<split>_files``, or what the synth stage writes into the run directory."""
        listed = list(getattr(self.recipe.data, f"{split}_files"))
        return listed or [str(self.run_dir / "data" / f"{split}.jsonl")]

    def train_data(self) -> Any:
        """The training impressions, read and validated once per run (bad rows counted in data/stats.json)."""
        if self._train_data is None:
            d = self.recipe.data
            self._train_data = read_impressions(self.data_files("train"), on_bad_row=d.on_bad_row,
                                                max_bad_fraction=d.max_bad_fraction)
            CONSOLE.line(f"[data] {self._train_data.summary}")
            _record_data_stats(self.run_dir, self._train_data)
        return self._train_data


def _no_lines(*_: Any) -> Sequence[str]:
    return ()


@dataclass(frozen=True)
class Stage:
    """One stage of a run (see the module docstring)."""

    name: str
    summary: str
    reads: Tuple[str, ...]
    writes: str
    run: Callable[[RunContext], Dict[str, Any]]
    complete: Callable[[RunContext], bool]
    # The policy directory (relative to the run directory) this stage produces.
    policy: Optional[str] = None
    # What that policy is: "lm" (a language model; the last one is what later stages build on)
    # or another kind of pagerl.eval.policy_kinds.POLICY_KINDS, which the eval stage scores too.
    policy_kind: str = "lm"
    uses_ray: bool = False
    # The line shown when the stage finished (or was already complete).
    headline: Callable[[RunContext], str] = lambda ctx: ""
    # The stage's sections of the run report, Markdown, from the run directory alone:
    # report(run_dir, plots_dir) -> sections (an empty string: nothing to say).
    report: Callable[[Path, Path], Sequence[str]] = _no_lines
    # Whether the report's HTML page opens on this stage's sections (the evaluation does).
    report_leads: bool = False
    # Lines the stage adds under the report's "Where the time went" (its own time by phase).
    time_report: Callable[[Path], Sequence[str]] = _no_lines


# The registry of the recipe key ``run.stages`` (the recipe loader checks each name against it).
STAGES: Registry = Registry("run.stages")


def register_stage(stage: Stage) -> Stage:
    if stage.name in STAGES:
        raise ValueError(f"stage {stage.name!r} is registered twice")
    STAGES[stage.name] = stage
    return stage


def order_stages(names: Sequence[str]) -> None:
    """Put :data:`STAGES` in the order ``names`` (every registered stage, once): the order the
    pipeline runs them in and ``run.stages`` must follow."""
    if sorted(names) != sorted(STAGES) or len(set(names)) != len(names):
        raise ValueError(f"stage order {list(names)} must name every registered stage once: {sorted(STAGES)}")
    entries = [STAGES.pop(name) for name in names]
    STAGES.update((entry.name, entry) for entry in entries)


def stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}") from None


def json_of(path: Path) -> Optional[Dict[str, Any]]:
    """A stage's JSON output, None while the stage has not written it."""
    return read_json(path) if path.is_file() else None


def _record_data_stats(run_dir: Path, data: Any) -> None:
    path = run_dir / "data" / "stats.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    stats = json.loads(path.read_text()) if path.is_file() else {}
    stats["loaded_rows"] = data.num_rows
    stats["skipped_bad_rows"] = len(data.bad_rows)
    stats["bad_row_examples"] = [str(e) for e in data.bad_rows[:10]]
    write_json(path, stats, allow_nan=True)
