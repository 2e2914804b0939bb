"""The typed recipe schema.

Every knob PageRL has lives here, as a field of a dataclass section (the
reward sections are written in :mod:`pagerl.config.schema_rewards`, the RL
and RLlib ones in :mod:`pagerl.config.schema_rl`; all are importable from
here). A recipe YAML is merged over these defaults (see
:mod:`pagerl.config.load`), so a field missing from the schema is a field no
recipe can set: there are no hidden environment-variable switches. Fields
whose default is ``MISSING`` must be set by the recipe (or its base).

Where each kind of check lives:

- the type of every key: its annotation here (checked when a layer is merged);
- a condition on one key's value alone (a range, a choice of words): on its
  field, with the helpers of :mod:`pagerl.config.checks`
  (``checked(2, at_least(1))``);
- a key that names an entry of a registry (``rl.algorithm``, ``run.stages``):
  marked on its field with the registry's key (``registered("rl.algorithm",
  "grpo")``), and checked against that registry by one loop;
- conditions between keys ("K must not exceed N"): rules in
  :mod:`pagerl.config.rules`, or registered there by the subsystem that knows
  them (:mod:`pagerl.app.recipes` loads them all).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING

from pagerl.config.checks import (
    at_least,
    between,
    check,
    checked,
    factory,
    fraction,
    not_blank,
    one_of,
    positive,
    registered,
)
from pagerl.config.model_source import ModelSourceError, resolve_source
from pagerl.config.schema_rewards import PairFamilyConfig, PairsConfig, RewardConfig, RMConfig
from pagerl.config.schema_rl import (
    KLConfig,
    OffPolicyConfig,
    RLConfig,
    RLlibConfig,
    RolloutConfig,
    TrainerRoleConfig,
    WeightSyncConfig,
)

__all__ = [
    "AblationConfig", "AblationVariant", "DataConfig", "DistributedConfig", "EnvConfig", "EvalConfig",
    "KLConfig", "ModelConfig", "ObpSlateConfig", "OffPolicyConfig", "PairFamilyConfig", "PairsConfig",
    "RLConfig", "RLlibConfig", "RMConfig", "RecipeConfig", "RewardConfig", "RolloutConfig", "RunConfig",
    "SFTConfig", "SimConfig", "TinyModelConfig", "TrackingConfig", "TrainerRoleConfig", "WeightSyncConfig",
]


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
    stages: List[str] = registered("run.stages", factory(lambda: ["synth", "sft", "eval"]))
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
    # Logging policy that produced the logged pages (a name in
    # pagerl.sim.logging_policies.LOGGING_POLICIES): "noisy_softmax" is a softmax over
    # its own noisy estimate of relevance, sampled without replacement (Plackett-Luce).
    logging_policy: str = registered("sim.logging_policy", "noisy_softmax")
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

    # A name in pagerl.envs.ENVIRONMENTS.
    name: str = registered("env.name", "pagesim")
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
    on_bad_row: str = checked("skip", one_of("skip", "error"))
    # Give up even in skip mode when more than this share of rows is bad.
    max_bad_fraction: float = checked(0.05, fraction())


@dataclass
class TinyModelConfig:
    """A small causal LM built from a config: used on CPU and in CI."""

    # A name in pagerl.models.build.FAMILIES: llama | qwen2.
    family: str = registered("model.tiny.family", "llama")
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = checked(4, at_least(1))
    num_kv_heads: int = checked(2, at_least(1))
    intermediate_size: int = 128
    max_position_embeddings: int = 512
    # One matrix for input and output embeddings. Tied, the candidate index
    # tokens a page copies from the prompt are read and written in the same
    # space, which is what lets a small model learn to point at candidates.
    tie_word_embeddings: bool = False


def _model_source(value: str) -> Optional[str]:
    """``model.source`` names a model PageRL can load (pagerl.config.model_source): a packaged
    model whose package is missing fails here, at load, naming the install command, rather than
    in the SFT stage after synth has run."""
    try:
        resolve_source(value)
    except ModelSourceError as exc:
        return str(exc).removeprefix("model.source: ")
    return None


@dataclass
class ModelConfig:
    """The policy model and its tokenizer."""

    # "tiny" builds a model from `tiny` with a tokenizer fitted locally to the
    # training data. Otherwise a pretrained causal LM, never downloaded
    # (pagerl.config.model_source): a packaged model by name
    # (smollm2-135m-instruct) or as package:<python package>/<file>.gguf, a
    # local Hugging Face model directory, or a local .gguf file.
    source: str = checked("tiny", _model_source)
    # Wrap each prompt in the tokenizer's chat template as one user turn,
    # followed by the assistant header (the page is the assistant's answer).
    # For instruct models; needs a pretrained source whose tokenizer has one.
    chat_template: bool = False
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    # sdpa | eager | flash_attention_2 (GPU with the `gpu` extra only)
    attn_implementation: str = checked("sdpa", one_of("sdpa", "eager", "flash_attention_2"))
    dtype: str = checked("float32", one_of("float32", "bfloat16", "float16"))
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

    num_workers: int = checked(2, at_least(1))
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # auto picks nccl with GPUs and gloo on CPU.
    backend: str = checked("auto", one_of("auto", "gloo", "nccl"))
    # DeepSpeed ZeRO stage 1, 2 or 3 (partitioning optimizer state, + gradients, + parameters).
    zero_stage: int = checked(2, one_of(1, 2, 3))
    # Worker-group restarts Ray Train may make after a worker dies; each
    # restart resumes from the stage's latest checkpoint.
    max_failures: int = checked(0, at_least(0))
    # Seconds before a collective gives up; keeps a stuck rank from hanging a
    # run for gloo's 30-minute default.
    timeout_s: int = checked(300, at_least(10, "at least 10 seconds"))
    # Address of an existing Ray cluster ("auto" inside `ray job submit`);
    # empty starts a local cluster on loopback.
    ray_address: str = ""


@dataclass
class SFTConfig:
    """Behaviour cloning of logged pages."""

    epochs: int = 3
    # Stop after this many optimizer steps (0: run all epochs).
    max_steps: int = 0
    micro_batch_size: int = checked(16, at_least(1))
    grad_accum_steps: int = checked(1, at_least(1))
    lr: float = checked(3e-3, positive("a positive learning rate"))
    weight_decay: float = 0.0
    warmup_steps: int = 10
    grad_clip: float = 1.0
    # none | clicks | gmv: weight each logged page by its engagement.
    engagement_weighting: str = checked("clicks", one_of("none", "clicks", "gmv"))
    # Weight of a page with no engagement when weighting is on.
    min_weight: float = 0.1
    checkpoint_every: int = checked(50, at_least(1))
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


def _obp_installed(on: bool) -> Optional[str]:
    """The Open Bandit Dataset check reads the sample inside obp, an optional extra: a recipe that
    turns it on without obp fails here, at load, not in the eval stage after every stage before it."""
    if on and importlib.util.find_spec("obp") is None:
        return ("is on, but obp is not installed (the Open Bandit Dataset sample ships inside it): "
                "pip install 'pagerl[obp]' (obp==0.4.1), or set eval.obd_check=false")
    return None


@dataclass
class EvalConfig:
    """Scoring policies on held-out requests with the simulator's ground truth."""

    # The first this many requests of the eval data files are scored (0: all).
    num_requests: int = 200
    # NDCG cut-off; 0 means the page size.
    ndcg_k: int = 0
    decoding: str = checked("greedy", one_of("greedy", "sample"))
    temperature: float = 1.0
    constrained: bool = True
    batch_size: int = 32
    # Reference policies scored beside the run's own: names in
    # pagerl.eval.baseline_policies.BASELINES.
    baselines: List[str] = registered("eval.baselines", factory(lambda: ["random", "popularity", "logging", "oracle"]))
    # Percentile bootstrap over requests (pagerl.eval.stats): resamples drawn
    # from run.seed, shared by every method; 0 turns the intervals off.
    bootstrap_resamples: int = checked(2000, at_least(0, "0 (no intervals) or more resamples"))
    # Coverage of every interval the evaluation and the ablation report.
    ci_level: float = checked(0.95, between(0.0, 1.0, "a coverage strictly between 0 and 1 (e.g. 0.95)",
                                            low_open=True, high_open=True))
    # Real logged clicks: the IPS estimate of the Bernoulli-TS policy's click
    # rate from the Open Bandit Dataset sample's random campaign, beside the
    # click rate BTS logged itself (pagerl.eval.obd_bts), in results.json and
    # the report. Needs obp, the optional extra: pip install 'pagerl[obp]'.
    obd_check: bool = checked(False, _obp_installed)
    # The OBD campaign of that check: all | men | women.
    obd_campaign: str = checked("all", one_of("all", "men", "women"))
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


