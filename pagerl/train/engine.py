"""A DeepSpeed-wrapped policy on one rank: build, step, checkpoint, resume.

Shared by every training stage that updates a causal LM with ZeRO (SFT now;
reward models and RL reuse it), so the parts that are easy to get subtly
wrong live once: ZeRO-3 collectives entered by every rank in the same order,
checkpoints written without pickle and resumed exactly, and the learning-rate
schedule as a pure function of the step (no scheduler state to lose).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.distributed as torch_dist
from safetensors.torch import load_file, save_file

from pagerl.config.schema import DistributedConfig
from pagerl.distributed import checkpoint_format as ckpt
from pagerl.distributed.deepspeed_config import deepspeed_config
from pagerl.distributed.deepspeed_config import initialize as initialize_deepspeed
from pagerl.distributed.device import worker_device
from pagerl.tracking.metrics import MetricsLogger
from pagerl.tracking.progress import Progress
from pagerl.train.batching import Schedule


@dataclass
class TrainState:
    step: int = 0
    examples_seen: int = 0


class ZeroPolicy:
    """A module under a DeepSpeed engine, with the checkpoint format of :mod:`pagerl.distributed.checkpoint_format`.

    ``module`` is what DeepSpeed wraps (the forward that computes the loss
    inputs, e.g. :class:`pagerl.models.logprobs.CausalLMLogprobs`);
    ``hf_model`` is the Hugging Face model inside it, whose parameters are the
    ones checkpointed and exported.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        hf_model: Any,
        dist_cfg: DistributedConfig,
        *,
        dtype: str,
        lr: float,
        weight_decay: float,
        micro_batch_size: int,
        grad_accum_steps: int,
        grad_clip: float,
        resume_dir: Optional[Path] = None,
    ) -> None:
        self.rank = torch_dist.get_rank()
        self.world_size = torch_dist.get_world_size()
        self.dist_cfg = dist_cfg
        self.hf_model = hf_model
        self.dtype = dtype
        self.state = TrainState()
        resume_state = None
        if resume_dir is not None:
            resume_state = ckpt.read_trainer_state(resume_dir)
            self._check_compatible(resume_dir, resume_state)
            # fp32 master weights go into the module before DeepSpeed copies them
            # into its (partitioned) master copy: every rank loads the full set.
            master = resume_dir / (ckpt.MASTER_WEIGHTS if dtype != "float32" else "model.safetensors")
            self._load_full_weights(load_file(str(master)))
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
        config = deepspeed_config(
            dist_cfg, dtype=dtype, micro_batch_size=micro_batch_size,
            grad_accum_steps=grad_accum_steps, grad_clip=grad_clip,
        )
        self.engine, _, _, _ = initialize_deepspeed(model=module, optimizer=optimizer, config=config)
        if resume_dir is not None and resume_state is not None:
            if dtype != "float32":
                from deepspeed.utils import safe_set_full_fp32_param  # DeepSpeed probes the devices on import

                master = load_file(str(resume_dir / ckpt.MASTER_WEIGHTS))
                for name, p in self._named_params():
                    safe_set_full_fp32_param(p, master[name].to(torch.float32))
            saved = ckpt.load_optimizer_state(resume_dir, self.rank, resume_state["optimizer_layout"])
            self._set_partition_states(saved)
            self.state = TrainState(step=int(resume_state["step"]), examples_seen=int(resume_state["examples_seen"]))

    # -- training ---------------------------------------------------------------------------
    @property
    def inner_optimizer(self) -> torch.optim.Optimizer:
        """The client AdamW that ZeRO drives over this rank's partition."""
        return self.engine.optimizer.optimizer

    def _flat_partitions(self):
        """This rank's fp32 master partitions, one per parameter group: the AdamW state keys.

        ZeRO-1/2 and ZeRO-3 name them differently, and ZeRO-3 only puts them in
        the optimizer's param groups during ``step``, so the optimizer's own
        ``state_dict`` cannot be used.
        """
        zero = self.engine.optimizer
        if hasattr(zero, "fp32_partitioned_groups_flat"):
            return list(zero.fp32_partitioned_groups_flat)
        return list(zero.single_partition_of_fp32_groups)

    def _partition_states(self):
        state = self.inner_optimizer.state
        return [dict(state[flat]) if flat in state else {} for flat in self._flat_partitions()]

    def _set_partition_states(self, saved) -> None:
        flats = self._flat_partitions()
        if len(saved) != len(flats):
            raise ValueError(f"checkpoint has optimizer state for {len(saved)} parameter groups, the model {len(flats)}")
        for flat, entry in zip(flats, saved):
            if entry:
                self.inner_optimizer.state[flat] = {
                    k: (v.to(flat.device).clone() if isinstance(v, torch.Tensor) else v) for k, v in entry.items()
                }

    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.engine(*args, **kwargs)

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """One micro-batch: DeepSpeed scales by accumulation and steps at the boundary."""
        self.engine.backward(loss)
        self.engine.step()

    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    # -- checkpoints --------------------------------------------------------------------------
    def _named_params(self):
        return list(self.hf_model.named_parameters())

    def _check_compatible(self, directory: Path, state: Dict[str, Any]) -> None:
        saved = (int(state["world_size"]), int(state["zero_stage"]), str(state["dtype"]))
        now = (self.world_size, self.dist_cfg.zero_stage, self.dtype)
        if saved != now:
            raise ValueError(
                f"{directory}: checkpoint was written with world_size={saved[0]}, zero_stage={saved[1]}, "
                f"dtype={saved[2]} but this run has {now[0]}, {now[1]}, {now[2]}; resume with the same "
                "distributed.num_workers, distributed.zero_stage and model.dtype"
            )

    def _load_full_weights(self, tensors: Dict[str, torch.Tensor]) -> None:
        named = dict(self.hf_model.named_parameters())
        missing = [n for n in named if n not in tensors]
        if missing:
            raise ValueError(f"checkpoint lacks weights for {missing[:3]}{'...' if len(missing) > 3 else ''}")
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(tensors[name].to(p.dtype))

    def full_fp32_weights(self) -> Dict[str, torch.Tensor]:
        """Gather the full fp32 master weights. Collective: every rank must call it."""
        from deepspeed.utils import safe_get_full_fp32_param  # DeepSpeed probes the devices on import

        out: Dict[str, torch.Tensor] = {}
        for name, p in self._named_params():
            full = safe_get_full_fp32_param(p)
            out[name] = (full if full is not None else p.detach()).detach().cpu().to(torch.float32).clone()
        return out

    def save(self, directory: Path, tokenizer: Any, extra_state: Dict[str, Any]) -> None:
        """Write a checkpoint (see :mod:`pagerl.distributed.checkpoint_format`). Collective.

        Every rank gathers the weights (ZeRO-3 gathering is collective) and
        writes its optimizer partition; rank 0 writes the model, tokenizer and,
        last, the trainer state that marks the checkpoint complete.
        """
        directory.mkdir(parents=True, exist_ok=True)
        weights = self.full_fp32_weights()
        layout = ckpt.save_optimizer_state(self._partition_states(), directory, self.rank)
        torch_dist.barrier()
        if self.rank == 0:
            export_dtype = getattr(torch, self.dtype)
            model_sd = {k: v.to(export_dtype) for k, v in weights.items()}
            self.hf_model.save_pretrained(directory, state_dict=model_sd, safe_serialization=True)
            if self.dtype != "float32":
                save_file(weights, str(directory / ckpt.MASTER_WEIGHTS))
            tokenizer.save_pretrained(directory)
            ckpt.write_trainer_state(directory, {
                "step": self.state.step,
                "examples_seen": self.state.examples_seen,
                "world_size": self.world_size,
                "zero_stage": self.dist_cfg.zero_stage,
                "dtype": self.dtype,
                "optimizer_layout": layout,
                **extra_state,
            })
        torch_dist.barrier()


