"""Policy trainer ranks: Ray actors forming one torch.distributed group under DeepSpeed ZeRO.

Why plain actors and not Ray Train workers: the controller drives an RL step
phase by phase (experience, then update, then weight sync, then a probe), and
each phase is a method call whose answer it needs before the next; Ray
Train's worker group runs one training function to its end and reports from
inside it, so the controller could not call into it step by step. The ranks
are therefore long-lived actors of one :class:`~pagerl.rl.roles.groups.ActorGroup`
that the controller creates, places and calls; they form their process group
themselves (:meth:`PolicyTrainerRank.connect`: gloo on CPU, NCCL on GPU, with
the recipe's timeout).

Each rank holds

- the **policy** under a DeepSpeed engine (:class:`~pagerl.train.engine.ZeroPolicy`,
  ZeRO stage ``rl.trainer.zero_stage``, AdamW at ``rl.lr``), scored through
  :class:`~pagerl.models.logprobs.CausalLMLogprobs` in its *constrained* mode,
  so old, current and reference logprobs and the entropy are those of the
  distribution that acts (unused candidates, then EOS);
- the **reference**: the frozen SFT policy, no optimizer state; under ZeRO-3 an
  inference-only DeepSpeed engine partitions it like the policy, otherwise a
  plain module;
- for algorithms with a critic, the **critic** (:class:`~pagerl.rl.roles.critic.ValueModel`)
  under its own engine at ``rl.critic_lr``.

Every method that runs a forward pass under ZeRO-3 is collective: the
controller calls it on every rank (with each rank's shard) in the same order.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from pagerl.config.schema import DistributedConfig, ModelConfig, RLConfig
from pagerl.distributed.compute_log import ComputeLog, Span
from pagerl.distributed.deepspeed_config import initialize as initialize_deepspeed
from pagerl.distributed.device import peak_memory_mb, to_device, worker_device
from pagerl.distributed.launch import backend_for
from pagerl.errors import PageRLError
from pagerl.models.build import load_policy
from pagerl.models.constrained_logprobs import PageTokens, ResponseConstraint
from pagerl.models.logprobs import CausalLMLogprobs
from pagerl.rl.algorithms import clipped_policy_loss, clipped_value_loss, entropy_bonus, kl_loss
from pagerl.rl.frames import Batch, frame_to_rows, pack, to_response_frame, trim
from pagerl.rl.roles.critic import ValueModel
from pagerl.rl.weight_sync import WeightSender
from pagerl.tokenization.tokenizer import load_policy_tokenizer
from pagerl.train.engine import ZeroPolicy


class TrainerError(PageRLError):
    """A trainer rank cannot go on (non-finite loss or gradient, bad shard)."""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PolicyTrainerRank:
    """One rank of the policy trainer group (module docstring).

    It reads the recipe's ``rl`` section (``cfg``), ``model`` (loading the policy, its dtype),
    ``distributed`` (the process group's backend, the ZeRO engine's settings) and the RL seed
    (:func:`pagerl.rl.rl_seed`), and is given those alone (:func:`pagerl.rl.roles.layout.trainer_args`
    picks them from a recipe).
    """

    def __init__(self, cfg: RLConfig, model: ModelConfig, distributed: DistributedConfig, seed: int,
                 policy_dir: str, world_size: int, needs_critic: bool, resume_dir: Optional[str] = None) -> None:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        self.cfg, self.model_cfg, self.distributed, self.seed = cfg, model, distributed, int(seed)
        self.policy_dir = str(policy_dir)
        self.rank, self.world_size = -1, int(world_size)  # the rank is given by connect()
        self.needs_critic = bool(needs_critic)
        # An RL checkpoint (pagerl.rl.rl_checkpoint) to restore the policy, critic and RNG from.
        self.resume_dir = None if resume_dir is None else Path(resume_dir)
        torch.manual_seed(self.seed)
        torch.set_num_threads(max(1, int(math.ceil(self.cfg.trainer.cpus_per_rank))))
        self.use_gpu = float(self.cfg.trainer.gpus_per_rank) > 0
        self.temperature = float(self.cfg.rollout.temperature)
        self.compute = ComputeLog()  # when experience(), train(), probe_logprobs() ran (distributed.compute_log)
        self.top_p = float(self.cfg.rollout.top_p)

    # -- the process group ------------------------------------------------------------------
    def address(self) -> Dict[str, Any]:
        """Where rank 0 listens for the group's rendezvous (called on rank 0 only)."""
        import ray

        # the node's address as Ray knows it; loopback for ranks running in the driver (pagerl.rl.roles.local)
        host = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        return {"host": host, "port": _free_port(host)}

    def connect(self, host: str, port: int, rank: int) -> Dict[str, Any]:
        """Join the process group as ``rank`` and build the engines. Collective: every rank at once."""
        import torch.distributed as dist

        self.rank = int(rank)

        self.device = worker_device(self.use_gpu)
        if self.use_gpu:
            torch.cuda.set_device(self.device)
        os.environ.update({"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": "0",
                           "MASTER_ADDR": host, "MASTER_PORT": str(port)})
        backend = backend_for(self.distributed.backend, self.use_gpu)
        # Twice rl.timeout_s: a collective that hangs (a rank stopped or lost) is then reported by the
        # controller's deadline, which names the role and the call, before gloo/NCCL's own error.
        dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=self.rank, world_size=self.world_size,
                                timeout=timedelta(seconds=2 * float(self.cfg.timeout_s)))
        self._build()
        return {"rank": self.rank, "pid": os.getpid(), "device": str(self.device)}

    def _build(self) -> None:
        cfg, model_cfg = self.cfg, self.model_cfg
        self.tokenizer = load_policy_tokenizer(self.policy_dir)
        self.page_tokens = PageTokens.from_tokenizer(self.tokenizer)
        dist_cfg = dataclasses.replace(self.distributed, num_workers=self.world_size,
                                       zero_stage=int(cfg.trainer.zero_stage), use_gpu=self.use_gpu)
        self.dist_cfg = dist_cfg
        micro = int(cfg.trainer.micro_batch_size)
        self.grad_accum = int(self._grad_accum_steps())

        def engine(module: torch.nn.Module, hf_model: Any, lr: float, part: str) -> ZeroPolicy:
            resume = None if self.resume_dir is None else self.resume_dir / part
            return ZeroPolicy(module.to(self.device), hf_model, dist_cfg, dtype=model_cfg.dtype, lr=lr,
                              weight_decay=cfg.weight_decay, micro_batch_size=micro,
                              grad_accum_steps=self.grad_accum, grad_clip=cfg.grad_clip, resume_dir=resume)

        policy = load_policy(self.policy_dir, model_cfg)
        policy.train()
        self.policy = engine(CausalLMLogprobs(policy, page_tokens=self.page_tokens), policy, cfg.lr, POLICY_PART)
        self.hf_policy = policy
        self.reference = self._reference(load_policy(self.policy_dir, model_cfg), dist_cfg)
        self.critic = None
        if self.needs_critic:
            value = ValueModel(load_policy(self.policy_dir, model_cfg))
            self.critic = engine(value, value, cfg.critic_lr, CRITIC_PART)
        if self.resume_dir is not None:
            from safetensors.torch import load_file

            torch.set_rng_state(load_file(str(self.resume_dir / POLICY_PART / _rng_file(self.rank)))["cpu"])
        self.sender = None

    def _grad_accum_steps(self) -> int:
        """Micro-batches per optimizer step: one minibatch of this rank's shard (validated at load)."""
        cfg = self.cfg
        pages = int(cfg.requests_per_step) * int(cfg.rollout.samples_per_request)
        per_minibatch = pages // self.world_size // int(cfg.minibatches_per_epoch)
        return max(1, per_minibatch // int(cfg.trainer.micro_batch_size))

    def _reference(self, model: Any, dist_cfg: Any) -> Any:
        """The frozen SFT policy: partitioned by an inference-only engine under ZeRO-3."""
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        wrapper = CausalLMLogprobs(model.to(self.device), page_tokens=self.page_tokens)
        if dist_cfg.zero_stage != 3:
            return wrapper

        config = {"train_micro_batch_size_per_gpu": int(self.cfg.trainer.micro_batch_size),
                  "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
                  "bf16": {"enabled": self.model_cfg.dtype == "bfloat16"}, "steps_per_print": 1 << 30}
        engine, *_ = initialize_deepspeed(model=wrapper, config=config)
        return engine

    # -- experience -------------------------------------------------------------------------
    def _score(self, module: Any, shard: Batch, entropy: bool = False, top_p: Optional[float] = None):
        """Constrained logprobs of ``shard``'s responses under ``module``, at the sampling temperature.

        The policy is scored on the distribution rollout samples from, the
        nucleus ``rl.rollout.top_p`` included (the default); the reference is
        scored with ``top_p=1``, its whole constrained distribution, so that
        the KL to it stays finite for every page the policy can sample.
        """

        b = self._on_device(shard)
        out = module(b["input_ids"], b["attention_mask"], b["labels"], temperature=self.temperature,
                     return_entropy=entropy, prompt_end=b["prompt_end"],
                     constraint=ResponseConstraint(b["num_candidates"], b["page_sizes"]),
                     top_p=self.top_p if top_p is None else top_p)
        if entropy:
            logp, ent = out
            return (to_response_frame(logp, b["prompt_end"], b["mask"]),
                    to_response_frame(ent, b["prompt_end"], b["mask"]))
        return to_response_frame(out, b["prompt_end"], b["mask"])

    def _on_device(self, shard: Batch) -> Batch:
        return to_device(trim(shard), self.device)

    def experience(self, shard: Batch) -> Batch:
        """Old-policy and reference logprobs, entropy and (with a critic) values of ``shard``. Collective."""
        with self.compute.span("experience"):
            return self._experience(shard)

    def take_compute_spans(self) -> List[Span]:
        """When experience(), train() and probe_logprobs() ran since the last call (distributed.compute_log)."""
        return self.compute.take()

    def peak_memory_mb(self) -> Dict[str, float]:
        return peak_memory_mb(self.device)

    def _experience(self, shard: Batch) -> Batch:
        out: Batch = {}
        with torch.no_grad():
            old, ent = [], []
            refs, values = [], []
            for micro in self._micro_batches(shard):
                lp, en = self._score(self.policy.engine, micro, entropy=True)
                old.append(lp.cpu())
                ent.append(en.cpu())
                refs.append(self._score(self.reference, micro, top_p=1.0).cpu())
                if self.critic is not None:
                    m = self._on_device(micro)
                    values.append(self.critic.engine(m["input_ids"], m["attention_mask"], m["prompt_end"],
                                                     m["mask"]).cpu())
        out["old_logprobs"], out["entropy"], out["ref_logprobs"] = torch.cat(old), torch.cat(ent), torch.cat(refs)
        if values:
            out["values"] = torch.cat(values)
        return out

    def _micro_batches(self, shard: Batch) -> List[Batch]:
        size = next(iter(shard.values())).shape[0]
        step = int(self.cfg.trainer.micro_batch_size)
        return [{k: v[i:i + step] for k, v in shard.items()} for i in range(0, size, step)]

    # -- the update ---------------------------------------------------------------------------
    def train(self, shard: Batch, step: int, kl_coef: float, lr: float) -> Dict[str, float]:
        """``rl.epochs_per_step`` passes of ``rl.minibatches_per_epoch`` optimizer steps over ``shard``.

        ``shard`` carries the experience (``old_logprobs``, ``ref_logprobs``,
        ``advantages``; ``returns`` and ``values`` with a critic). Collective.
        Returns this step's statistics averaged over ranks and minibatches.
        """
        with self.compute.span("train"):
            return self._train(shard, step, kl_coef, lr)

    def _train(self, shard: Batch, step: int, kl_coef: float, lr: float) -> Dict[str, float]:
        cfg = self.cfg
        self.policy.set_lr(lr)
        if self.critic is not None:
            self.critic.set_lr(cfg.critic_lr * lr / cfg.lr)
        size = next(iter(shard.values())).shape[0]
        per_minibatch = size // int(cfg.minibatches_per_epoch)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        sums: Dict[str, float] = {}
        count = 0
        for _ in range(int(cfg.epochs_per_step)):
            order = torch.randperm(size, generator=generator)
            for m in range(int(cfg.minibatches_per_epoch)):
                rows = order[m * per_minibatch:(m + 1) * per_minibatch]
                minibatch = {k: v[rows] for k, v in shard.items()}
                tokens = float(minibatch["mask"].sum())
                pages = float(minibatch["mask"].any(dim=1).sum())
                stats: Dict[str, float] = {}
                for micro in self._micro_batches(minibatch):
                    denominator = (tokens if cfg.loss_agg == "token_mean" else pages) / self.grad_accum
                    logp, ent = self._score(self.policy.engine, micro, entropy=True)
                    d = self._on_device(micro)
                    mask = d["mask"]
                    loss, pstats = clipped_policy_loss(logp, d["old_logprobs"], d["advantages"], mask,
                                                       clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                                                       loss_agg=cfg.loss_agg, denominator=denominator,
                                                       weights=d.get("is_weights"))
                    if cfg.entropy_coef:
                        loss = loss + entropy_bonus(ent, mask, coef=cfg.entropy_coef, loss_agg=cfg.loss_agg,
                                                    denominator=denominator)
                    if cfg.kl.mode == "loss":
                        loss = loss + kl_loss(logp, d["ref_logprobs"], mask, estimator=cfg.kl.estimator,
                                              coef=kl_coef, loss_agg=cfg.loss_agg, denominator=denominator)
                    self._check_finite(loss, "policy loss", step)
                    self.policy.backward_and_step(loss)
                    share = float(mask.sum()) / max(tokens, 1.0)
                    # the micro losses are scaled so that their sum over the minibatch, / grad_accum, is its loss
                    _add(stats, {"policy_loss": float(loss) / self.grad_accum,
                                 **{k: float(v) * share for k, v in pstats.items()},
                                 "entropy": float((ent * mask).sum()) / max(tokens, 1.0)})
                    if self.critic is not None:
                        values = self.critic.engine(d["input_ids"], d["attention_mask"], d["prompt_end"], mask)
                        vloss, vstats = clipped_value_loss(values, d["returns"], mask, old_values=d["values"],
                                                           value_clip=cfg.value_clip, loss_agg=cfg.loss_agg,
                                                           denominator=denominator)
                        vloss = cfg.value_coef * vloss
                        self._check_finite(vloss, "value loss", step)
                        self.critic.backward_and_step(vloss)
                        _add(stats, {f"value_{k}" if not k.startswith("value") else k: float(v) * share
                                     for k, v in vstats.items()})
                        _add(stats, {"value_loss": float(vloss) / self.grad_accum})
                grad_norm = self.policy.grad_norm()
                if not math.isfinite(grad_norm):
                    raise TrainerError(f"rl step {step}: the policy's gradient norm is {grad_norm}; "
                                       "stopping rather than training on it")
                stats["grad_norm"] = grad_norm
                if self.critic is not None:
                    stats["critic_grad_norm"] = self.critic.grad_norm()
                _add(sums, stats)
                count += 1
        return _all_mean({k: v / max(1, count) for k, v in sums.items()})

    def _check_finite(self, loss: torch.Tensor, what: str, step: int) -> None:
        if not torch.isfinite(loss):
            raise TrainerError(f"rl step {step}: non-finite {what} ({float(loss)}) on trainer rank {self.rank}; "
                               "stopping rather than training on it")

    # -- weight sync and the probe ------------------------------------------------------------
    def setup_weight_sync(self, spec: Dict[str, Any]) -> Dict[str, Any]:
        if self.sender is None:
            self.sender = WeightSender(self.cfg.sync, rank=self.rank, dtype=self.model_cfg.dtype,
                                       timeout_s=self.cfg.timeout_s)
        return self.sender.setup(spec)

    def push_weights(self, version: int) -> Optional[Dict[str, Any]]:
        """Stream the policy's weights in buckets (rank 0 ships). Collective under ZeRO-3."""
        if self.sender is None:
            self.setup_weight_sync({})
        return self.sender.push(self.hf_policy, version)

    def probe_logprobs(self, prompt_ids, response_ids, num_candidates, page_sizes,
                       top_p: Optional[float] = None) -> List[List[float]]:
        """The current policy's constrained per-token logprobs of given pages (with the sampling nucleus,
        or with ``top_p`` when given). Collective under ZeRO-3; below it only rank 0 scores (its answer
        is the one read), leaving the other ranks' cores to the rollout workers' side of the check."""
        if self.rank != 0 and int(self.cfg.trainer.zero_stage) != 3:
            return []
        batch = pack(prompt_ids, response_ids, num_candidates, page_sizes, self._pad_id())
        with torch.no_grad(), self.compute.span("probe"):
            logp = torch.cat([self._score(self.policy.engine, micro, top_p=top_p).cpu()
                              for micro in self._micro_batches(batch)])
        return frame_to_rows(logp.double(), batch["mask"])

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(self.tokenizer.eos_token_id if pad is None else pad)

    def save_policy(self, directory: str) -> None:
        """Export the policy as a Hugging Face directory (config, safetensors, tokenizer). Collective."""
        import torch.distributed as dist

        weights = self.policy.full_fp32_weights()
        if self.rank == 0:
            target = Path(directory)
            tmp = target.with_name(target.name + ".tmp")
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            export = {k: v.to(getattr(torch, self.model_cfg.dtype)) for k, v in weights.items()}
            self.hf_policy.save_pretrained(tmp, state_dict=export, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        dist.barrier()

    def save_checkpoint(self, directory: str, step: int) -> None:
        """Write the policy and critic with their optimizer partitions, and this rank's RNG. Collective.

        The layout is :mod:`pagerl.rl.rl_checkpoint`'s; the controller writes its
        own state after every rank has returned, which completes the checkpoint.
        """
        from safetensors.torch import save_file

        root = Path(directory)
        parts = [(POLICY_PART, self.policy)] + ([(CRITIC_PART, self.critic)] if self.critic is not None else [])
        for part, engine in parts:
            engine.state.step = int(step)
            engine.save(root / part, self.tokenizer, {"rl_step": int(step)})
        save_file({"cpu": torch.get_rng_state()}, str(root / POLICY_PART / _rng_file(self.rank)))
        import torch.distributed as dist

        dist.barrier()

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        # DeepSpeed keeps its clone of the world group; a trainer built later in this process
        # (pagerl.rl.roles.local, one after another in the benchmark) must not be handed the destroyed one.
        import deepspeed.utils.groups as ds_groups

        ds_groups._WORLD_GROUP = None
        ds_groups._ZERO_PARAM_INTRA_PARALLEL_GROUP = None


POLICY_PART, CRITIC_PART = "policy", "critic"


def _rng_file(rank: int) -> str:
    return f"rng_rank{int(rank)}.safetensors"


def _add(into: Dict[str, float], values: Dict[str, float]) -> None:
    for k, v in values.items():
        into[k] = into.get(k, 0.0) + float(v)


def _all_mean(values: Dict[str, float]) -> Dict[str, float]:
    """Mean over ranks of each number (every rank has the same keys)."""
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}
