"""The recipe schema's learning sections: ``rl`` (and its roles) and ``rllib``.

Part of the schema (:mod:`pagerl.config.schema`, which re-exports these
classes): each field carries its own single-field checks and, where it names a
registry entry, its registry key (:mod:`pagerl.config.checks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from pagerl.config.checks import at_least, between, check, checked, factory, greater_than, one_of, positive, registered


def _constrained(on: bool) -> Optional[str]:
    return None if on else "the RL stage needs constrained rollouts (valid pages only) for now"


@dataclass
class RolloutConfig:
    """Rollout workers: Ray actors that lay out pages with the current policy."""

    # A name in pagerl.rl.roles.rollout.ROLLOUT_BACKENDS ("hf": the Hugging Face
    # model with PageRL's constrained decoding loop, on CPU or GPU).
    backend: str = registered("rl.rollout.backend", "hf")
    num_workers: int = checked(1, at_least(1))
    cpus_per_worker: float = checked(0.5, positive("a positive number of CPUs"))
    gpus_per_worker: float = 0.0
    # Torch intra-op threads of a worker; 0: one per reserved CPU (at least
    # one). On-policy, a worker samples while every other role waits, so on
    # a CPU node it may use more cores than it reserves: the others are idle
    # then (README, "Performance: the RL loop"). With rl.overlap the trainer
    # ranks compute at the same time and the default fits.
    torch_threads: int = checked(0, at_least(0, "0 (one per reserved CPU) or more"))
    # Pages sampled per request (the group of GRPO and RLOO).
    samples_per_request: int = checked(4, at_least(1))
    temperature: float = checked(1.0, positive("a positive temperature"))
    # Nucleus sampling over the (constrained) distribution; 1.0 keeps it all.
    top_p: float = checked(1.0, between(0.0, 1.0, low_open=True))
    # Only valid pages can be generated (unused candidates, then EOS).
    constrained: bool = checked(True, _constrained)
    # Prompts per decoding forward pass.
    batch_size: int = checked(64, at_least(1))
    # Times Ray restarts a rollout worker that died (per worker); its pages
    # are asked for again from the new process, after a weight sync.
    max_restarts: int = checked(3, at_least(0, "0 or more restarts"))


@dataclass
class TrainerRoleConfig:
    """The policy trainer ranks: Ray actors forming one torch.distributed group under ZeRO."""

    num_ranks: int = checked(2, at_least(1))
    cpus_per_rank: float = checked(0.5, positive("a positive number of CPUs"))
    gpus_per_rank: float = 0.0
    zero_stage: int = checked(2, one_of(1, 2, 3))
    # Sequences per rank per forward/backward pass.
    micro_batch_size: int = checked(16, at_least(1))
    # Times the stage restarts its roles from the newest RL checkpoint after a
    # trainer rank died (a lost rank breaks the collective, so the group is
    # formed again); one more loss ends the run.
    max_restarts: int = checked(2, at_least(0, "0 or more restarts"))


@dataclass
class KLConfig:
    """The KL divergence to the reference (SFT) policy."""

    # k1: -log r, k2: (log r)^2 / 2, k3: r - 1 - log r with r = p_ref / p
    # (pagerl.rl.algorithms.kl documents them).
    estimator: str = registered("rl.kl.estimator", "k3")
    # "reward": -coef * KL_t is added to the token rewards; "loss": coef * KL
    # is added to the policy loss.
    mode: str = "reward"
    coef: float = 0.05
    # "fixed" keeps coef; "adaptive" moves it towards target KL per token.
    controller: str = registered("rl.kl.controller", "fixed")
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
    transport: str = registered("rl.sync.transport", "object_store")
    # Size of one streamed bucket; under ZeRO-3 one bucket at a time is gathered.
    bucket_mb: float = checked(32.0, positive("a positive size"))
    # After each sync, rollout and trainer logprobs of a fixed probe batch are
    # compared; above max_logprob_delta (per token) the run stops.
    verify: bool = True
    max_logprob_delta: float = checked(1.0e-4, positive("a positive bound"))
    probe_requests: int = 8


@dataclass
class OffPolicyConfig:
    """How an update corrects for pages sampled by other weights than it starts from
    (pagerl.rl.algorithms.off_policy)."""

    # A name in pagerl.rl.algorithms.off_policy.CORRECTIONS: "tis" (truncated
    # importance sampling), "mask" (drop tokens whose ratio is out of range)
    # or "none".
    correction: str = registered("rl.off_policy.correction", "tis")
    # tis: the per-token weight pi_old / mu is capped here.
    tis_cap: float = checked(2.0, at_least(1, "at least 1 (a weight of 1 is on-policy)"))
    # mask: tokens whose weight is above this or below its inverse leave the loss.
    mask_threshold: float = checked(2.0, greater_than(1))


@dataclass
class RLConfig:
    """The RL stage: PPO-family updates of the SFT policy on mixed-grained token rewards."""

    # A name in pagerl.rl.algorithms.ALGORITHMS: ppo | grpo | reinforce_pp |
    # reinforce_pp_baseline | rloo.
    algorithm: str = registered("rl.algorithm", "grpo")
    # RL steps (each: generate, reward, experience, train, sync).
    steps: int = checked(100, at_least(1))
    # Requests drawn per step; each gets rollout.samples_per_request pages.
    requests_per_step: int = checked(32, at_least(1))
    # Passes over one step's experience (PPO epochs) and minibatches per pass.
    epochs_per_step: int = checked(1, at_least(1))
    minibatches_per_epoch: int = checked(1, at_least(1))
    lr: float = checked(1.0e-4, positive("a positive learning rate"))
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    # Clipped surrogate: the ratio is kept in [1 - clip_low, 1 + clip_high].
    clip_low: float = 0.2
    clip_high: float = 0.2
    # How per-token losses become one number (pagerl.rl.algorithms.losses):
    # token_mean | seq_mean_token_sum | seq_mean_token_mean.
    loss_agg: str = registered("rl.loss_agg", "token_mean")
    entropy_coef: float = 0.0
    # Baselines and normalisation per slot position ("per_slot") or over all
    # slots together ("pooled"); see pagerl.rl.algorithms.advantages.
    baseline_scope: str = registered("rl.baseline_scope", "per_slot")
    # Credit of a slot's action: its own item reward ("own") or the item
    # rewards of it and every slot below it ("to_go"); the page reward is
    # credited to every token of the page.
    slot_credit: str = registered("rl.slot_credit", "own")
    # GAE (ppo) and the returns of reinforce_pp.
    gamma: float = 1.0
    lam: float = 0.95
    # Critic (ppo): a value head on a copy of the SFT backbone.
    critic_lr: float = checked(5.0e-4, positive("a positive learning rate"))
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
    timeout_s: float = checked(300.0, at_least(10, "at least 10 seconds"))
    # Write the whole RL state every this many steps (pagerl.rl.rl_checkpoint):
    # policy and critic with their optimizer partitions, every trainer rank's
    # RNG, the prompt cursor, the sync version, the KL coefficient, the reward
    # moments and the per-slot baselines. An interrupted stage resumes from
    # the newest complete one. 0: no checkpoints (a rerun starts over).
    checkpoint_every: int = checked(50, at_least(0, "0 (off) or a positive number of steps"))
    # Complete RL checkpoints kept; older ones are removed as new ones land.
    keep_checkpoints: int = checked(2, at_least(1))
    # Interrupt the stage (as a crash would) after this many steps of one
    # attempt; used to test resume. 0 never interrupts.
    stop_after_steps: int = checked(0, at_least(0, "0 (off) or a positive number of steps"))
    # Moves the seed of every RL random stream (prompt order, sampling,
    # initialisation) away from run.seed, which also fixes the world, SFT and
    # RM (pagerl.rl.rl_seed): the seeds of an ablation.
    seed: int = checked(0, at_least(0, "0 (run.seed itself) or more"))
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
    eval_every: int = checked(0, at_least(0, "0 (off) or a positive number of steps"))
    # How many held-out requests: the first this many of the eval stage's
    # files (data.eval_files or the synth stage's eval split, never RL's
    # training requests); 0: eval.num_requests, the eval stage's own set.
    eval_requests: int = checked(0, at_least(0, "0 (eval.num_requests) or a positive count"))


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
    iterations: int = checked(10, at_least(1))
    train_batch_size: int = checked(2048, at_least(1))
    minibatch_size: int = checked(256, at_least(1))
    num_epochs: int = checked(6, at_least(1))
    lr: float = checked(1.0e-3, positive("a positive learning rate"))
    # The policy network: "candidate" (one MLP scores each candidate from its
    # features, the mean over the request's candidates and the request's
    # features: the same weights for every candidate) or "mlp" (RLlib's
    # default module: one MLP over the whole flat observation, N scores out);
    # names in pagerl.rllib_baseline.ppo.MODELS.
    model: str = registered("rllib.model", "candidate")
    # Widths of the hidden layers of the scorer and of the value function (tanh).
    hidden_sizes: List[int] = checked(factory(lambda: [64, 64]), check(
        lambda sizes: len(sizes) > 0 and min(int(h) for h in sizes) >= 1, "one or more layer widths, each at least 1"))
    entropy_coeff: float = checked(0.0, at_least(0))
    # What a page earns in training: "clicks" (the clicks the simulated user
    # makes on it) or "expected_clicks" (their exact expectation, no noise):
    # a reward of pagerl.envs.REWARDS (checked by pagerl.rllib_baseline.ppo).
    reward: str = "clicks"
    # RLlib env runners (Ray actors) that sample pages; 0 samples in the
    # driver. Each runs num_envs_per_env_runner environments in lock-step.
    num_env_runners: int = checked(0, at_least(0))
    num_envs_per_env_runner: int = checked(16, at_least(1))
    # Moves the seed of training (initialisation, sampling, the training
    # requests' stream) away from run.seed, as rl.seed does for the rl stage.
    seed: int = checked(0, at_least(0))
    # Save the whole RLlib state every this many iterations; an interrupted
    # stage resumes from the newest. 0: no checkpoints (a rerun starts over).
    checkpoint_every: int = checked(10, at_least(0))