# Keys a variant of an ablation may not set: the budget every variant shares, and the seed,
# which the ablation sets (ablation.seeds).
ABLATION_FIXED = ("rl.steps", "rl.requests_per_step", "rl.rollout.samples_per_request", "rl.seed")


def _variants(variants: List[Any]) -> Optional[str]:
    """Variants have distinct names that can name a directory, and set only rewards.* and rl.*
    keys other than the budget."""
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        return f"a variant name is listed twice: {names}"
    for name, overrides in ((v.name, v.overrides) for v in variants):
        if not name.replace("_", "").isalnum():
            return f"variant name {name!r}: expected letters, digits and '_' (it names a directory)"
        for override in overrides:
            key, sep, _ = str(override).partition("=")
            key = key.strip()
            if not sep or not key.startswith(("rewards.", "rl.")):
                return (f"variant {name!r}: expected 'rewards.<key>=value' or 'rl.<key>=value' overrides (the "
                        f"data, SFT and reward model are shared), got {override!r}")
            if key in ABLATION_FIXED:
                return (f"variant {name!r} sets {key}: every variant trains with the recipe's budget and the "
                        "seeds of ablation.seeds")
    return None


@dataclass
class AblationConfig:
    """``pagerl ablate``: reward variants trained with one budget over several RL seeds (pagerl.app.ablation)."""

    # Values of rl.seed each variant is trained with; the data, SFT policy and
    # reward model are the recipe's, shared by every variant and seed.
    seeds: List[int] = checked(
        factory(lambda: [0, 1, 2]),
        check(lambda seeds: len(seeds) > 0, "at least one value of rl.seed"),
        check(lambda seeds: len(set(seeds)) == len(seeds) and min(seeds) >= 0, "distinct values of rl.seed, 0 or more"),
    )
    # The variants (a list, so a recipe's list replaces this one whole). A
    # variant may set rewards.* and rl.* keys other than the budget:
    # rl.steps, rl.requests_per_step and rl.rollout.samples_per_request are
    # the recipe's for every variant.
    variants: List[AblationVariant] = checked(factory(_ablation_variants), _variants)
    # The variant the others are measured against: the joint reward.
    reference: str = "mixed"


def _mlflow_uri(uri: str) -> Optional[str]:
    if uri and (":" not in uri or (uri.startswith("sqlite:") and not uri.startswith("sqlite:////"))):
        return (f"expected an MLflow tracking URI with an absolute path or a host (sqlite:////abs/path/mlflow.db, "
                f"http://host:5000), or empty for a store in the run directory; got {uri!r} (Ray Train workers "
                "start in another directory, so a relative path would point elsewhere)")
    return None


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
    wandb_project: str = checked("pagerl", not_blank("a W&B project name"))
    # A mode of pagerl.tracking.sinks.WANDB_MODES (checked by pagerl.app.recipes).
    wandb_mode: str = "offline"
    # MLflow (pip extra "tracking"): one MLflow run per stage, named
    # "<run.name>-<stage>". An empty URI keeps a local SQLite store in
    # <run_dir>/mlflow/mlflow.db; otherwise an MLflow tracking URI with an
    # absolute path or a host (sqlite:////abs/mlflow.db, http://host:5000).
    mlflow: bool = False
    mlflow_uri: str = checked("", _mlflow_uri)
    mlflow_experiment: str = checked("pagerl", not_blank("an MLflow experiment name"))
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
