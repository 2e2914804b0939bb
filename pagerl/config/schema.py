"""The typed recipe schema.

Every knob PageRL has lives here, as a field of a dataclass section. A recipe
YAML is merged over these defaults (see :mod:`pagerl.config.load`), so a field
missing from this file is a field no recipe can set: there are no hidden
environment-variable switches. Fields whose default is ``MISSING`` must be set
by the recipe (or its base).

Cross-field rules that a type alone cannot express ("K must not exceed N")
live in :mod:`pagerl.config.rules`, registered by the subsystem that knows them
(:mod:`pagerl.app.recipes` loads them all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING


@dataclass
class RunConfig:
    """Where a run writes and how it is reproduced."""

    name: str = MISSING
    # Root under which the run directory ``<output_dir>/<name>`` is created:
    # a local path, or on a multi-node cluster a mount every node sees (URIs
    # such as s3:// are refused at load). Like every path key it is made
    # absolute against the directory the command was started in, when the
    # recipe loads (pagerl.config.paths).
    output_dir: str = "runs"
    seed: int = 0
    # Stages run in order by ``pagerl run``: names in pagerl.stages.STAGES
    # (synth, rllib, sft, rm, rl, eval). A stage whose output is already complete in
    # the run directory is skipped.
    stages: List[str] = field(default_factory=lambda: ["synth", "sft", "eval"])
    # Re-use an existing run directory: skip complete stages and resume the
    # others from their last checkpoint, instead of refusing to overwrite it.
    resume: bool = True


@dataclass
class SimConfig:
    """The whole-page user simulator: the ground truth world of synthetic runs."""

    num_items: int = 400
    num_users: int = 300
    num_categories: int = 8
    # Latent dimension of the user-item affinity model.
    latent_dim: int = 8
    candidates_per_request: int = 12
    page_size: int = 5
    history_length: int = 6
    # Examination probability at slot k (0-based) is 1 / (1 + k) ** position_bias.
    position_bias: float = 1.0
    # Cascade: after a click the user continues with this probability.
    continue_after_click: float = 0.7
    # Page-level, non-additive effects (see pagerl.sim.simulator).
    diversity_bonus: float = 0.15
    redundancy_penalty: float = 0.2
    # Scale of the item relevance logits: higher means sharper preferences.
    relevance_scale: float = 3.0
    purchase_rate: float = 0.3
    price_min: float = 5.0
    price_max: float = 200.0
    # Logging policy that produced the logged pages: softmax over its own
    # noisy estimate of relevance, sampled without replacement (Plackett-Luce).
    logging_policy: str = "noisy_softmax"
    logging_temperature: float = 0.7
    logging_noise: float = 0.6
    num_train_requests: int = 3000
    num_eval_requests: int = 200
    # Offset of the relevance logit: sigmoid(relevance_scale * s + relevance_bias)
    # is the click probability of an examined item; lower means fewer clicks.
    relevance_bias: float = -5.0
    # Weights of the parts of the user-item score s (normalised to unit
    # variance): category affinity (visible through the history categories),
    # latent match (hidden; hinted by the user features) and item quality
    # (visible through the title adjective and rating).
    category_weight: float = 1.0
    latent_weight: float = 0.6
    quality_weight: float = 0.6
    # Share of catalogue items that have a near-duplicate (same category,
    # near-identical title); the redundancy penalty acts on them.
    near_duplicate_fraction: float = 0.3
    # When a retrieved candidate has near-duplicates, the chance that one is
    # retrieved with it (makes redundancy a real choice on many requests).
    candidate_duplicate_rate: float = 0.5
    # Spread of the candidate retrieval noise (Gumbel scale): 0 retrieves the
    # user's best-matching categories only, large values retrieve at random.
    candidate_noise: float = 1.0
    # Share of requests that carry a search query (a category name); an item
    # of the queried category gets query_boost added to its score s.
    query_rate: float = 0.2
    query_boost: float = 1.5
    # Oracle search: exhaustive (exact) while the number of ordered pages
    # N!/(N-K)! is at most this; beyond it, beam search + local search
    # (approximate, flagged on the result).
    oracle_exhaustive_limit: int = 2_000_000
    oracle_beam_width: int = 32


@dataclass
class ObpSlateConfig:
    """The ``obp_slate`` environment (pagerl.envs.obp_slate): Open Bandit Pipeline's
    synthetic slate bandit. Its world is fixed by ``run.seed`` (obp's random_state)."""

    n_items: int = 10
    page_size: int = 3
    dim_context: int = 5
    # obp's reward_structure: cascade_additive, cascade_decay, standard_additive, standard_decay.
    reward_structure: str = "cascade_additive"
    # obp's click model: "cascade", "pbm" or "none" (no position effect).
    click_model: str = "cascade"
    eta: float = 1.0
    decay_function: str = "exponential"
    # Labels "group <j mod categories>" the items carry as their category (no reward depends on them).
    categories: int = 3
    # Words of the request's query that show the context vector to the prompt: each
    # dimension's N(0, 1) quantile bin out of this many (0: the prompt shows no context).
    context_levels: int = 0


@dataclass
class EnvConfig:
    """Which page environment (pagerl.envs) the synth stage draws logs from, the
    ``simulator`` reward source scores with, and the eval stage scores by.

    ``pagesim`` is configured by the ``sim`` section; every other environment
    by its own section here. The request counts of the synth stage are
    ``sim.num_train_requests`` and ``sim.num_eval_requests`` for any environment.
    """

    name: str = "pagesim"
    obp_slate: ObpSlateConfig = field(default_factory=ObpSlateConfig)


@dataclass
class DataConfig:
    """Logged impressions: where they are read from and how bad rows are handled."""

    # Files of logged impressions (JSONL or Parquet). Empty with the synth
    # stage enabled means: use what the synth stage writes into the run dir.
    train_files: List[str] = field(default_factory=list)
    eval_files: List[str] = field(default_factory=list)
    # What to do with a row that fails validation: "skip" (count, report and
    # go on) or "error" (stop at the first bad row, naming file and line).
    on_bad_row: str = "skip"
    # Give up even in skip mode when more than this share of rows is bad.
    max_bad_fraction: float = 0.05


@dataclass
class TinyModelConfig:
    """A small causal LM built from a config: used on CPU and in CI."""

    family: str = "llama"  # llama | qwen2
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 512
    # One matrix for input and output embeddings. Tied, the candidate index
    # tokens a page copies from the prompt are read and written in the same
    # space, which is what lets a small model learn to point at candidates.
    tie_word_embeddings: bool = False


@dataclass
class ModelConfig:
    """The policy model and its tokenizer."""

    # "tiny" builds a model from `tiny` with a tokenizer fitted locally to the
    # training data. Otherwise a pretrained causal LM, never downloaded
    # (pagerl.config.model_source): a packaged model by name
    # (smollm2-135m-instruct) or as package:<python package>/<file>.gguf, a
    # local Hugging Face model directory, or a local .gguf file.
    source: str = "tiny"
    # Wrap each prompt in the tokenizer's chat template as one user turn,
    # followed by the assistant header (the page is the assistant's answer).
    # For instruct models; needs a pretrained source whose tokenizer has one.
    chat_template: bool = False
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    # sdpa | eager | flash_attention_2 (GPU with the `gpu` extra only)
    attn_implementation: str = "sdpa"
    dtype: str = "float32"  # float32 | bfloat16 | float16
    # Candidate index tokens <c0> ... <c{max_candidates-1}> added to the vocabulary.
    max_candidates: int = 32
    # Candidate echo and pointer (pagerl.models.candidates): each index token
    # carries its candidate's content in, and its logit reads it out. No new
    # weights; stored in the policy's config.json. Without it a policy trained
    # from scratch did not learn which candidates to pick.
    candidate_pointer: bool = True
    max_prompt_tokens: int = 256
    # How a request becomes a prompt (pagerl.tokenization.serialize). A price is shown as "price_<b>", b the
    # number of these edges it reaches (log-spaced by default, so a bucket is
    # a price range of roughly constant ratio).
    price_bucket_edges: List[float] = field(
        default_factory=lambda: [10.0, 25.0, 50.0, 100.0, 200.0]
    )
    # Only the most recent history categories are shown, keeping prompts short.
    max_history_items: int = 16
    # Item attributes (keys of Item.attrs) written into the prompt after the
    # price; none by default, since every word costs prompt length.
    prompt_attrs: List[str] = field(default_factory=list)


@dataclass
class DistributedConfig:
    """How a training stage is spread over Ray workers with DeepSpeed ZeRO."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # auto picks nccl with GPUs and gloo on CPU.
    backend: str = "auto"
    # DeepSpeed ZeRO stage 1, 2 or 3 (partitioning optimizer state, + gradients, + parameters).
    zero_stage: int = 2
    # Worker-group restarts Ray Train may make after a worker dies; each
    # restart resumes from the stage's latest checkpoint.
    max_failures: int = 0
    # Seconds before a collective gives up; keeps a stuck rank from hanging a
    # run for gloo's 30-minute default.
    timeout_s: int = 300
    # Address of an existing Ray cluster ("auto" inside `ray job submit`);
    # empty starts a local cluster on loopback.
    ray_address: str = ""


@dataclass
class SFTConfig:
    """Behaviour cloning of logged pages."""

    epochs: int = 3
    # Stop after this many optimizer steps (0: run all epochs).
    max_steps: int = 0
    micro_batch_size: int = 16
    grad_accum_steps: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    grad_clip: float = 1.0
    # none | clicks | gmv: weight each logged page by its engagement.
    engagement_weighting: str = "clicks"
    # Weight of a page with no engagement when weighting is on.
    min_weight: float = 0.1
    checkpoint_every: int = 50
    log_every: int = 10
    # Interrupt the stage (as a crash would) after this many steps; used to
    # test resume. 0 never interrupts.
    stop_after_steps: int = 0
    # Train the NLL of the constrained policy (only the request's unused
    # candidates, then EOS after K items: the distribution the policy acts
    # with at eval and in RL) instead of the full-vocabulary softmax, whose
    # gradient also spends capacity pushing down tokens the constraint masks.
    # On the quickstart its greedy pages are better (expected clicks 1.137 vs
    # 1.103, paired +0.034 +- 0.011; seed 1: +0.056 +- 0.015). Its loss is a
    # different number: the NLL among the allowed tokens only.
    constrained_loss: bool = True


@dataclass
class RewardConfig:
    """Rewards of the RL stage: where they come from, how they are spread over
    a page's tokens, and the Ray workers that compute them (pagerl.rewards)."""

    # Where rewards come from, a name in pagerl.rewards.reward_sources.REWARD_SOURCES:
    # "learned" (the trained page and item reward models), "simulator" (the
    # simulator's exact ground truth, for upper-bound experiments on simulated
    # data) or "python" (rewards.function).
    source: str = "learned"
    # learned: directory of the trained reward models; empty means <run_dir>/rm/final.
    model_dir: str = ""
    # simulator: what the ground truth pays for, "clicks" (expected clicks of
    # the page, each slot's expected clicks as item rewards) or "gmv".
    sim_objective: str = "clicks"
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
    w_page: float = 1.0
    w_item: float = 1.0
    # Normalisation of page and item rewards: "none", "running" (running
    # mean/std over the run, page and items apart), "joint" (the same means,
    # but both divided by the page rewards' running std: one scale, so the
    # page reward and the summed item rewards stay comparable) or "group"
    # (mean/std among the pages sampled for the same request, as in GRPO).
    normalize: str = "running"
    # What goes on EOS: "whole" (the page reward) or "residual" (the page
    # reward minus the page's summed item rewards when w_item > 0: what the
    # page reward says beyond them; needs normalize none or joint). With
    # rl.slot_credit=to_go, residual credits slot t with
    # w_page * (page - sum items) + w_item * (item rewards of slots >= t)
    # (pagerl.rewards.token_rewards).
    page_reward: str = "whole"
    # Normalised rewards are clipped to [-clip, clip]; 0 disables clipping.
    clip: float = 5.0
    # Reward on the last token of an invalid page (not K distinct candidates),
    # which only unconstrained decoding can produce: -invalid_penalty.
    invalid_penalty: float = 1.0
    # Reward workers: Ray actors, each scoring batch_size pages per forward pass.
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    batch_size: int = 64
    # Times Ray restarts a worker process that died (per worker).
    max_restarts: int = 3
    # Times one batch is sent again after the worker holding it died; each
    # retry is logged and counted, and one more failure stops the run.
    max_batch_retries: int = 3


@dataclass
class PairFamilyConfig:
    """One family of preference pairs: whether it is built, how much it counts."""

    enabled: bool = True
    # Multiplies the confidence of every pair of the family in the
    # Bradley-Terry loss (0 keeps the pairs in the report but not the loss).
    weight: float = 1.0
    # At most this many pairs of the family per logged impression, drawn at
    # random from all the family allows (keeps one busy page from dominating).
    max_per_impression: int = 2


@dataclass
class PairsConfig:
    """Preference pairs built from logged impressions and their feedback
    (pagerl.rewards.pairs documents every rule)."""

    relevance: PairFamilyConfig = field(default_factory=lambda: PairFamilyConfig(max_per_impression=2))
    ranking: PairFamilyConfig = field(default_factory=lambda: PairFamilyConfig(max_per_impression=3))
    diversity: PairFamilyConfig = field(default_factory=lambda: PairFamilyConfig(max_per_impression=2))
    redundancy: PairFamilyConfig = field(default_factory=lambda: PairFamilyConfig(max_per_impression=2))
    # What counts as engagement with a shown item: "click" or "purchase".
    engagement: str = "click"
    # A click with a shorter dwell (seconds) is treated as a misclick, not
    # engagement (minimum evidence); 0 accepts every click.
    min_dwell_s: float = 0.0
    # Confidence of a pair whose engaged item was also purchased, relative to
    # a click-only one (1.0: no difference).
    purchase_weight: float = 1.5
    # Ranking pairs also from "click below a skipped item" (the engaged item
    # moved up past an un-engaged item above it), not only from demotions.
    ranking_skip_above: bool = True
    # Diversity: the homogenised page must match the user's engaged category
    # mix (history + clicks) worse by at least this much (overlap in [0, 1]).
    diversity_min_gap: float = 0.1
    # Diversity: engaged items (history + clicks) needed to know a user's mix.
    diversity_min_evidence: int = 3
    # Near-duplicates of data without attrs["group"]: same category and a
    # title-token Jaccard overlap of at least this.
    near_duplicate_title_overlap: float = 0.75
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
    micro_batch_size: int = 16
    grad_accum_steps: int = 1
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    grad_clip: float = 1.0
    # Add to each response index token the mean embedding of its candidate's
    # words in the prompt (pagerl.rewards.models), so a fresh backbone need
    # not first learn the index -> item lookup from weak pairwise labels.
    candidate_echo: bool = True
    # What the page head reads: "mean" of the EOS and slot index-token states
    # (each item's state feeds the page score directly), or "eos" alone.
    page_pooling: str = "mean"
    # Weights of the page and item Bradley-Terry losses in the joint loss.
    page_loss_weight: float = 1.0
    item_loss_weight: float = 1.0
    # Pointwise click supervision on every logged slot (pagerl.rewards.clicks):
    # the item head's binary cross-entropy against click / no click, and the
    # page head's Poisson NLL of the page's click count. A head trained this
    # way scores pages in click units (probability, expected clicks). 0: off
    # (pairs alone; on the quickstart world the page-reward Spearman against
    # the simulator was 0.37 that way at 300 steps, 0.41 with both on).
    click_loss_weight: float = 1.0
    page_click_loss_weight: float = 1.0
    # Bradley-Terry label smoothing: the chosen page is taken to be better
    # with probability 1 - label_smoothing (implicit feedback is noisy).
    label_smoothing: float = 0.05
    # The chosen page must win by this reward margin before the loss is small.
    margin: float = 0.0
    checkpoint_every: int = 100
    log_every: int = 10
    # Interrupt the stage (as a crash would) after this many steps; used to
    # test resume. 0 never interrupts.
    stop_after_steps: int = 0
    # Quality report: held-out requests scored against the simulator (0: all
    # eval impressions), and the extra pages scored per request besides the
    # logged one (random pages, and perturbations of the logged page).
    quality_requests: int = 200
    quality_random_pages: int = 3
    quality_perturbed_pages: int = 4
    # Credit fidelity (pagerl.rl.credit_fidelity): training requests on which
    # the policy RL starts from samples rl.rollout.samples_per_request pages
    # each, to measure how well each reward setting's token credit tracks the
    # exact credit (needs the environment's exact scorer and a starting
    # policy; 0 turns it off).
    fidelity_requests: int = 200
    # Pages per forward pass when scoring.
    score_batch_size: int = 64


@dataclass
class RolloutConfig:
    """Rollout workers: Ray actors that lay out pages with the current policy."""

    # A name in pagerl.rl.roles.rollout.ROLLOUT_BACKENDS ("hf": the Hugging Face
    # model with PageRL's constrained decoding loop, on CPU or GPU).
    backend: str = "hf"
    num_workers: int = 1
    cpus_per_worker: float = 0.5
    gpus_per_worker: float = 0.0
    # Torch intra-op threads of a worker; 0: one per reserved CPU (at least
    # one). On-policy, a worker samples while every other role waits, so on
    # a CPU node it may use more cores than it reserves: the others are idle
    # then (README, "Performance: the RL loop"). With rl.overlap the trainer
    # ranks compute at the same time and the default fits.
    torch_threads: int = 0
    # Pages sampled per request (the group of GRPO and RLOO).
    samples_per_request: int = 4
    temperature: float = 1.0
    # Nucleus sampling over the (constrained) distribution; 1.0 keeps it all.
    top_p: float = 1.0
    # Only valid pages can be generated (unused candidates, then EOS).
    constrained: bool = True
    # Prompts per decoding forward pass.
    batch_size: int = 64
    # Times Ray restarts a rollout worker that died (per worker); its pages
    # are asked for again from the new process, after a weight sync.
    max_restarts: int = 3


@dataclass
class TrainerRoleConfig:
    """The policy trainer ranks: Ray actors forming one torch.distributed group under ZeRO."""

    num_ranks: int = 2
    cpus_per_rank: float = 0.5
    gpus_per_rank: float = 0.0
    zero_stage: int = 2
    # Sequences per rank per forward/backward pass.
    micro_batch_size: int = 16
    # Times the stage restarts its roles from the newest RL checkpoint after a
    # trainer rank died (a lost rank breaks the collective, so the group is
    # formed again); one more loss ends the run.
    max_restarts: int = 2


@dataclass
class KLConfig:
    """The KL divergence to the reference (SFT) policy."""

    # k1: -log r, k2: (log r)^2 / 2, k3: r - 1 - log r with r = p_ref / p
    # (pagerl.rl.algorithms.kl documents them).
    estimator: str = "k3"
    # "reward": -coef * KL_t is added to the token rewards; "loss": coef * KL
    # is added to the policy loss.
    mode: str = "reward"
    coef: float = 0.05
    # "fixed" keeps coef; "adaptive" moves it towards target KL per token.
    controller: str = "fixed"
    target: float = 0.05
    horizon: int = 10000


@dataclass
class WeightSyncConfig:
    """Pushing the trained policy to the rollout workers, and checking it arrived."""

    # A name in pagerl.rl.weight_sync.TRANSPORTS: "object_store" (buckets
    # through Ray's object store), "collective" (broadcast over a separate
    # gloo/NCCL group of trainer rank 0 and the rollout workers), or
    # "in_process" (tensors handed over in memory, for roles in one process:
    # pagerl.rl.roles.local, the benchmark's single-process reference).
    transport: str = "object_store"
    # Size of one streamed bucket; under ZeRO-3 one bucket at a time is gathered.
    bucket_mb: float = 32.0
    # After each sync, rollout and trainer logprobs of a fixed probe batch are
    # compared; above max_logprob_delta (per token) the run stops.
    verify: bool = True
    max_logprob_delta: float = 1.0e-4
    probe_requests: int = 8


@dataclass
class OffPolicyConfig:
    """How an update corrects for pages sampled by other weights than it starts from
    (pagerl.rl.algorithms.off_policy)."""

    # A name in pagerl.rl.algorithms.off_policy.CORRECTIONS: "tis" (truncated
    # importance sampling), "mask" (drop tokens whose ratio is out of range)
    # or "none".
    correction: str = "tis"
    # tis: the per-token weight pi_old / mu is capped here.
    tis_cap: float = 2.0
    # mask: tokens whose weight is above this or below its inverse leave the loss.
    mask_threshold: float = 2.0


@dataclass
class RLConfig:
    """The RL stage: PPO-family updates of the SFT policy on mixed-grained token rewards."""

    # A name in pagerl.rl.algorithms.ALGORITHMS: ppo | grpo | reinforce_pp |
    # reinforce_pp_baseline | rloo.
    algorithm: str = "grpo"
    # RL steps (each: generate, reward, experience, train, sync).
    steps: int = 100
    # Requests drawn per step; each gets rollout.samples_per_request pages.
    requests_per_step: int = 32
    # Passes over one step's experience (PPO epochs) and minibatches per pass.
    epochs_per_step: int = 1
    minibatches_per_epoch: int = 1
    lr: float = 1.0e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    # Clipped surrogate: the ratio is kept in [1 - clip_low, 1 + clip_high].
    clip_low: float = 0.2
    clip_high: float = 0.2
    # How per-token losses become one number (pagerl.rl.algorithms.losses):
    # token_mean | seq_mean_token_sum | seq_mean_token_mean.
    loss_agg: str = "token_mean"
    entropy_coef: float = 0.0
    # Baselines and normalisation per slot position ("per_slot") or over all
    # slots together ("pooled"); see pagerl.rl.algorithms.advantages.
    baseline_scope: str = "per_slot"
    # Credit of a slot's action: its own item reward ("own") or the item
    # rewards of it and every slot below it ("to_go"); the page reward is
    # credited to every token of the page.
    slot_credit: str = "own"
    # GAE (ppo) and the returns of reinforce_pp.
    gamma: float = 1.0
    lam: float = 0.95
    # Critic (ppo): a value head on a copy of the SFT backbone.
    critic_lr: float = 5.0e-4
    value_clip: float = 0.2
    value_coef: float = 0.5
    # One-step off-policy overlap (pagerl.rl.controller): the pages of step
    # t+1 are sampled while step t trains, by the weights before step t's
    # update, and the update corrects for it (rl.off_policy). Off: exactly on-policy.
    overlap: bool = False
    off_policy: OffPolicyConfig = field(default_factory=OffPolicyConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    trainer: TrainerRoleConfig = field(default_factory=TrainerRoleConfig)
    sync: WeightSyncConfig = field(default_factory=WeightSyncConfig)
    # Seconds any remote call or collective of the RL roles may take before
    # the run stops naming the role that did not answer.
    timeout_s: float = 300.0
    # Write the whole RL state every this many steps (pagerl.rl.rl_checkpoint):
    # policy and critic with their optimizer partitions, every trainer rank's
    # RNG, the prompt cursor, the sync version, the KL coefficient, the reward
    # moments and the per-slot baselines. An interrupted stage resumes from
    # the newest complete one. 0: no checkpoints (a rerun starts over).
    checkpoint_every: int = 50
    # Complete RL checkpoints kept; older ones are removed as new ones land.
    keep_checkpoints: int = 2
    # Interrupt the stage (as a crash would) after this many steps of one
    # attempt; used to test resume. 0 never interrupts.
    stop_after_steps: int = 0
    # Moves the seed of every RL random stream (prompt order, sampling,
    # initialisation) away from run.seed, which also fixes the world, SFT and
    # RM (pagerl.rl.rl_seed): the seeds of an ablation.
    seed: int = 0
    # The policy RL starts from (a saved policy directory); empty: the policy
    # of the stage before rl in run.stages. The reference policy of the KL
    # term is this one too.
    init_policy_dir: str = ""
    # Held-out evaluation inside RL (pagerl.rl.controller): every this many
    # steps, after the last step and before the first, the rollout workers'
    # synced policy lays out pages for the held-out requests as the eval
    # stage decodes them (eval.decoding, eval.constrained, ...), scored by the
    # simulator's ground truth as the eval stage scores them; logged as
    # eval/<metric> of stage rl and timed as the phase "eval". 0: off.
    eval_every: int = 0
    # How many held-out requests: the first this many of the eval stage's
    # files (data.eval_files or the synth stage's eval split, never RL's
    # training requests); 0: eval.num_requests, the eval stage's own set.
    eval_requests: int = 0


@dataclass
class RLlibConfig:
    """The ``rllib`` stage: a non-LLM baseline trained online with RLlib's PPO
    (pagerl.rllib_baseline.ppo, docs/method.md "The RLlib baseline").

    An MLP reads the visible features of a request (what the prompt shows,
    flattened) and scores every candidate; the page is the K best-scored
    candidates in score order. It learns from clicks the simulator draws
    for its own pages, a privilege the language-model policy (trained from
    logs and a reward model) does not have."""

    # PPO iterations (each: sample train_batch_size pages, then num_epochs
    # passes of minibatch_size-page minibatches). 10 x 2048 pages is the
    # budget measured on the quickstart world (docs/method.md).
    iterations: int = 10
    train_batch_size: int = 2048
    minibatch_size: int = 256
    num_epochs: int = 6
    lr: float = 1.0e-3
    # The policy network: "candidate" (one MLP scores each candidate from its
    # features, the mean over the request's candidates and the request's
    # features: the same weights for every candidate) or "mlp" (RLlib's
    # default module: one MLP over the whole flat observation, N scores out).
    model: str = "candidate"
    # Widths of the hidden layers of the scorer and of the value function (tanh).
    hidden_sizes: List[int] = field(default_factory=lambda: [64, 64])
    entropy_coeff: float = 0.0
    # What a page earns in training: "clicks" (the clicks the simulated user
    # makes on it) or "expected_clicks" (their exact expectation, no noise).
    reward: str = "clicks"
    # RLlib env runners (Ray actors) that sample pages; 0 samples in the
    # driver. Each runs num_envs_per_env_runner environments in lock-step.
    num_env_runners: int = 0
    num_envs_per_env_runner: int = 16
    # Moves the seed of training (initialisation, sampling, the training
    # requests' stream) away from run.seed, as rl.seed does for the rl stage.
    seed: int = 0
    # Save the whole RLlib state every this many iterations; an interrupted
    # stage resumes from the newest. 0: no checkpoints (a rerun starts over).
    checkpoint_every: int = 10


@dataclass
class EvalConfig:
    """Scoring policies on held-out requests with the simulator's ground truth."""

    # The first this many requests of the eval data files are scored (0: all).
    num_requests: int = 200
    # NDCG cut-off; 0 means the page size.
    ndcg_k: int = 0
    decoding: str = "greedy"  # greedy | sample
    temperature: float = 1.0
    constrained: bool = True
    batch_size: int = 32
    baselines: List[str] = field(
        default_factory=lambda: ["random", "popularity", "logging", "oracle"]
    )
    # Percentile bootstrap over requests (pagerl.eval.stats): resamples drawn
    # from run.seed, shared by every method; 0 turns the intervals off.
    bootstrap_resamples: int = 2000
    # Coverage of every interval the evaluation and the ablation report.
    ci_level: float = 0.95
    # Real logged clicks: the IPS estimate of the Bernoulli-TS policy's click
    # rate from the Open Bandit Dataset sample's random campaign, beside the
    # click rate BTS logged itself (pagerl.eval.obd_bts), in results.json and
    # the report. Needs obp, the optional extra: pip install 'pagerl[obp]'.
    obd_check: bool = False
    # The OBD campaign of that check: all | men | women.
    obd_campaign: str = "all"
    # The run's own logged propensities: the IPS estimate, from the held-out
    # logs, of the expected clicks per page of the logging policy at twice its
    # temperature, beside its exact value in the simulator, and the mean
    # importance weight (1 if the propensities are right; pagerl.eval.logs_ips
    # says why not the uniform policy). Logs without propensities are skipped.
    ips_check: bool = False


@dataclass
class AblationVariant:
    """One variant of an ablation: a name (its run directory) and the overrides that make it."""

    name: str = MISSING
    # rewards.* and rl.* overrides, as on the command line ("rewards.w_page=0").
    overrides: List[str] = field(default_factory=list)


def _ablation_variants() -> List[AblationVariant]:
    # The paper's three: both rewards, the page-level one dropped, the item-level one dropped.
    # Matched scales: the reward a single-grained variant keeps gets the full weight 1, so that
    # each variant credits the first token with one estimate of the page's value on the same
    # scale (with rewards.normalize=joint), and dropping a reward never also shrinks the other.
    return [AblationVariant("mixed", []), AblationVariant("item_only", ["rewards.w_page=0", "rewards.w_item=1"]),
            AblationVariant("page_only", ["rewards.w_item=0", "rewards.w_page=1"])]


@dataclass
class AblationConfig:
    """``pagerl ablate``: reward variants trained with one budget over several RL seeds (pagerl.app.ablation)."""

    # Values of rl.seed each variant is trained with; the data, SFT policy and
    # reward model are the recipe's, shared by every variant and seed.
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    # The variants (a list, so a recipe's list replaces this one whole). A
    # variant may set rewards.* and rl.* keys other than the budget:
    # rl.steps, rl.requests_per_step and rl.rollout.samples_per_request are
    # the recipe's for every variant.
    variants: List[AblationVariant] = field(default_factory=_ablation_variants)
    # The variant the others are measured against: the joint reward.
    reference: str = "mixed"


@dataclass
class TrackingConfig:
    """Metrics sinks of a run."""

    jsonl: bool = True
    tensorboard: bool = True
    # Weights & Biases (pip extra "tracking"): one W&B run per logger of a
    # stage (a resumed attempt starts another), named "<run.name>-<stage>" and
    # grouped by run.name. "offline" writes under <run_dir>/wandb/ with no
    # network and no API key (upload later with `wandb sync`); "online" sends
    # to the W&B server the user is logged in to.
    wandb: bool = False
    wandb_project: str = "pagerl"
    wandb_mode: str = "offline"
    # MLflow (pip extra "tracking"): one MLflow run per stage, named
    # "<run.name>-<stage>". An empty URI keeps a local SQLite store in
    # <run_dir>/mlflow/mlflow.db; otherwise an MLflow tracking URI with an
    # absolute path or a host (sqlite:////abs/mlflow.db, http://host:5000).
    mlflow: bool = False
    mlflow_uri: str = ""
    mlflow_experiment: str = "pagerl"
    report: bool = True
    # Seconds between two progress lines of a long loop in a log or a
    # non-interactive terminal (pagerl.tracking.progress.Progress); the last
    # step always prints.
    progress_every_s: float = 10.0


@dataclass
class RecipeConfig:
    """A whole recipe: one experiment."""

    run: RunConfig = field(default_factory=RunConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    rllib: RLlibConfig = field(default_factory=RLlibConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # Path (relative to the recipe file) of the recipe this one extends.
    base: Optional[str] = None
