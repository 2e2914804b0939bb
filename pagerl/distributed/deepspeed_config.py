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