@dataclass
class StageWorker:
    """What every stage's worker loop starts from (see :func:`setup_stage_worker`)."""

    recipe: Any
    run_dir: Path
    examples: Any
    rank: int
    world_size: int
    resume_dir: Optional[Path]
    # Where this rank computes (pagerl.distributed.device): every batch goes there through to_device.
    device: torch.device = torch.device("cpu")


def setup_stage_worker(config: Dict[str, Any]) -> StageWorker:
    """Common start of a Ray Train worker loop launched by :func:`pagerl.distributed.launch.fit_stage`.

    Quiets transformers' per-file progress bars (they drown the step
    progress), seeds torch, sizes its thread pool to the worker's CPUs, and
    picks the checkpoint to resume from: the one Ray Train hands a restarted
    worker group first, else the one the driver found in the run directory.
    """
    import ray
    import ray.train
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    recipe = config["recipe"]
    ctx = ray.train.get_context()
    torch.manual_seed(recipe.run.seed)
    torch.set_num_threads(max(1, int(recipe.distributed.cpus_per_worker)))
    resumed = ray.train.get_checkpoint()
    resume_dir = Path(resumed.path) if resumed is not None else (
        Path(config["resume_from"]) if config.get("resume_from") else None)

    device = worker_device(bool(recipe.distributed.use_gpu))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return StageWorker(recipe, Path(config["run_dir"]), ray.get(config["examples_ref"]),
                       ctx.get_world_rank(), ctx.get_world_size(), resume_dir, device)


