"""A non-LLM baseline trained with RLlib: PPO over a per-candidate scoring MLP (the ``rllib`` stage).

What it is: an MLP reads one request's visible features (the recipe's
environment's observation, for ``pagesim`` :class:`~pagerl.envs.features.VisibleFeatures`:
only what the prompt shows), flattened by :class:`~pagerl.envs.scored.ScoredPageEnv`,
and outputs a score per candidate; the page is the K best-scored candidates in
score order. PPO (RLlib's new API stack: ``RLModule``, ``Learner``,
``EnvRunner``) trains it with a Gaussian over the N scores, so a sampled score
vector is a sampled page; the saved policy acts with the Gaussian's mean.

What it learns from: pages it lays out itself, in the simulator, paid with the
clicks the simulated user makes (``rllib.reward: clicks``) or their exact
expectation (``expected_clicks``). That is online interaction with the ground
truth, a privilege the language-model policy does not have (it learns from
logged pages and a reward model trained on them): this baseline says how far
plain RL over the visible features gets with it, not what the LLM pipeline
should reach.

Training requests come from the environment's own stream under ``run.seed``
and ``rllib.seed`` (:data:`pagerl.envs.scored.TRAIN_STREAM`), never from the
synth stage's files: the held-out requests the eval stage scores are a
separate stream of the same world.

Outputs in ``<run_dir>/rllib/``: ``policy/`` (RLlib's ``RLModule`` checkpoint
in ``policy/module`` and :data:`~pagerl.eval.policy_kinds.MANIFEST`, which tells the
eval stage how to lay out its pages), ``checkpoints/iter_<n>`` (the whole
algorithm state, for resume), ``summary.json``; one metrics row per iteration
under stage ``rllib``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from pagerl.config.rules import Finding, check_choice, rule
from pagerl.config.schema import RecipeConfig
from pagerl.data.types import Request
from pagerl.envs import env_from_recipe
from pagerl.envs.base import REWARDS, PageEnv
from pagerl.envs.scored import ScoredPageEnv, top_k_page
from pagerl.errors import PageRLError
from pagerl.eval.policy_kinds import MANIFEST, read_manifest, register_policy_kind, write_manifest
from pagerl.eval.scoring import EvalError, MethodPages
from pagerl.registry import Registry, lookup, register

KIND = "rllib_ppo"
STAGE_DIR = "rllib"
POLICY_DIR = "rllib/policy"
MODULE_DIR = "module"
SUMMARY_FILE = "summary.json"
CHECKPOINTS = "checkpoints"


class RLlibBaselineError(PageRLError, ValueError):
    """The RLlib baseline cannot train or act as configured."""


def rllib_seed(recipe: Any) -> int:
    """The seed of the stage's training: ``run.seed``, moved by ``rllib.seed`` (as ``rl.seed`` moves RL's)."""
    return int(recipe.run.seed) + 1_000_000 * int(recipe.rllib.seed)


class RecipeScoredEnv(ScoredPageEnv):
    """The recipe's environment (:func:`pagerl.envs.env_from_recipe`) as a scoring task, built from
    RLlib's ``env_config`` (``recipe``, ``reward``, ``stream_seed``) in whichever process samples."""

    def __init__(self, config: Optional[Dict[str, Any]] = None) -> None:
        config = dict(config or {})
        env = env_from_recipe(config["recipe"], reward=str(config.get("reward", "clicks")))
        super().__init__(env, stream_seed=int(config.get("stream_seed", 0)))


def ppo_config(recipe: Any) -> Any:
    """RLlib's ``PPOConfig`` for ``rllib.*``: CPU, seeded, one-step episodes (gamma = lambda = 1)."""
    from ray.rllib.algorithms.ppo import PPOConfig

    c = recipe.rllib
    seed = rllib_seed(recipe)
    return (
        PPOConfig()
        .environment(env=RecipeScoredEnv,
                     env_config={"recipe": recipe, "reward": str(c.reward), "stream_seed": seed})
        .env_runners(num_env_runners=int(c.num_env_runners), num_envs_per_env_runner=int(c.num_envs_per_env_runner),
                     rollout_fragment_length="auto")
        .learners(num_learners=0, num_gpus_per_learner=0)
        .training(lr=float(c.lr), train_batch_size_per_learner=int(c.train_batch_size),
                  minibatch_size=int(c.minibatch_size), num_epochs=int(c.num_epochs),
                  entropy_coeff=float(c.entropy_coeff),
                  # A page is a one-step episode: its return is its reward, the advantage is the
                  # reward minus the value function's estimate for the request.
                  gamma=1.0, lambda_=1.0)
        .rl_module(**lookup(MODELS, str(c.model))(recipe))
        .debugging(seed=seed, log_level="ERROR")
        .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=0,
                   metrics_num_episodes_for_smoothing=int(c.train_batch_size))
    )


# rllib.model -> a function of the recipe giving the keyword arguments of PPOConfig.rl_module.
MODELS: Registry = Registry("rllib.model")


@register(MODELS, "candidate")
def _candidate_scorer(recipe: Any) -> Dict[str, Any]:
    """One MLP shared by all candidates (pagerl.rllib_baseline.scorer)."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from pagerl.rllib_baseline.scorer import CandidateScorerModule  # imports RLlib: only where it trains

    probe = RecipeScoredEnv({"recipe": recipe})
    return {"rl_module_spec": RLModuleSpec(module_class=CandidateScorerModule, model_config={
        "num_candidates": probe.num_candidates, "request_width": probe.request_width,
        "hidden_sizes": [int(h) for h in recipe.rllib.hidden_sizes]})}


@register(MODELS, "mlp")
def _flat_mlp(recipe: Any) -> Dict[str, Any]:
    """RLlib's default PPO module: an MLP over the whole flat observation, N scores out."""
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return {"model_config": DefaultModelConfig(fcnet_hiddens=[int(h) for h in recipe.rllib.hidden_sizes],
                                               fcnet_activation="tanh", vf_share_layers=False)}


