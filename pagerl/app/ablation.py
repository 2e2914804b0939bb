"""``pagerl ablate RECIPE``: the reward ablation in the paper's form, one budget, several seeds.

What runs, each part a run directory of its own (so the same command run again
after an interruption skips what is complete and resumes what is not):

1. the recipe's stages before ``rl`` (``synth``, ``sft``, ``rm`` as listed) in its
   run directory, then its ``eval`` stage: the starting policy and
   ``eval.baselines`` on the held-out requests;
2. for each variant of ``ablation.variants`` and each value of ``ablation.seeds``,
   the RL stage from that policy with that reward model and the recipe's
   budget, then an eval of the RL policy alone, in
   ``<run_dir>/ablation/<variant>-seed<seed>/``.

Only ``rl.seed`` differs between the seeds: ``run.seed`` also fixes the world,
the data, SFT and the reward models, which all variants share, so every
difference in the table is the reward's (and RL's own randomness, which the
seeds average over).

The table is :mod:`pagerl.app.ablation_table`'s (``<run_dir>/ablation/ablation.json``
and ``ablation.md``); the run's report shows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from pagerl.app import pipeline
from pagerl.app.ablation_table import (
    ABLATION_DIR,
    FIDELITY_FILE,
    RESULTS_FILE,
    TABLE_FILE,
    AblationError,
    ablation_table,
    format_markdown,
)
from pagerl.app.recipes import load_recipe
from pagerl.app.report import write_report
from pagerl.data.io import read_impressions
from pagerl.distributed import ray_cluster
from pagerl.rewards.models import load_reward_models
from pagerl.rl.credit_fidelity import CreditSetting
from pagerl.stages import STAGES
from pagerl.stages.rm import credit_fidelity_report, simulator_for
from pagerl.tracking.console import CONSOLE
from pagerl.tracking.records import read_json


def shared_stages(recipe: Any) -> Tuple[List[str], str]:
    """The stages every variant shares (those before ``rl``), and the one whose policy RL starts from."""
    names = list(recipe.run.stages)
    if "rl" not in names:
        raise AblationError(f"run.stages: an ablation trains the rl stage; expected 'rl' in run.stages, got {names}")
    shared = names[: names.index("rl")]
    policies = [s for s in shared if STAGES[s].policy is not None and STAGES[s].policy_kind == "lm"]
    if not policies:
        raise AblationError(f"run.stages: an ablation compares RL variants with the policy they start from; "
                            f"expected a policy stage (such as 'sft') before 'rl', got {names}")
    return shared, policies[-1]


def variant_overrides(recipe: Any, base_dir: Path, start: str, variant: str, seed: int) -> List[str]:
    """What makes a variant's run out of the recipe: its directory, seed, starting policy and shared inputs."""
    out = [
        f"run.output_dir={json.dumps(str(base_dir / ABLATION_DIR))}",
        f"run.name={variant}-seed{seed}",
        "run.stages=[rl,eval]",
        f"rl.seed={seed}",
        f"rl.init_policy_dir={json.dumps(str(base_dir / STAGES[start].policy))}",
        "eval.baselines=[]",  # the baselines were scored once, in the recipe's own run directory
        # so were the IPS checks of the logs, which no variant changes
        "eval.obd_check=false", "eval.ips_check=false",
    ]
    for split in ("train", "eval"):
        if not getattr(recipe.data, f"{split}_files"):
            out.append(f"data.{split}_files={json.dumps([str(base_dir / 'data' / f'{split}.jsonl')])}")
    if recipe.rewards.source == "learned" and not recipe.rewards.model_dir:
        out.append(f"rewards.model_dir={json.dumps(str(base_dir / 'rm' / 'final'))}")
    return out


def run_ablation(recipe_path: str | Path, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Run every part of the ablation (module doc) and write its table; returns the table."""
    base, _ = load_recipe(recipe_path, overrides)
    cfg = base.ablation
    shared, start = shared_stages(base)
    base_dir = pipeline.run_dir_of(base)
    variants = {v.name: list(v.overrides) for v in cfg.variants}
    plan = [(variant, int(seed)) for variant in variants for seed in cfg.seeds]
    settings = {}
    for variant, seed in plan:
        # Every variant's keys and values are checked before any work (its paths exist only later).
        checked, _ = load_recipe(recipe_path, [*overrides, *variants[variant], f"rl.seed={seed}"])
        settings[variant] = checked
    owned = ray_cluster.connect(base.distributed.ray_address)
    runs: Dict[str, Dict[int, Path]] = {v: {} for v in variants}
    try:
        CONSOLE.line(f"[ablate] shared stages ({', '.join(shared)}) and the baselines' eval in {base_dir}")
        pipeline.run(base, stages=[*shared, "eval"])
        variant_credit_fidelity(base, base_dir, start, settings)
        for i, (variant, seed) in enumerate(plan, start=1):
            recipe, _ = load_recipe(recipe_path, [*overrides, *variants[variant],
                                                  *variant_overrides(base, base_dir, start, variant, seed)])
            CONSOLE.line(f"[ablate] run {i}/{len(plan)}: {variant}, rl.seed={seed}")
            pipeline.run(recipe)
            runs[variant][seed] = pipeline.run_dir_of(recipe)
    finally:
        ray_cluster.shutdown(owned)
    table = ablation_table(base, base_dir, start, runs)
    out = base_dir / ABLATION_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps(table, indent=2, allow_nan=False) + "\n")
    (out / TABLE_FILE).write_text("\n".join(format_markdown(table)) + "\n")
    if base.tracking.report:
        table["report"] = str(write_report(base_dir))
    CONSOLE.line("\n".join(format_markdown(table)))
    return table


def variant_credit_fidelity(recipe: Any, base_dir: Path, start: str, variants: Mapping[str, Any]) -> Dict[str, Any]:
    """Each variant's credit fidelity (:mod:`pagerl.rl.credit_fidelity`) on the shared starting policy and
    reward model, written once to ``<base_dir>/ablation/credit_fidelity.json`` (and read back after):
    why a variant learns what it learns, measured before any of them trains."""
    path = base_dir / ABLATION_DIR / FIDELITY_FILE
    wanted = {name: CreditSetting(r.rewards, r.rl.slot_credit) for name, r in variants.items()}
    saved = read_json(path)
    if saved and set((saved.get("settings") or {})) == set(wanted):
        return saved
    if recipe.rewards.source != "learned":
        report = {"skipped": f"rewards.source is {recipe.rewards.source!r}: the credit of the learned rewards "
                             "is what the fidelity measures"}
    else:
        env, why = simulator_for(recipe, base_dir)
        files = list(recipe.data.train_files) or [str(base_dir / "data" / "train.jsonl")]
        impressions = read_impressions(files, on_bad_row=recipe.data.on_bad_row,
                                       max_bad_fraction=recipe.data.max_bad_fraction).impressions
        models = load_reward_models(recipe.rewards.model_dir or base_dir / "rm" / "final",
                                    batch_size=recipe.rm.score_batch_size, dtype=recipe.model.dtype,
                                    attn_implementation=recipe.model.attn_implementation)
        found, skipped = credit_fidelity_report(recipe, models, env, why, impressions,
                                                base_dir / STAGES[start].policy, settings=wanted)
        report = found if found is not None else {"skipped": skipped}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    return report


__all__ = ["AblationError", "run_ablation", "shared_stages", "variant_overrides", "variant_credit_fidelity"]