class _WorkerStderr:
    """stderr for Ray Train workers, bypassing Train's patched ``print``.

    Ray Train V2 routes ``print`` to stdout/stderr through its logger, which
    shows every progress line twice on the driver; writing to this object (not
    ``sys.stderr`` itself) keeps one line per update.
    """

    def write(self, text: str) -> int:
        n = sys.stderr.write(text)
        sys.stderr.flush()
        return n

    def flush(self) -> None:
        sys.stderr.flush()


WORKER_STDERR = _WorkerStderr()


@dataclass
class StageTraining:
    """A stage's engine, schedule and step range, and rank 0's metrics and progress."""

    policy: "ZeroPolicy"
    schedule: Schedule
    start: int
    stop_at: int
    metrics: MetricsLogger
    progress: Progress


def start_stage_training(w: StageWorker, stage: str, stage_cfg: Any, module: torch.nn.Module,
                         hf_model: Any) -> StageTraining:
    """Wrap ``module`` for DeepSpeed and lay out the steps of a stage (``sft``, ``rm``).

    ``stage_cfg`` is the stage's recipe section (``lr``, ``weight_decay``,
    batch sizes, ``grad_clip``, ``epochs``, ``max_steps``, ``stop_after_steps``).
    The step range starts at the resumed checkpoint's step and ends at the
    schedule's total, or ``stop_after_steps`` later (the interruption tests use).
    """
    s, recipe = stage_cfg, w.recipe
    policy = ZeroPolicy(
        module, hf_model, recipe.distributed,
        dtype=recipe.model.dtype, lr=s.lr, weight_decay=s.weight_decay,
        micro_batch_size=s.micro_batch_size, grad_accum_steps=s.grad_accum_steps,
        grad_clip=s.grad_clip, resume_dir=w.resume_dir,
    )
    schedule = Schedule(len(w.examples), s.micro_batch_size, s.grad_accum_steps, w.world_size, s.epochs,
                        s.max_steps)
    schedule.check()
    start = policy.state.step
    stop_at = schedule.total_steps
    if s.stop_after_steps > 0:
        stop_at = min(stop_at, start + s.stop_after_steps)
    lead = w.rank == 0
    metrics = MetricsLogger.from_config(w.run_dir, recipe.tracking, enabled=lead)
    progress = Progress(stage, total=schedule.total_steps, every_s=recipe.tracking.progress_every_s,
                        stream=WORKER_STDERR, enabled=lead)
    if lead and start > 0:
        WORKER_STDERR.write(f"[{stage}] resumed from {w.resume_dir} at step {start}/{schedule.total_steps}\n")
    return StageTraining(policy, schedule, start, stop_at, metrics, progress)


def report_checkpoint(policy: "ZeroPolicy", tokenizer: Any, step: int, total_steps: int,
                      steps_per_epoch: int, prefix: str) -> None:
    """Save a checkpoint of every rank into a scratch dir and hand it to Ray Train. Collective.

    Ray Train merges the ranks' directories into one ``checkpoint_*`` of the
    stage's storage, which is where a restarted worker group resumes from.
    """
    import ray.train

    directory = scratch_dir(f"pagerl-{prefix}-ckpt-{step}-")
    try:
        policy.save(directory, tokenizer, {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch})
        ray.train.report(
            {"step": step, "finished": int(step >= total_steps)},
            checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
        )
    finally:
        remove_dir(directory)


def all_mean(value: float) -> float:
    """Mean of a per-rank number over the process group."""
    return all_sum(value) / torch_dist.get_world_size()


def all_sum(value: float) -> float:
    """Sum of a per-rank number over the process group."""
    t = torch.tensor([value], dtype=torch.float64)
    torch_dist.all_reduce(t)
    return float(t.item())


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
