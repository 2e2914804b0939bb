"""Cross-field rules of a recipe: the combinations a type alone cannot forbid.

Every rule is one function registered in ``RULES`` with :func:`rule`; each
returns the dotted key at fault and a message, or ``None``. Rules run after the
layers are merged, and the error names the file and line (or override) that set
the key.

The rules here need nothing but the recipe. A rule that needs to know a
subsystem (which environments exist, what an environment accepts, which stages
there are and in what order) is registered by that subsystem's own module,
with the same decorator, so it lives beside what it checks and this package
imports nothing above it; :func:`pagerl.app.recipes.load_recipe` imports them
all before it loads a recipe.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, List, Optional, Tuple

from pagerl.config.model_source import ModelSourceError, resolve_source
from pagerl.config.schema import RecipeConfig
from pagerl.errors import RecipeError

Finding = Optional[Tuple[str, str]]
RULES: List[Callable[[RecipeConfig], Finding]] = []


def rule(fn: Callable[[RecipeConfig], Finding]) -> Callable[[RecipeConfig], Finding]:
    RULES.append(fn)
    return fn


def one_of(key: str, value: object, allowed: Tuple[str, ...]) -> Finding:
    if value not in allowed:
        return key, f"expected one of {', '.join(map(repr, allowed))}, got {value!r}"
    return None


@rule
def _page_fits_candidates(r: RecipeConfig) -> Finding:
    if not 1 <= r.sim.page_size <= r.sim.candidates_per_request:
        return "sim.page_size", (
            f"must be between 1 and sim.candidates_per_request ({r.sim.candidates_per_request}), "
            f"got {r.sim.page_size}"
        )
    return None


@rule
def _candidates_fit_vocabulary(r: RecipeConfig) -> Finding:
    if r.sim.candidates_per_request > r.model.max_candidates:
        return "sim.candidates_per_request", (
            f"{r.sim.candidates_per_request} candidates need as many index tokens, but "
            f"model.max_candidates is {r.model.max_candidates}"
        )
    if r.sim.candidates_per_request > r.sim.num_items:
        return "sim.candidates_per_request", f"cannot exceed sim.num_items ({r.sim.num_items})"
    return None


@rule
def _training_data_exists(r: RecipeConfig) -> Finding:
    if "sft" in r.run.stages and "synth" not in r.run.stages and not r.data.train_files:
        return "data.train_files", "the sft stage needs training data: list files here or add 'synth' to run.stages"
    if "eval" in r.run.stages and "synth" not in r.run.stages and not r.data.eval_files:
        return "data.eval_files", "the eval stage needs held-out requests: list files here or add 'synth' to run.stages"
    return None


@rule
def _bad_rows(r: RecipeConfig) -> Finding:
    if not 0.0 <= r.data.max_bad_fraction <= 1.0:
        return "data.max_bad_fraction", f"expected a fraction in [0, 1], got {r.data.max_bad_fraction}"
    return one_of("data.on_bad_row", r.data.on_bad_row, ("skip", "error"))


@rule
def _model_choices(r: RecipeConfig) -> Finding:
    return (
        one_of("model.tiny.family", r.model.tiny.family, ("llama", "qwen2"))
        or one_of("model.attn_implementation", r.model.attn_implementation, ("sdpa", "eager", "flash_attention_2"))
        or one_of("model.dtype", r.model.dtype, ("float32", "bfloat16", "float16"))
    )


# A packaged model whose package is missing fails here, at load, naming the
# install command, rather than in the SFT stage after synth has run.
@rule
def _model_source(r: RecipeConfig) -> Finding:
    try:
        source = resolve_source(r.model.source)
    except ModelSourceError as exc:
        return "model.source", str(exc).removeprefix("model.source: ")
    if r.model.chat_template and not source.pretrained:
        return "model.chat_template", "the tiny model's word-level tokenizer has no chat template: set it false"
    return None


@rule
def _tiny_shape(r: RecipeConfig) -> Finding:
    t = r.model.tiny
    if t.hidden_size % t.num_heads:
        return "model.tiny.num_heads", f"must divide model.tiny.hidden_size ({t.hidden_size}), got {t.num_heads}"
    if t.num_heads % t.num_kv_heads:
        return "model.tiny.num_kv_heads", f"must divide model.tiny.num_heads ({t.num_heads}), got {t.num_kv_heads}"
    return None


@rule
def _gpu_only_features(r: RecipeConfig) -> Finding:
    if r.model.attn_implementation == "flash_attention_2" and not r.distributed.use_gpu:
        return "model.attn_implementation", "flash_attention_2 runs only on GPU: set distributed.use_gpu=true or use sdpa"
    if r.distributed.backend == "nccl" and not r.distributed.use_gpu:
        return "distributed.backend", "nccl needs GPUs: use gloo (or auto) with distributed.use_gpu=false"
    if r.model.dtype == "float16" and not r.distributed.use_gpu:
        return "model.dtype", "float16 training needs a GPU; use float32 or bfloat16 on CPU"
    return None


@rule
def _distributed(r: RecipeConfig) -> Finding:
    d = r.distributed
    if d.zero_stage not in (1, 2, 3):
        return "distributed.zero_stage", f"expected 1, 2 or 3, got {d.zero_stage}"
    if d.max_failures < 0:
        return "distributed.max_failures", f"expected 0 or more, got {d.max_failures}"
    if d.num_workers < 1:
        return "distributed.num_workers", f"expected at least 1, got {d.num_workers}"
    if d.timeout_s < 10:
        return "distributed.timeout_s", f"expected at least 10 seconds, got {d.timeout_s}"
    return one_of("distributed.backend", d.backend, ("auto", "gloo", "nccl"))


@rule
def _sft(r: RecipeConfig) -> Finding:
    s = r.sft
    if s.micro_batch_size < 1 or s.grad_accum_steps < 1:
        return "sft.micro_batch_size", "micro_batch_size and grad_accum_steps must be at least 1"
    if s.lr <= 0:
        return "sft.lr", f"expected a positive learning rate, got {s.lr}"
    if s.epochs < 1 and s.max_steps < 1:
        return "sft.epochs", "set sft.epochs or sft.max_steps to at least 1"
    if s.checkpoint_every < 1:
        return "sft.checkpoint_every", f"expected at least 1, got {s.checkpoint_every}"
    return one_of("sft.engagement_weighting", s.engagement_weighting, ("none", "clicks", "gmv"))


@rule
def _eval(r: RecipeConfig) -> Finding:
    e = r.eval
    if e.ndcg_k < 0 or e.ndcg_k > r.sim.page_size:
        return "eval.ndcg_k", f"expected 0 (page size) up to sim.page_size ({r.sim.page_size}), got {e.ndcg_k}"
    if e.decoding == "sample" and e.temperature <= 0:
        return "eval.temperature", f"sampling needs a positive temperature, got {e.temperature}"
    if e.bootstrap_resamples < 0:
        return "eval.bootstrap_resamples", f"expected 0 (no intervals) or more resamples, got {e.bootstrap_resamples}"
    if not 0.0 < e.ci_level < 1.0:
        return "eval.ci_level", f"expected a coverage strictly between 0 and 1 (e.g. 0.95), got {e.ci_level}"
    return one_of("eval.decoding", e.decoding, ("greedy", "sample"))


# The Open Bandit Dataset check reads the sample inside obp, an optional extra: a recipe that turns
# it on without obp fails here, at load, not in the eval stage after every stage before it has run.
@rule
def _obd_check(r: RecipeConfig) -> Finding:
    e = r.eval
    finding = one_of("eval.obd_campaign", e.obd_campaign, ("all", "men", "women"))
    if finding or not e.obd_check:
        return finding
    if importlib.util.find_spec("obp") is None:
        return "eval.obd_check", ("is on, but obp is not installed (the Open Bandit Dataset sample ships inside "
                                  "it): pip install 'pagerl[obp]' (obp==0.4.1), or set eval.obd_check=false")
    return None


def check_consistency(recipe: RecipeConfig, where: Callable[[str], str]) -> None:
    """Run every rule; raise one :class:`RecipeError` listing every finding, each naming where its
    key was set (so a recipe with several mistakes is fixed in one pass, not one per run)."""
    problems = [f"{where(key)}: '{key}': {message}" for key, message in
                (finding for finding in (check(recipe) for check in RULES) if finding is not None)]
    if len(problems) == 1:
        raise RecipeError(problems[0])
    if problems:
        raise RecipeError(f"{len(problems)} problems in the recipe:\n" + "\n".join(f"  {p}" for p in problems))


# The rewards section (pagerl.rewards).


_BUILTIN_NORMALIZATIONS = ("group", "joint", "none", "running")


@rule
def _reward_workers(r: RecipeConfig) -> Finding:
    w = r.rewards
    if w.num_workers < 1:
        return "rewards.num_workers", f"expected at least 1, got {w.num_workers}"
    if w.cpus_per_worker <= 0:
        return "rewards.cpus_per_worker", f"expected a positive number of CPUs, got {w.cpus_per_worker}"
    if w.batch_size < 1:
        return "rewards.batch_size", f"expected at least 1, got {w.batch_size}"
    if w.max_restarts < 0:
        return "rewards.max_restarts", f"expected 0 or more, got {w.max_restarts}"
    if w.max_batch_retries < 0:
        return "rewards.max_batch_retries", f"expected 0 or more, got {w.max_batch_retries}"
    return None


# Preference pairs and reward models.
@rule
def _pairs(r: RecipeConfig) -> Finding:
    p = r.pairs
    families = ("relevance", "ranking", "diversity", "redundancy")
    for name in families:
        fam = getattr(p, name)
        if fam.weight < 0:
            return f"pairs.{name}.weight", f"expected a number >= 0, got {fam.weight}"
        if fam.max_per_impression < 1:
            return f"pairs.{name}.max_per_impression", f"expected at least 1, got {fam.max_per_impression}"
    if "rm" in r.run.stages and not any(getattr(p, n).enabled and getattr(p, n).weight > 0 for n in families):
        return "pairs.relevance.enabled", "the rm stage needs at least one pair family enabled with a positive weight"
    if p.min_dwell_s < 0:
        return "pairs.min_dwell_s", f"expected seconds >= 0, got {p.min_dwell_s}"
    if p.purchase_weight <= 0:
        return "pairs.purchase_weight", f"expected a positive confidence, got {p.purchase_weight}"
    if not 0.0 <= p.diversity_min_gap <= 1.0:
        return "pairs.diversity_min_gap", f"expected a mix-overlap gap in [0, 1], got {p.diversity_min_gap}"
    if p.diversity_min_evidence < 0:
        return "pairs.diversity_min_evidence", f"expected 0 or more, got {p.diversity_min_evidence}"
    if not 0.0 < p.near_duplicate_title_overlap <= 1.0:
        return "pairs.near_duplicate_title_overlap", (
            f"expected a Jaccard overlap in (0, 1], got {p.near_duplicate_title_overlap}"
        )
    return one_of("pairs.engagement", p.engagement, ("click", "purchase"))


@rule
def _rm(r: RecipeConfig) -> Finding:
    s = r.rm
    if s.micro_batch_size < 1 or s.grad_accum_steps < 1:
        return "rm.micro_batch_size", "micro_batch_size and grad_accum_steps must be at least 1"
    if s.lr <= 0:
        return "rm.lr", f"expected a positive learning rate, got {s.lr}"
    if s.epochs < 1 and s.max_steps < 1:
        return "rm.epochs", "set rm.epochs or rm.max_steps to at least 1"
    if s.checkpoint_every < 1:
        return "rm.checkpoint_every", f"expected at least 1, got {s.checkpoint_every}"
    if s.log_every < 1:
        return "rm.log_every", f"expected at least 1, got {s.log_every}"
    if not 0.0 <= s.label_smoothing < 0.5:
        return "rm.label_smoothing", f"expected a value in [0, 0.5), got {s.label_smoothing}"
    weights = ("page_loss_weight", "item_loss_weight", "click_loss_weight", "page_click_loss_weight")
    for key in weights:
        if getattr(s, key) < 0:
            return f"rm.{key}", f"expected a loss weight >= 0, got {getattr(s, key)}"
    if sum(getattr(s, key) for key in weights) == 0:
        return "rm.page_loss_weight", f"every loss weight ({', '.join(weights)}) is 0: nothing to train on"
    for key in ("quality_requests", "quality_random_pages", "quality_perturbed_pages", "stop_after_steps"):
        if getattr(s, key) < 0:
            return f"rm.{key}", f"expected 0 or more, got {getattr(s, key)}"
    if s.score_batch_size < 1:
        return "rm.score_batch_size", f"expected at least 1, got {s.score_batch_size}"
    finding = one_of("rm.page_pooling", s.page_pooling, ("mean", "eos"))
    if finding:
        return finding
    if "rm" in r.run.stages and "synth" not in r.run.stages:
        if not r.data.train_files:
            return "data.train_files", "the rm stage needs training data: list files here or add 'synth' to run.stages"
        if not r.data.eval_files:
            return "data.eval_files", (
                "the rm stage reports its quality on held-out impressions: list files here or add 'synth' to run.stages"
            )
    return None


# The RL stage.
@rule
def _rl(r: RecipeConfig) -> Finding:
    c = r.rl
    for key in ("steps", "requests_per_step", "epochs_per_step", "minibatches_per_epoch"):
        if getattr(c, key) < 1:
            return f"rl.{key}", f"expected at least 1, got {getattr(c, key)}"
    for key, value in (("rl.rollout.num_workers", c.rollout.num_workers), ("rl.trainer.num_ranks", c.trainer.num_ranks),
                       ("rl.trainer.micro_batch_size", c.trainer.micro_batch_size),
                       ("rl.rollout.samples_per_request", c.rollout.samples_per_request),
                       ("rl.rollout.batch_size", c.rollout.batch_size)):
        if value < 1:
            return key, f"expected at least 1, got {value}"
    for key, value in (("rl.rollout.cpus_per_worker", c.rollout.cpus_per_worker),
                       ("rl.trainer.cpus_per_rank", c.trainer.cpus_per_rank)):
        if value <= 0:
            return key, f"expected a positive number of CPUs, got {value}"
    if c.rollout.torch_threads < 0:
        return "rl.rollout.torch_threads", f"expected 0 (one per reserved CPU) or more, got {c.rollout.torch_threads}"
    if c.seed < 0:
        return "rl.seed", f"expected 0 (run.seed itself) or more, got {c.seed}"
    if c.trainer.zero_stage not in (1, 2, 3):
        return "rl.trainer.zero_stage", f"expected 1, 2 or 3, got {c.trainer.zero_stage}"
    pages = c.requests_per_step * c.rollout.samples_per_request
    per_minibatch, rest = divmod(pages, c.trainer.num_ranks * c.minibatches_per_epoch)
    if rest or per_minibatch % c.trainer.micro_batch_size:
        return "rl.requests_per_step", (
            f"a step's {pages} pages (rl.requests_per_step x rl.rollout.samples_per_request) must split into "
            f"rl.trainer.num_ranks ({c.trainer.num_ranks}) x rl.minibatches_per_epoch ({c.minibatches_per_epoch}) "
            f"minibatches of whole micro-batches of rl.trainer.micro_batch_size ({c.trainer.micro_batch_size})")
    if not c.rollout.constrained:
        return "rl.rollout.constrained", "the RL stage needs constrained rollouts (valid pages only) for now"
    if not (0 < c.rollout.top_p <= 1):
        return "rl.rollout.top_p", f"expected a value in (0, 1], got {c.rollout.top_p}"
    if c.rollout.temperature <= 0:
        return "rl.rollout.temperature", f"expected a positive temperature, got {c.rollout.temperature}"
    if c.lr <= 0 or c.critic_lr <= 0:
        return ("rl.lr" if c.lr <= 0 else "rl.critic_lr"), "expected a positive learning rate"
    if c.timeout_s < 10:
        return "rl.timeout_s", f"expected at least 10 seconds, got {c.timeout_s}"
    for key, value in (("rl.rollout.max_restarts", c.rollout.max_restarts),
                       ("rl.trainer.max_restarts", c.trainer.max_restarts)):
        if value < 0:
            return key, f"expected 0 or more restarts, got {value}"
    for key in ("checkpoint_every", "stop_after_steps", "eval_every"):
        if getattr(c, key) < 0:
            return f"rl.{key}", f"expected 0 (off) or a positive number of steps, got {getattr(c, key)}"
    if c.eval_requests < 0:
        return "rl.eval_requests", f"expected 0 (eval.num_requests) or a positive count, got {c.eval_requests}"
    if c.eval_every > 0 and "rl" in r.run.stages and "synth" not in r.run.stages and not r.data.eval_files:
        return "rl.eval_every", ("the RL stage's held-out evaluation needs held-out requests: list files in "
                                 "data.eval_files, add 'synth' to run.stages, or set rl.eval_every=0")
    if c.off_policy.tis_cap < 1:
        return "rl.off_policy.tis_cap", f"expected at least 1 (a weight of 1 is on-policy), got {c.off_policy.tis_cap}"
    if c.off_policy.mask_threshold <= 1:
        return "rl.off_policy.mask_threshold", f"expected more than 1, got {c.off_policy.mask_threshold}"
    if c.keep_checkpoints < 1:
        return "rl.keep_checkpoints", f"expected at least 1, got {c.keep_checkpoints}"
    if c.sync.bucket_mb <= 0:
        return "rl.sync.bucket_mb", f"expected a positive size, got {c.sync.bucket_mb}"
    if c.sync.max_logprob_delta <= 0:
        return "rl.sync.max_logprob_delta", f"expected a positive bound, got {c.sync.max_logprob_delta}"
    if "rl" in r.run.stages and r.rewards.normalize == "group":
        return "rewards.normalize", ("the RL stage normalises within groups and per slot in its advantage "
                                     "estimators (rl.algorithm, rl.baseline_scope); use 'running', 'joint' or 'none'")
    return None


# Keys a variant of an ablation may not set: the budget every variant shares, and the seed,
# which the ablation sets (ablation.seeds).
ABLATION_FIXED = ("rl.steps", "rl.requests_per_step", "rl.rollout.samples_per_request", "rl.seed")


@rule
def _ablation(r: RecipeConfig) -> Finding:
    a = r.ablation
    if not a.seeds:
        return "ablation.seeds", "expected at least one value of rl.seed"
    if len(set(a.seeds)) != len(a.seeds) or min(a.seeds) < 0:
        return "ablation.seeds", f"expected distinct values of rl.seed, 0 or more, got {list(a.seeds)}"
    names = [v.name for v in a.variants]
    if len(set(names)) != len(names):
        return "ablation.variants", f"a variant name is listed twice: {names}"
    if a.reference not in names:
        return "ablation.reference", f"expected one of the variants ({', '.join(names)}), got {a.reference!r}"
    for name, overrides in ((v.name, v.overrides) for v in a.variants):
        if not name.replace("_", "").isalnum():
            return "ablation.variants", f"variant name {name!r}: expected letters, digits and '_' (it names a directory)"
        for override in overrides:
            key, sep, _ = str(override).partition("=")
            key = key.strip()
            if not sep or not key.startswith(("rewards.", "rl.")):
                return "ablation.variants", (f"variant {name!r}: expected 'rewards.<key>=value' or 'rl.<key>=value' "
                                             f"overrides (the data, SFT and reward model are shared), got {override!r}")
            if key in ABLATION_FIXED:
                return "ablation.variants", (f"variant {name!r} sets {key}: every variant trains with the recipe's "
                                             "budget and the seeds of ablation.seeds")
    return None


@rule
def _reward_shaping(r: RecipeConfig) -> Finding:
    w = r.rewards
    if w.w_page < 0 or w.w_item < 0:
        key = "rewards.w_page" if w.w_page < 0 else "rewards.w_item"
        return key, f"a reward weight must be 0 or more, got {w.w_page if w.w_page < 0 else w.w_item}"
    if w.w_page == 0 and w.w_item == 0:
        return "rewards.w_page", "rewards.w_page and rewards.w_item are both 0: no reward would reach the policy"
    if w.clip < 0:
        return "rewards.clip", f"expected 0 (no clipping) or a positive bound, got {w.clip}"
    if w.invalid_penalty < 0:
        return "rewards.invalid_penalty", f"expected 0 or more (it is subtracted), got {w.invalid_penalty}"
    if w.page_reward == "residual" and w.normalize not in ("none", "joint"):
        return "rewards.page_reward", (f"'residual' subtracts the summed item rewards from the page reward, so both "
                                       f"must be on one scale: expected rewards.normalize 'joint' or 'none', got "
                                       f"{w.normalize!r}")
    return None


# The rllib stage: the non-LLM baseline trained with RLlib's PPO (pagerl.rllib_baseline.ppo).
@rule
def _rllib(r: RecipeConfig) -> Finding:
    c = r.rllib
    for key in ("iterations", "train_batch_size", "minibatch_size", "num_epochs", "num_envs_per_env_runner"):
        if getattr(c, key) < 1:
            return f"rllib.{key}", f"expected at least 1, got {getattr(c, key)}"
    if c.minibatch_size > c.train_batch_size:
        return "rllib.minibatch_size", (f"expected at most rllib.train_batch_size ({c.train_batch_size}) pages, "
                                        f"got {c.minibatch_size}")
    if not c.lr > 0:
        return "rllib.lr", f"expected a positive learning rate, got {c.lr}"
    if not c.hidden_sizes or min(int(h) for h in c.hidden_sizes) < 1:
        return "rllib.hidden_sizes", f"expected one or more layer widths, each at least 1, got {list(c.hidden_sizes)}"
    if c.entropy_coeff < 0:
        return "rllib.entropy_coeff", f"expected 0 or more, got {c.entropy_coeff}"
    for key in ("num_env_runners", "seed", "checkpoint_every"):
        if getattr(c, key) < 0:
            return f"rllib.{key}", f"expected 0 or more, got {getattr(c, key)}"
    return None

