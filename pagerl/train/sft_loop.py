"""The SFT training loop that runs on every Ray Train worker.

It reads top to bottom as the stage does: load the initial (or resumed)
policy, wrap it for DeepSpeed, then for each optimizer step take this rank's
micro-batches, compute the engagement-weighted negative log-likelihood of the
logged page tokens through the fused logprob kernel, and step; rank 0 logs,
and every rank joins the (collective) checkpoint.

Which likelihood: with ``sft.constrained_loss`` it is that of the constrained
policy, the distribution the policy acts with at evaluation and in RL
(unused candidates of the request, then EOS after K items), computed exactly
from the page tokens' logits (:mod:`pagerl.models.constrained_logprobs`);
otherwise the full-vocabulary softmax, which also pushes mass away from every
token the constraint would mask anyway.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict

import ray
import ray.train
import torch

from pagerl.config.schema import RecipeConfig
from pagerl.distributed.device import to_device
from pagerl.models.build import load_policy
from pagerl.models.constrained_logprobs import PageTokens, ResponseConstraint
from pagerl.models.logprobs import CausalLMLogprobs
from pagerl.tokenization.tokenizer import load_policy_tokenizer
from pagerl.train.batching import collate, lr_at, micro_batches
from pagerl.train.engine import all_mean, all_sum, report_checkpoint, setup_stage_worker, start_stage_training


def weighted_nll(logprobs: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Engagement-weighted token-mean NLL of the response tokens.

    ``logprobs`` are aligned with ``labels[:, 1:]`` (the token at t+1 scored
    from position t); ignored positions carry logprob 0 and count no token.
    """
    mask = (labels[:, 1:] != -100).to(logprobs.dtype)
    per_example = -(logprobs * mask).sum(dim=1)
    tokens = mask.sum(dim=1)
    return (weight * per_example).sum() / (weight * tokens).sum().clamp_min(1.0)


def sft_nll(forward: Callable[..., torch.Tensor], batch: Dict[str, torch.Tensor], *, constrained: bool) -> torch.Tensor:
    """The SFT loss of one collated batch (:func:`pagerl.train.batching.collate`).

    ``forward`` is a :class:`CausalLMLogprobs` call (or the DeepSpeed engine
    around one). ``constrained`` scores the logged pages under the constrained
    policy, built from the batch's ``num_candidates`` and ``page_sizes``;
    otherwise under the full-vocabulary softmax. Either way the result is
    :func:`weighted_nll` of those logprobs.
    """
    constraint = None
    if constrained:
        if "num_candidates" not in batch or "page_sizes" not in batch:
            raise ValueError("sft.constrained_loss: the batch has no num_candidates / page_sizes; build the "
                             "examples with pagerl.stages.sft.encode_examples, which records each page's shape")
        constraint = ResponseConstraint(batch["num_candidates"], batch["page_sizes"])
    logprobs = forward(batch["input_ids"], batch["attention_mask"], batch["labels"], constraint=constraint)
    return weighted_nll(logprobs, batch["labels"], batch["weight"])


def sft_worker(config: Dict[str, Any]) -> None:
    w = setup_stage_worker(config)
    recipe: RecipeConfig = w.recipe
    examples, rank = w.examples, w.rank

    s = recipe.sft
    model = load_policy(config["init_dir"], recipe.model)
    tokenizer = load_policy_tokenizer(config["init_dir"])
    model.train()
    # The page tokens come from the tokenizer, as rollout's constraint does (generate_pages).
    wrapper = CausalLMLogprobs(model, page_tokens=PageTokens.from_tokenizer(tokenizer))
    t = start_stage_training(w, "sft", s, wrapper, model)
    policy, schedule, start, stop_at, metrics, progress = t.policy, t.schedule, t.start, t.stop_at, t.metrics, t.progress

    pad_id = tokenizer.pad_token_id
    window: Dict[str, float] = {"loss": 0.0, "n": 0, "tokens": 0, "t0": time.perf_counter()}
    for step in range(start, stop_at):
        lr = lr_at(step, base_lr=s.lr, warmup_steps=s.warmup_steps, total_steps=schedule.total_steps)
        policy.set_lr(lr)
        step_loss = 0.0
        for indices in micro_batches(schedule, recipe.run.seed, rank, step):
            batch = to_device(collate([examples[i] for i in indices], pad_id), w.device)
            loss = sft_nll(policy.forward, batch, constrained=s.constrained_loss)
            policy.backward_and_step(loss)
            step_loss += loss.item() / s.grad_accum_steps
            window["tokens"] += int((batch["labels"] != -100).sum())
        policy.state.step = step + 1
        policy.state.examples_seen += schedule.global_batch
        window["loss"] += step_loss
        window["n"] += 1

        done = policy.state.step
        if done % s.log_every == 0 or done == stop_at:
            mean_loss = all_mean(window["loss"] / max(1, window["n"]))
            tokens = all_sum(window["tokens"])
            elapsed = time.perf_counter() - window["t0"]
            row = {"loss": mean_loss, "lr": lr, "grad_norm": policy.grad_norm(),
                   "tokens_per_s": tokens / max(elapsed, 1e-9), "step_s": elapsed / max(1, window["n"]),
                   "epoch": done / schedule.steps_per_epoch}
            metrics.log("sft", done, row)
            progress.update(done, {"loss": mean_loss})
            window = {"loss": 0.0, "n": 0, "tokens": 0, "t0": time.perf_counter()}
        if done % s.checkpoint_every == 0 or done == stop_at:
            report_checkpoint(policy, tokenizer, done, schedule.total_steps, schedule.steps_per_epoch, "sft")

    if start >= stop_at:  # nothing left to train: report the checkpoint we resumed from
        ray.train.report({"step": start, "finished": int(start >= schedule.total_steps)})
    metrics.close()


__all__ = ["sft_nll", "sft_worker", "weighted_nll"]