# ------------------------------------------------------------------ training


def save_checkpoint(algo: Any, root: Path, iteration: int) -> None:
    """The whole algorithm state as ``iter_<n>``, written under a temporary name and renamed (never half a
    checkpoint); the older ones are removed once it is in place."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".iter_{iteration}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    algo.save_to_path(str(tmp))
    tmp.rename(root / f"iter_{iteration}")
    for old in checkpoints(root)[:-1]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoints(root: Path) -> List[Path]:
    found = [p for p in root.glob("iter_*") if p.is_dir() and p.name[5:].isdigit()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[5:]))


def restore_newest(algo: Any, root: Path) -> int:
    """Restore the newest checkpoint, if any; returns its iteration (0: none).

    RLlib's checkpoint holds the module, optimizer and connector state, not the
    environments' random generators: a resumed stage draws its training requests
    from the stream as seeded anew, so it is not bit-identical to an uninterrupted one."""
    found = checkpoints(root)
    if not found:
        return 0
    algo.restore_from_path(str(found[-1]))
    return int(found[-1].name[5:])


def export_policy(algo: Any, recipe: Any, policy_dir: Path) -> Path:
    """The trained ``RLModule`` and its manifest in ``policy_dir`` (replaced whole, via a temporary directory)."""
    probe = RecipeScoredEnv({"recipe": recipe, "reward": str(recipe.rllib.reward)})
    tmp = policy_dir.with_name(policy_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    algo.get_module().save_to_path(str(tmp / MODULE_DIR))
    write_manifest(tmp, KIND, env=str(recipe.env.name), observation_size=int(probe.observation_space.shape[0]),
                   num_candidates=probe.num_candidates, page_size=probe.page_size,
                   reward=str(recipe.rllib.reward), iterations=int(recipe.rllib.iterations),
                   model=str(recipe.rllib.model), hidden_sizes=[int(h) for h in recipe.rllib.hidden_sizes],
                   seed=rllib_seed(recipe),
                   acts_with="the mean of the Gaussian over candidate scores; page = top-K by score")
    shutil.rmtree(policy_dir, ignore_errors=True)
    tmp.rename(policy_dir)
    return policy_dir


# ------------------------------------------------------------------ acting


@dataclasses.dataclass
class ScoringPolicy:
    """A saved RLlib baseline: scores candidates, lays out the top-K page (deterministically)."""

    module: Any
    manifest: Dict[str, Any]

    @classmethod
    def load(cls, policy_dir: str | Path) -> "ScoringPolicy":
        policy_dir = Path(policy_dir)
        module_dir = policy_dir / MODULE_DIR
        if not module_dir.is_dir():
            raise RLlibBaselineError(
                f"{policy_dir}: no trained RLlib policy there (expected {MODULE_DIR}/ and {MANIFEST}, what the "
                "rllib stage exports to <run_dir>/rllib/policy); add 'rllib' to run.stages before 'eval'")
        from ray.rllib.core.rl_module.rl_module import RLModule

        return cls(RLModule.from_checkpoint(str(module_dir)), read_manifest(policy_dir))

    def scores(self, observations: np.ndarray) -> np.ndarray:
        """Per request (row of flat observations), the deterministic score of each candidate."""
        import torch

        with torch.no_grad():
            out = self.module.forward_inference({"obs": torch.as_tensor(observations, dtype=torch.float32)})
            dist = self.module.get_inference_action_dist_cls().from_logits(out["action_dist_inputs"])
            return dist.to_deterministic().sample().numpy().astype(np.float64)


@register_policy_kind(KIND)
def rllib_pages(recipe: Any, policy_dir: str, requests: Sequence[Request], env: PageEnv) -> MethodPages:
    """The saved baseline's page for each request (all valid: top-K of its scores, ties to the lower index)."""
    try:
        policy = ScoringPolicy.load(policy_dir)
    except RLlibBaselineError as err:
        raise EvalError(str(err)) from err
    scored = ScoredPageEnv(env)
    size, n = policy.manifest.get("observation_size"), policy.manifest.get("num_candidates")
    if (size, n) != (scored.observation_space.shape[0], scored.num_candidates):
        raise EvalError(f"{policy_dir}: the policy was trained on {n} candidates with {size} observation "
                        f"features; the recipe's environment has {scored.num_candidates} and "
                        f"{scored.observation_space.shape[0]} (was it trained on another sim or env section?)")
    if not requests:
        return MethodPages(pages=[])
    observations = np.stack([scored.flatten(env.observe(r)) for r in requests])
    scores = policy.scores(observations)
    pages = [[r.candidates[j].item_id for j in top_k_page(s, r.page_size)] for r, s in zip(requests, scores)]
    return MethodPages(pages=pages)


@rule
def _rllib_reward(r: RecipeConfig) -> Finding:
    """``rllib.reward`` is a reward the environments pay (``rllib.model`` is checked against
    :data:`MODELS` by the recipe loader)."""
    return check_choice("rllib.reward", r.rllib.reward, REWARDS)
