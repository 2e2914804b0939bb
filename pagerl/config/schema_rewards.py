"""The recipe schema's reward sections: ``rewards``, ``pairs`` and ``rm``.

Part of the schema (:mod:`pagerl.config.schema`, which re-exports these
classes): each field carries its own single-field checks and, where it names a
registry entry, its registry key (:mod:`pagerl.config.checks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from pagerl.config.checks import at_least, between, checked, one_of, positive, registered


@dataclass
class RewardConfig:
    """Rewards of the RL stage: where they come from, how they are spread over
    a page's tokens, and the Ray workers that compute them (pagerl.rewards)."""

    # Where rewards come from, a name in pagerl.rewards.reward_sources.REWARD_SOURCES:
    # "learned" (the trained page and item reward models), "simulator" (the
    # simulator's exact ground truth, for upper-bound experiments on simulated
    # data) or "python" (rewards.function).
    source: str = registered("rewards.source", "learned")
    # learned: directory of the trained reward models; empty means <run_dir>/rm/final.
    model_dir: str = ""
    # simulator: what the ground truth pays for, "clicks" (expected clicks of
    # the page, each slot's expected clicks as item rewards) or "gmv".
    sim_objective: str = checked("clicks", one_of("clicks", "gmv"))
    # python: "package.module:function" (or "package.module.function"), called
    # as function(request, page_item_ids) -> (page_reward, [K item rewards]).
    function: str = ""
    # Directories put in front of sys.path, in the driver and in every reward
    # worker, before rewards.function is imported (for a module that is not
    # installed); made absolute at load, against the directory the command
    # was started in.
    python_path: List[str] = field(default_factory=list)
    # Token rewards: each item's reward goes on its index token times w_item,
    # the page reward on EOS times w_page. Page-only: w_item=0; item-only: w_page=0.
    w_page: float = checked(1.0, at_least(0, "a reward weight of 0 or more"))
    w_item: float = checked(1.0, at_least(0, "a reward weight of 0 or more"))
    # Normalisation of page and item rewards: "none", "running" (running
    # mean/std over the run, page and items apart), "joint" (the same means,
    # but both divided by the page rewards' running std: one scale, so the
    # page reward and the summed item rewards stay comparable) or "group"
    # (mean/std among the pages sampled for the same request, as in GRPO);
    # names in pagerl.rewards.token_rewards.NORMALIZATIONS.
    normalize: str = registered("rewards.normalize", "running")
    # What goes on EOS: "whole" (the page reward) or "residual" (the page
    # reward minus the page's summed item rewards when w_item > 0: what the
    # page reward says beyond them; needs normalize none or joint). With
    # rl.slot_credit=to_go, residual credits slot t with
    # w_page * (page - sum items) + w_item * (item rewards of slots >= t)
    # (pagerl.rewards.token_rewards).
    page_reward: str = registered("rewards.page_reward", "whole")
    # Normalised rewards are clipped to [-clip, clip]; 0 disables clipping.
    clip: float = checked(5.0, at_least(0, "0 (no clipping) or a positive bound"))
    # Reward on the last token of an invalid page (not K distinct candidates),
    # which only unconstrained decoding can produce: -invalid_penalty.
    invalid_penalty: float = checked(1.0, at_least(0, "0 or more (it is subtracted)"))
    # Reward workers: Ray actors, each scoring batch_size pages per forward pass.
    num_workers: int = checked(1, at_least(1))
    cpus_per_worker: float = checked(1.0, positive("a positive number of CPUs"))
    batch_size: int = checked(64, at_least(1))
    # Times Ray restarts a worker process that died (per worker).
    max_restarts: int = checked(3, at_least(0))
    # Times one batch is sent again after the worker holding it died; each
    # retry is logged and counted, and one more failure stops the run.
    max_batch_retries: int = checked(3, at_least(0))


@dataclass
class PairFamilyConfig:
    """One family of preference pairs: whether it is built, how much it counts."""

    enabled: bool = True
    # Multiplies the confidence of every pair of the family in the
    # Bradley-Terry loss (0 keeps the pairs in the report but not the loss).
    weight: float = checked(1.0, at_least(0, "a number >= 0"))
    # At most this many pairs of the family per logged impression, drawn at
    # random from all the family allows (keeps one busy page from dominating).
    max_per_impression: int = checked(2, at_least(1))


