"""Launching a distributed training stage on Ray Train, the same way for every stage.

A stage (SFT, reward models, ...) hands over its per-worker loop and a
config dict; this module sets the worker group from ``distributed.*``
(workers, CPUs/GPUs, backend, collective timeout, restarts) and the storage
from the run directory, so a checkpoint of stage ``name`` lands in
``<run_dir>/<name>/checkpoint_*`` and a restarted worker group resumes from the
latest one through ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

from pagerl.config.schema import RecipeConfig
from pagerl.distributed import checkpoint_format as ckpt
from pagerl.tracking.console import MetricsWatcher


def backend_of(recipe: RecipeConfig) -> str:
    return backend_for(recipe.distributed.backend, recipe.distributed.use_gpu)


def backend_for(backend: str, use_gpu: bool) -> str:
    """``distributed.backend``, with ``auto`` meaning NCCL on GPUs and gloo on CPUs."""
    if backend != "auto":
        return backend
    return "nccl" if use_gpu else "gloo"


def fit_stage(
    recipe: RecipeConfig,
    run_dir: Path,
    name: str,
    worker: Callable[[Dict[str, Any]], None],
    config: Dict[str, Any],
    resume_from: Optional[Path] = None,
    total_steps: Optional[int] = None,
    start_step: int = 0,
) -> Optional[Path]:
    """Run ``worker`` on the recipe's worker group; returns the stage's latest complete checkpoint.

    ``config`` reaches every worker as its argument, plus ``recipe``,
    ``run_dir`` and ``resume_from`` (the checkpoint to start from, or "").
    While it runs, the driver shows the stage's progress (``total_steps``)
    from the loss rows rank 0 logs (:class:`pagerl.tracking.console.MetricsWatcher`).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    d = recipe.distributed
    trainer = TorchTrainer(
        worker,
        train_loop_config={**config, "recipe": recipe, "run_dir": str(run_dir),
                           "resume_from": str(resume_from) if resume_from else ""},
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=d.use_gpu,
                                     resources_per_worker={"CPU": d.cpus_per_worker}),
        torch_config=TorchConfig(backend=backend_of(recipe), timeout_s=d.timeout_s),
        run_config=RunConfig(
            name=name,
            storage_path=str(run_dir.resolve()),
            failure_config=FailureConfig(max_failures=d.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    with MetricsWatcher(run_dir, name, total_steps, {"loss": "loss"},
                        every_s=recipe.tracking.progress_every_s, start_step=start_step):
        trainer.fit()
    return ckpt.latest_checkpoint(run_dir / name)
