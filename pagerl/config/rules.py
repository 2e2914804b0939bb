"""Rules of a recipe: conditions between keys, which no single field can check.

A condition on one key's value alone (a range, a choice of words, a registry
name) is not a rule: it is written on the key's field in the schema
(:mod:`pagerl.config.checks`). A rule here ties several keys together
("K must not exceed N", "the sft stage needs training data"), often across
sections.

Every rule is one function registered in ``RULES`` with :func:`rule`; each
returns a finding (the dotted key at fault and a message), a list of findings,
or ``None``. Rules run after the layers are merged and the fields checked;
a rule's finding for a key that a field check or the registry loop has
already reported is dropped, so a rule may assume nothing about a value that
is wrong on its own but must not fail on it. The error names the file and
line (or override) that set the key.

The rules here need nothing but the recipe. A rule that needs to know a
subsystem (what an environment accepts, in what order the stages run, which
combinations an RL algorithm takes) is registered by that subsystem's own
module, with the same decorator, so it lives beside what it checks and this
package imports nothing above it; :func:`pagerl.app.recipes.load_recipe`
imports them all before it loads a recipe.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

from pagerl.config.checks import Problem
from pagerl.config.checks import one_of as _one_of
from pagerl.config.model_source import ModelSourceError, resolve_source
from pagerl.config.schema import RecipeConfig

Finding = Optional[Tuple[str, str]]
Findings = Union[Finding, Sequence[Tuple[str, str]]]
RULES: List[Callable[[RecipeConfig], Findings]] = []


def rule(fn: Callable[[RecipeConfig], Findings]) -> Callable[[RecipeConfig], Findings]:
    RULES.append(fn)
    return fn


def check_choice(key: str, value: object, allowed: Sequence[object]) -> Finding:
    """A finding for ``key`` unless ``value`` is one of ``allowed`` (for a subsystem's rule whose
    choices live in the subsystem)."""
    message = _one_of(*allowed)(value)
    return (key, message) if message else None


def rule_findings(recipe: RecipeConfig) -> List[Problem]:
    """Every finding of every registered rule, in the order the rules were registered."""
    found: List[Problem] = []
    for check in RULES:
        result = check(recipe)
        if result is None:
            continue
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], str):
            found.append(result)  # one finding
        else:
            found.extend(f for f in result if f is not None)
    return found


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
def _chat_template(r: RecipeConfig) -> Finding:
    try:
        pretrained = resolve_source(r.model.source).pretrained
    except ModelSourceError:
        return None  # model.source's own check reports it
    if r.model.chat_template and not pretrained:
        return "model.chat_template", "the tiny model's word-level tokenizer has no chat template: set it false"
    return None


@rule
def _tiny_shape(r: RecipeConfig) -> Finding:
    t = r.model.tiny
    if t.num_heads >= 1 and t.hidden_size % t.num_heads:
        return "model.tiny.num_heads", f"must divide model.tiny.hidden_size ({t.hidden_size}), got {t.num_heads}"
    if t.num_kv_heads >= 1 and t.num_heads % t.num_kv_heads:
        return "model.tiny.num_kv_heads", f"must divide model.tiny.num_heads ({t.num_heads}), got {t.num_kv_heads}"
    return None


@rule
def _gpu_only_features(r: RecipeConfig) -> Finding:
    if r.model.attn_implementation == "flash_attention_2" and not r.distributed.use_gpu:
        return "model.attn_implementation", ("flash_attention_2 runs only on GPU: set distributed.use_gpu=true "
                                             "or use sdpa")
    if r.distributed.backend == "nccl" and not r.distributed.use_gpu:
        return "distributed.backend", "nccl needs GPUs: use gloo (or auto) with distributed.use_gpu=false"
    if r.model.dtype == "float16" and not r.distributed.use_gpu:
        return "model.dtype", "float16 training needs a GPU; use float32 or bfloat16 on CPU"
    return None


@rule
def _training_length(r: RecipeConfig) -> List[Tuple[str, str]]:
    """A training stage runs for some epochs or some steps."""
    return [(f"{name}.epochs", f"set {name}.epochs or {name}.max_steps to at least 1")
            for name, s in (("sft", r.sft), ("rm", r.rm)) if s.epochs < 1 and s.max_steps < 1]


@rule
def _eval(r: RecipeConfig) -> List[Tuple[str, str]]:
    e, found = r.eval, []
    if e.ndcg_k < 0 or e.ndcg_k > r.sim.page_size:
        found.append(("eval.ndcg_k", f"expected 0 (page size) up to sim.page_size ({r.sim.page_size}), got {e.ndcg_k}"))
    if e.decoding == "sample" and e.temperature <= 0:
        found.append(("eval.temperature", f"sampling needs a positive temperature, got {e.temperature}"))
    return found


# Preference pairs and reward models.
_PAIR_FAMILIES = ("relevance", "ranking", "diversity", "redundancy")


@rule
def _pairs_for_rm(r: RecipeConfig) -> Finding:
    p = r.pairs
    if "rm" in r.run.stages and not any(getattr(p, n).enabled and getattr(p, n).weight > 0 for n in _PAIR_FAMILIES):
        return "pairs.relevance.enabled", "the rm stage needs at least one pair family enabled with a positive weight"
    return None


@rule
def _rm(r: RecipeConfig) -> Finding:
    s = r.rm
    weights = ("page_loss_weight", "item_loss_weight", "click_loss_weight", "page_click_loss_weight")
    if all(getattr(s, key) >= 0 for key in weights) and sum(getattr(s, key) for key in weights) == 0:
        return "rm.page_loss_weight", f"every loss weight ({', '.join(weights)}) is 0: nothing to train on"
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
def _rl(r: RecipeConfig) -> List[Tuple[str, str]]:
    c, found = r.rl, []
    pages = c.requests_per_step * c.rollout.samples_per_request
    groups = c.trainer.num_ranks * c.minibatches_per_epoch
    if pages >= 1 and groups >= 1 and c.trainer.micro_batch_size >= 1:
        per_minibatch, rest = divmod(pages, groups)
        if rest or per_minibatch % c.trainer.micro_batch_size:
            found.append(("rl.requests_per_step", (
                f"a step's {pages} pages (rl.requests_per_step x rl.rollout.samples_per_request) must split into "
                f"rl.trainer.num_ranks ({c.trainer.num_ranks}) x rl.minibatches_per_epoch ({c.minibatches_per_epoch}) "
                f"minibatches of whole micro-batches of rl.trainer.micro_batch_size ({c.trainer.micro_batch_size})")))
    if c.eval_every > 0 and "rl" in r.run.stages and "synth" not in r.run.stages and not r.data.eval_files:
        found.append(("rl.eval_every", ("the RL stage's held-out evaluation needs held-out requests: list files in "
                                        "data.eval_files, add 'synth' to run.stages, or set rl.eval_every=0")))
    if "rl" in r.run.stages and r.rewards.normalize == "group":
        found.append(("rewards.normalize", ("the RL stage normalises within groups and per slot in its advantage "
                                            "estimators (rl.algorithm, rl.baseline_scope); use 'running', 'joint' "
                                            "or 'none'")))
    return found


@rule
def _ablation_reference(r: RecipeConfig) -> Finding:
    names = [v.name for v in r.ablation.variants]
    if r.ablation.reference not in names:
        return "ablation.reference", f"expected one of the variants ({', '.join(names)}), got {r.ablation.reference!r}"
    return None


# The rewards section (pagerl.rewards).
@rule
def _reward_shaping(r: RecipeConfig) -> Finding:
    w = r.rewards
    if w.w_page == 0 and w.w_item == 0:
        return "rewards.w_page", "rewards.w_page and rewards.w_item are both 0: no reward would reach the policy"
    if w.page_reward == "residual" and w.normalize not in ("none", "joint"):
        return "rewards.page_reward", (f"'residual' subtracts the summed item rewards from the page reward, so both "
                                       f"must be on one scale: expected rewards.normalize 'joint' or 'none', got "
                                       f"{w.normalize!r}")
    return None


# The rllib stage: the non-LLM baseline trained with RLlib's PPO (pagerl.rllib_baseline.ppo).
@rule
def _rllib(r: RecipeConfig) -> Finding:
    c = r.rllib
    if c.minibatch_size > c.train_batch_size:
        return "rllib.minibatch_size", (f"expected at most rllib.train_batch_size ({c.train_batch_size}) pages, "
                                        f"got {c.minibatch_size}")
    return None