@dataclass
class PairsConfig:
    """Preference pairs built from logged impressions and their feedback
    (pagerl.rewards.pairs documents every rule)."""

    relevance: PairFamilyConfig = field(default_factory=lambda: PairFamilyConfig(max_per_impression=2))
    ranking: PairFamilyConfig = field(default_factory=lambda: PairFamilyConfig(max_per_impression=3))
    diversity: PairFamilyConfig = field(default_factory=lambda: PairFamilyConfig(max_per_impression=2))
    redundancy: PairFamilyConfig = field(default_factory=lambda: PairFamilyConfig(max_per_impression=2))
    # What counts as engagement with a shown item: "click" or "purchase".
    engagement: str = checked("click", one_of("click", "purchase"))
    # A click with a shorter dwell (seconds) is treated as a misclick, not
    # engagement (minimum evidence); 0 accepts every click.
    min_dwell_s: float = checked(0.0, at_least(0, "seconds >= 0"))
    # Confidence of a pair whose engaged item was also purchased, relative to
    # a click-only one (1.0: no difference).
    purchase_weight: float = checked(1.5, positive("a positive confidence"))
    # Ranking pairs also from "click below a skipped item" (the engaged item
    # moved up past an un-engaged item above it), not only from demotions.
    ranking_skip_above: bool = True
    # Diversity: the homogenised page must match the user's engaged category
    # mix (history + clicks) worse by at least this much (overlap in [0, 1]).
    diversity_min_gap: float = checked(0.1, between(0.0, 1.0, "a mix-overlap gap in [0, 1]"))
    # Diversity: engaged items (history + clicks) needed to know a user's mix.
    diversity_min_evidence: int = checked(3, at_least(0))
    # Near-duplicates of data without attrs["group"]: same category and a
    # title-token Jaccard overlap of at least this.
    near_duplicate_title_overlap: float = checked(0.75, between(0.0, 1.0, "a Jaccard overlap in (0, 1]",
                                                                low_open=True))
    # Drop both pairs when one construction prefers A over B and another B
    # over A on the same request (contradictory evidence).
    drop_conflicts: bool = True


@dataclass
class RMConfig:
    """Page- and item-level reward models trained on the preference pairs
    (one shared backbone with two scalar heads; pagerl.rewards.models)."""

    epochs: int = 1
    # Stop after this many optimizer steps (0: run all epochs).
    max_steps: int = 300
    # Pairs per rank per micro-batch (each pair is two sequences).
    micro_batch_size: int = checked(16, at_least(1))
    grad_accum_steps: int = checked(1, at_least(1))
    lr: float = checked(1.0e-3, positive("a positive learning rate"))
    weight_decay: float = 0.0
    warmup_steps: int = 10
    grad_clip: float = 1.0
    # Add to each response index token the mean embedding of its candidate's
    # words in the prompt (pagerl.rewards.models), so a fresh backbone need
    # not first learn the index -> item lookup from weak pairwise labels.
    candidate_echo: bool = True
    # What the page head reads: "mean" of the EOS and slot index-token states
    # (each item's state feeds the page score directly), or "eos" alone.
    page_pooling: str = checked("mean", one_of("mean", "eos"))
    # Weights of the page and item Bradley-Terry losses in the joint loss.
    page_loss_weight: float = checked(1.0, at_least(0, "a loss weight >= 0"))
    item_loss_weight: float = checked(1.0, at_least(0, "a loss weight >= 0"))
    # Pointwise click supervision on every logged slot (pagerl.rewards.clicks):
    # the item head's binary cross-entropy against click / no click, and the
    # page head's Poisson NLL of the page's click count. A head trained this
    # way scores pages in click units (probability, expected clicks). 0: off
    # (pairs alone; on the quickstart world the page-reward Spearman against
    # the simulator was 0.37 that way at 300 steps, 0.41 with both on).
    click_loss_weight: float = checked(1.0, at_least(0, "a loss weight >= 0"))
    page_click_loss_weight: float = checked(1.0, at_least(0, "a loss weight >= 0"))
    # Bradley-Terry label smoothing: the chosen page is taken to be better
    # with probability 1 - label_smoothing (implicit feedback is noisy).
    label_smoothing: float = checked(0.05, between(0.0, 0.5, high_open=True))
    # The chosen page must win by this reward margin before the loss is small.
    margin: float = 0.0
    checkpoint_every: int = checked(100, at_least(1))
    log_every: int = checked(10, at_least(1))
    # Interrupt the stage (as a crash would) after this many steps; used to
    # test resume. 0 never interrupts.
    stop_after_steps: int = checked(0, at_least(0))
    # Quality report: held-out requests scored against the simulator (0: all
    # eval impressions), and the extra pages scored per request besides the
    # logged one (random pages, and perturbations of the logged page).
    quality_requests: int = checked(200, at_least(0))
    quality_random_pages: int = checked(3, at_least(0))
    quality_perturbed_pages: int = checked(4, at_least(0))
    # Credit fidelity (pagerl.rl.credit_fidelity): training requests on which
    # the policy RL starts from samples rl.rollout.samples_per_request pages
    # each, to measure how well each reward setting's token credit tracks the
    # exact credit (needs the environment's exact scorer and a starting
    # policy; 0 turns it off).
    fidelity_requests: int = 200
    # Pages per forward pass when scoring.
    score_batch_size: int = checked(64, at_least(1))


