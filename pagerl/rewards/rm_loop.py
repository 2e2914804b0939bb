"""The reward-model training loop that runs on every Ray Train worker.

It reads as the stage does: load the initial (or resumed) reward model, wrap
it for DeepSpeed, then for each optimizer step take this rank's micro-batches
of preference pairs, score chosen and rejected pages in one forward pass, and
step on the joint Bradley-Terry loss of the page head and the item head;
rank 0 logs, and every rank joins the (collective) checkpoint.

The losses (our design; the paper only says "Bradley-Terry on the pairs"):

- page: ``d = r_page(chosen) - r_page(rejected)``;
- item: ``d = sum over the slots where the pages differ of
  r_item(chosen)[k] - r_item(rejected)[k]``. Slots above the first
  difference score the same on both sides (causal attention), so this puts
  the item model's credit on the slots the pair is about: one slot for a
  relevance pair, both swapped slots for a ranking pair (which forces the
  item scores to depend on the position: a position-blind scorer gives the
  two orders of a swap the same sum);
- each with label smoothing ``eps`` and margin ``m``:
  ``-(1 - eps) log sigmoid(d - m) - eps log sigmoid(m - d)``, weighted by the
  pair's weight, and ``loss = page_loss_weight * page + item_loss_weight * item``;
- with click supervision on (:mod:`pagerl.rewards.clicks`), each step's
  micro-batch also carries ``micro_batch_size`` logged impressions, drawn in
  their own seeded order, whose rows join the same forward pass, and the loss
  adds ``click_loss_weight * item BCE + page_click_loss_weight * page Poisson NLL``.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Sequence

import ray
import ray.train
import torch
import torch.nn.functional as F

from pagerl.config.schema import RecipeConfig
from pagerl.distributed.device import to_device
from pagerl.rewards.clicks import click_losses, labels_tensor, uses_clicks
from pagerl.rewards.models import RewardModel, pack_sequences
from pagerl.tokenization.tokenizer import load_policy_tokenizer
from pagerl.train.batching import Schedule, lr_at, micro_batches
from pagerl.train.engine import all_mean, all_sum, report_checkpoint, setup_stage_worker, start_stage_training


def bradley_terry_loss(delta: torch.Tensor, weight: torch.Tensor, label_smoothing: float = 0.0,
                       margin: float = 0.0) -> torch.Tensor:
    """Weighted mean of the smoothed, margined Bradley-Terry NLL of reward differences ``delta`` [B]."""
    z = delta - margin
    nll = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return (weight * nll).sum() / weight.sum().clamp_min(1e-8)


def collate_pairs(examples: Sequence[Dict[str, Any]], pad_id: int,
                  impressions: Sequence[Dict[str, Any]] = ()) -> Dict[str, torch.Tensor]:
    """Chosen rows, rejected rows, then logged-impression rows in one padded batch, plus the per-pair tensors.

    Each pair example holds ``prompt``, ``chosen``, ``rejected`` (response ids:
    K index tokens + EOS), ``slots`` (where the pages differ), ``weight`` and
    ``family`` (an int code); each impression example (:func:`pagerl.rewards.clicks.encode_impressions`)
    ``prompt``, ``response`` and ``labels``, which become ``click_labels``.
    """
    rows = [(e["prompt"], e["chosen"]) for e in examples] + [(e["prompt"], e["rejected"]) for e in examples]
    rows += [(e["prompt"], e["response"]) for e in impressions]
    batch = pack_sequences(rows, pad_id)
    k_max = batch["slot_positions"].shape[1]
    if impressions:
        batch["click_labels"] = labels_tensor(impressions, k_max)
    diff = torch.zeros((len(examples), k_max), dtype=torch.bool)
    for i, e in enumerate(examples):
        diff[i, list(e["slots"])] = True
    batch["diff_slots"] = diff
    batch["weight"] = torch.tensor([float(e["weight"]) for e in examples], dtype=torch.float32)
    batch["family"] = torch.tensor([int(e["family"]) for e in examples], dtype=torch.long)
    return batch


def pair_deltas(page: torch.Tensor, item: torch.Tensor, diff_slots: torch.Tensor):
    """Per-pair ``(page delta, item delta)`` from the scores of the 2B rows of :func:`collate_pairs`."""
    b = diff_slots.shape[0]
    page_delta = page[:b] - page[b : 2 * b]
    item_delta = ((item[:b] - item[b : 2 * b]) * diff_slots.to(item.dtype)).sum(dim=1)
    return page_delta, item_delta


def rm_losses(model_out, batch: Dict[str, torch.Tensor], rm_cfg: Any) -> Dict[str, torch.Tensor]:
    """The joint loss and its parts for one micro-batch."""
    page, item = model_out
    page_delta, item_delta = pair_deltas(page, item, batch["diff_slots"])
    page_loss = bradley_terry_loss(page_delta, batch["weight"], rm_cfg.label_smoothing, rm_cfg.margin)
    item_loss = bradley_terry_loss(item_delta, batch["weight"], rm_cfg.label_smoothing, rm_cfg.margin)
    loss = rm_cfg.page_loss_weight * page_loss + rm_cfg.item_loss_weight * item_loss
    parts = {"page_loss": page_loss, "item_loss": item_loss,
             "page_acc": (page_delta > 0).float().mean(), "item_acc": (item_delta > 0).float().mean()}
    if "click_labels" in batch:
        rows = 2 * batch["diff_slots"].shape[0]
        parts.update(click_losses(page[rows:], item[rows:], batch["click_labels"]))
        loss = (loss + rm_cfg.click_loss_weight * parts["click_item_loss"]
                + rm_cfg.page_click_loss_weight * parts["click_page_loss"])
    return {"loss": loss, **parts}


def rm_worker(config: Dict[str, Any]) -> None:
    w = setup_stage_worker(config)
    recipe: RecipeConfig = w.recipe
    examples, rank = w.examples, w.rank

    s = recipe.rm
    model = RewardModel.from_pretrained(config["init_dir"], dtype=recipe.model.dtype,
                                        attn_implementation=recipe.model.attn_implementation)
    tokenizer = load_policy_tokenizer(config["init_dir"])
    model.train()
    t = start_stage_training(w, "rm", s, model, model)
    policy, schedule, start, stop_at, metrics, progress = t.policy, t.schedule, t.start, t.stop_at, t.metrics, t.progress

    pad_id = tokenizer.pad_token_id
    names = ("loss", "page_loss", "item_loss", "page_acc", "item_acc")
    logged = ray.get(config["impressions_ref"]) if uses_clicks(s) else []
    if logged:
        names += ("click_item_loss", "click_page_loss")
        # The impressions' own order: a fixed-size share of every micro-batch, whatever the pair count.
        click_schedule = Schedule(len(logged), s.micro_batch_size, s.grad_accum_steps, schedule.world_size, 1, 0)
    window = _new_window(names)
    for step in range(start, stop_at):
        lr = lr_at(step, base_lr=s.lr, warmup_steps=s.warmup_steps, total_steps=schedule.total_steps)
        policy.set_lr(lr)
        click_batches = micro_batches(click_schedule, recipe.run.seed + 1, rank, step) if logged else None
        for m, indices in enumerate(micro_batches(schedule, recipe.run.seed, rank, step)):
            shown = [logged[i] for i in click_batches[m]] if logged else ()
            batch = to_device(collate_pairs([examples[i] for i in indices], pad_id, shown), w.device)
            out = policy.forward(batch["input_ids"], batch["attention_mask"],
                                 batch["slot_positions"], batch["eos_positions"])
            parts = rm_losses(out, batch, s)
            policy.backward_and_step(parts["loss"])
            for name in names:
                window[name] += float(parts[name].item()) / s.grad_accum_steps
        policy.state.step = step + 1
        policy.state.examples_seen += schedule.global_batch
        window["n"] += 1

        done = policy.state.step
        if done % s.log_every == 0 or done == stop_at:
            means = {name: all_mean(window[name] / max(1, window["n"])) for name in names}
            elapsed = time.perf_counter() - window["t0"]
            row = {**means, "lr": lr, "grad_norm": policy.grad_norm(),
                   "pairs_per_s": all_sum(window["n"] * s.micro_batch_size * s.grad_accum_steps) / max(elapsed, 1e-9),
                   "epoch": done / schedule.steps_per_epoch}
            metrics.log("rm", done, row)
            progress.update(done, {"loss": means["loss"], "page_acc": means["page_acc"],
                                   "item_acc": means["item_acc"]})
            window = _new_window(names)
        if done % s.checkpoint_every == 0 or done == stop_at:
            report_checkpoint(policy, tokenizer, done, schedule.total_steps, schedule.steps_per_epoch, "rm")

    if start >= stop_at:  # nothing left to train: report the checkpoint we resumed from
        ray.train.report({"step": start, "finished": int(start >= schedule.total_steps)})
    metrics.close()


def _new_window(names: Sequence[str]) -> Dict[str, float]:
    window: Dict[str, float] = {name: 0.0 for name in names}
    window["n"] = 0
    window["t0"] = time.perf_counter()
    return window
