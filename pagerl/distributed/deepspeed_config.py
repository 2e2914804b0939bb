"""The DeepSpeed config of a training stage, derived from the recipe alone.

One function builds it so every stage (SFT now, reward models and RL later)
trains with the same ZeRO, precision and clipping semantics. The batch
vocabulary is DeepSpeed's: a micro-batch per rank, accumulated over
``grad_accum_steps``, so one optimizer step sees
``micro_batch_size * grad_accum_steps * num_workers`` examples.
"""

from __future__ import annotations

from typing import Any, Dict

from pagerl.config.schema import DistributedConfig


def deepspeed_config(
    dist: DistributedConfig,
    *,
    dtype: str,
    micro_batch_size: int,
    grad_accum_steps: int,
    grad_clip: float,
) -> Dict[str, Any]:
    zero: Dict[str, Any] = {"stage": dist.zero_stage}
    if dist.zero_stage == 3:
        # Gather every parameter for the forward instead of keeping small ones
        # resident: predictable memory, and the same code path at any size.
        zero["stage3_param_persistence_threshold"] = 0
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "train_batch_size": micro_batch_size * grad_accum_steps * dist.num_workers,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        # The client optimizer is torch's AdamW: DeepSpeed's CPU Adam needs a
        # multi-minute JIT build and brings nothing at these sizes.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


# DeepSpeed's name for its shared-memory all-reduce op (deepspeed.ops.op_builder).
_SHM_COMM_OP = "deepspeed_shm_comm"


def skip_shm_comm_op() -> None:
    """Tell DeepSpeed not to build its shared-memory all-reduce op in this process.

    DeepSpeed JIT-compiles that C++ op the first time a process sets up its
    communication backend on CPU: 30-85 s and a compiler on every fresh machine,
    paid by a new user's first quickstart. It serves only
    ``inference_all_reduce``, the collective of DeepSpeed's tensor-parallel
    inference kernels, which PageRL does not use: its training collectives are
    torch.distributed's (gloo on CPU, NCCL on GPU). DeepSpeed decides whether to
    build an op from ``deepspeed.ops.__compatible_ops__``, a dict computed once
    per process, so marking the op incompatible there before its backend starts
    skips the build and changes nothing else.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[_SHM_COMM_OP] = False


def initialize(**kwargs: Any) -> Any:
    """``deepspeed.initialize(**kwargs)`` after :func:`skip_shm_comm_op`: how every stage starts DeepSpeed."""
    import deepspeed

    skip_shm_comm_op()
    return deepspeed.initialize(**kwargs)
