"""The typed recipe schema.

Every knob PageRL has lives here, as a field of a dataclass section. A recipe
YAML is merged over these defaults (see :mod:`pagerl.config.load`), so a field
missing from this file is a field no recipe can set: there are no hidden
environment-variable switches. Fields whose default is ``MISSING`` must be set
by the recipe (or its base).

Cross-field rules that a type alone cannot express ("K must not exceed N")
live in :func:`pagerl.config.validate.check_consistency`, next to the loader,
so that one place lists every rule a recipe must obey.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING


@dataclass
class RunConfig:
    """Where a run writes and how it is reproduced."""

    name: str = MISSING
    # Root under which the run directory ``<output_dir>/<name>`` is created.
    # On a cluster this is shared storage (a mounted path or an fsspec URI
    # that Ray Train understands, such as s3://bucket/prefix).
    output_dir: str = "runs"
    seed: int = 0
    # Stages run in order by ``pagerl run``: any of synth, sft, rm, eval.
    stages: List[str] = field(default_factory=lambda: ["synth", "sft", "eval"])
    # Re-use an existing run directory and resume each stage from its last
    # checkpoint instead of refusing to overwrite it.
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
    # --- Added by the data/simulator helper (pagerl.sim) ---
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


@dataclass
class ModelConfig:
    """The policy model and its tokenizer."""

    # "tiny" builds a model from `tiny` with a tokenizer fitted locally to the
    # training data; anything else is a path to a Hugging Face causal-LM dir.
    source: str = "tiny"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    # sdpa | eager | flash_attention_2 (GPU with the `gpu` extra only)
    attn_implementation: str = "sdpa"
    dtype: str = "float32"  # float32 | bfloat16 | float16
    # Candidate index tokens <c0> ... <c{max_candidates-1}> added to the vocabulary.
    max_candidates: int = 32
    max_prompt_tokens: int = 256
    # Added by the tokenization/models helper: how a request becomes a prompt
    # (pagerl.tokenization.serialize). A price is shown as "price_<b>", b the
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


@dataclass
class EvalConfig:
    """Scoring policies on held-out requests with the simulator's ground truth."""

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


@dataclass
class TrackingConfig:
    """Metrics sinks of a run."""

    jsonl: bool = True
    tensorboard: bool = True
    report: bool = True
    # Added by the tracking helper: seconds between two progress lines of a
    # long loop (pagerl.tracking.progress.Progress); the last step always prints.
    progress_every_s: float = 10.0


@dataclass
class RecipeConfig:
    """A whole recipe: one experiment."""

    run: RunConfig = field(default_factory=RunConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # Path (relative to the recipe file) of the recipe this one extends.
    base: Optional[str] = None
