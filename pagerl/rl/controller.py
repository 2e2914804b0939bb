"""The RL controller: one step reads as the method, one call on a role group per phase.

    1. prompts     the next requests from the prompt cursor
    2. generate    rollout workers lay out n pages per request (constrained)
    3. reward      reward workers score every page: page reward, item rewards
    4. experience  trainer ranks compute old / reference logprobs and values;
                   then, in this process (:mod:`pagerl.rl.experience`, pure
                   tensors): importance weights, reward shaping, KL,
                   advantages (per slot)
    5. train       trainer ranks update the policy (and critic) under ZeRO
    6. sync        weights stream to the rollout workers in buckets; a probe
                   batch verifies that rollout and trainer agree
  (+ eval          every ``rl.eval_every`` steps: the rollout workers' synced
                   policy lays out held-out pages as the eval stage decodes
                   them, scored as the eval stage scores them: one entry
                   point, :class:`pagerl.eval.pages.HeldoutEval`)

With ``rl.overlap`` the rollout workers sample step t+1's pages while step t
scores, trains and syncs (one step off-policy: by the weights before step t's
update; the weight sync of step t waits behind that generation). Each page
carries the version that sampled it; the update corrects from it to the
trainer's weights by ``rl.off_policy`` (:mod:`pagerl.rl.algorithms.off_policy`),
and the staleness and importance ratios are logged every step. With it off
the loop is on-policy and the ratios are 1 within fp32 tolerance.

Every phase is one call of :meth:`RLController.step`, timed, and every number
it logs comes from the code that call names. Advantages are computed in the
driver, on the whole step's batch, because group and per-slot statistics span
pages that sit on different trainer ranks. The roles never call each other;
the controller hands each the data it needs (:mod:`pagerl.rl.roles.groups` is
the one vocabulary; :mod:`pagerl.rl.roles.layout` makes the role groups). A
rollout worker whose process was lost is replaced and asked again in one
place (:meth:`RLController._ask_rollouts`).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from pagerl.data.types import Request
from pagerl.errors import PageRLError
from pagerl.eval.pages import HeldoutEval
from pagerl.rewards.token_rewards import RewardNormalizer
from pagerl.rl import frames as xp
from pagerl.rl import rl_checkpoint as ckpt
from pagerl.rl import rl_seed
from pagerl.rl.algorithms import SlotBaseline, make_kl_controller, resolve_algorithm
from pagerl.rl.experience import compute_experience, experience_metrics, trainer_fields
from pagerl.rl.roles.groups import RoleDiedError
from pagerl.rl.roles.layout import Roles, ray_roles
from pagerl.rl.roles.rollout import RolloutBatch, RolloutVersionError
from pagerl.rl.weight_sync import WeightSync, verify_sync
from pagerl.tokenization.tokenizer import load_policy_tokenizer
from pagerl.train.batching import lr_at

PHASES = ("generate", "reward", "experience", "train", "sync", "eval")


class RLError(PageRLError):
    """The RL stage cannot go on."""


@dataclass
class PromptCursor:
    """Which requests each step draws: a seeded permutation per epoch, walked in order.

    Its state is two numbers (``epoch``, ``offset``), so a checkpoint can
    carry it and a resumed run draws exactly the requests it would have.
    """

    num_requests: int
    per_step: int
    seed: int
    epoch: int = 0
    offset: int = 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 7919, epoch]).permutation(self.num_requests)

    def next(self) -> List[int]:
        out: List[int] = []
        while len(out) < self.per_step:
            order = self._order(self.epoch)
            take = order[self.offset:self.offset + self.per_step - len(out)]
            out.extend(int(i) for i in take)
            self.offset += len(take)
            if self.offset >= self.num_requests:
                self.epoch, self.offset = self.epoch + 1, 0
        return out

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}


@dataclass
class _Inflight:
    """A step's pages asked for (ahead of the step with overlap): the calls, or the pages once in."""

    step: int
    indices: List[int]
    refs: List[Any]
    offsets: List[int]
    # per rollout worker: (its requests, its seed), to ask again if the worker is lost
    args: List[Any] = field(default_factory=list)
    batch: Optional[RolloutBatch] = None


@dataclass
class Timer:
    seconds: Dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _lost_rollout(exc: BaseException, asked: Optional[int]) -> Optional[int]:
    """The rollout worker ``exc`` says was lost: the one a :class:`RoleDiedError` of the rollout role
    names, or ``asked`` for a :class:`RolloutVersionError` (which names none); None for anything else."""
    if isinstance(exc, RoleDiedError):
        return exc.index if exc.role == "rollout" and exc.index >= 0 else None
    return asked


class RLController:
    """The roles of the RL stage and the loop that drives them (module docstring)."""

    def __init__(self, recipe: Any, run_dir: Path, policy_dir: str, requests: Sequence[Request],
                 resume_dir: Optional[Path] = None, build_roles: Optional[Callable[..., Roles]] = None,
                 heldout: Sequence[Request] = ()) -> None:
        """``build_roles`` makes the role groups (:func:`pagerl.rl.roles.layout.ray_roles`, the default:
        Ray actors in one placement group; :func:`pagerl.rl.roles.local.local_roles`: the same classes in
        this process).
        ``heldout``: the requests :meth:`evaluate` lays out pages for (``rl.eval_every``)."""
        self.recipe, self.cfg, self.run_dir = recipe, recipe.rl, Path(run_dir)
        # The eval stage's decoding and scoring of the held-out requests (rl.eval_every), or None.
        self.heldout = HeldoutEval(recipe, heldout) if heldout else None
        self._policy_dir = str(policy_dir)
        cfg = self.cfg
        self.algorithm = resolve_algorithm(cfg)
        self.requests = list(requests)
        if len(self.requests) < cfg.requests_per_step:
            raise RLError(f"rl.requests_per_step={cfg.requests_per_step} but the training data has only "
                          f"{len(self.requests)} requests")
        self.cursor = PromptCursor(len(self.requests), int(cfg.requests_per_step), rl_seed(recipe))
        self.kl = make_kl_controller(cfg.kl)
        self.baseline = SlotBaseline(cfg.baseline_scope)

        self.normalizer = RewardNormalizer()
        self.version = 0
        # The step the loop runs next: 0, or the step a resumed checkpoint was taken after.
        self.next_step = 0
        # The pages of a step asked for ahead of it (rl.overlap), or restored from a checkpoint.
        self._inflight: Optional[_Inflight] = None
        self._resume_dir = resume_dir
        state = None if resume_dir is None else ckpt.read_controller_state(resume_dir, policy_dir)
        timeout = float(cfg.timeout_s)
        ranks = int(cfg.trainer.num_ranks)
        self.faults = {"rollout_workers_replaced": 0}
        self.roles = (build_roles or ray_roles)(recipe, run_dir, policy_dir, self.algorithm.needs_critic, resume_dir)
        self.trainers, self.rollouts, self.rewards = self.roles.trainers, self.roles.rollouts, self.roles.rewards
        try:
            head = self.trainers.call_one(0, "address")
            self.trainers.call_each("connect", [(head["host"], head["port"], r) for r in range(ranks)])
            self.rewards.wait_ready(timeout)
            self.sync = WeightSync(self.trainers, self.rollouts, cfg.sync, timeout)
            # Sampled by the initial (SFT) weights the rollout workers start from, resumed or not.
            self.probe = self._probe_batch()
            if state is not None:
                self._load_state(state)
        except BaseException:
            self.shutdown()  # a role that failed to start must not keep the others' resources reserved
            raise

    # -- checkpoints (pagerl.rl.rl_checkpoint) -----------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything of the loop's own state a resumed run needs (the trainer ranks save theirs)."""
        return {
            "next_step": self.next_step, "sync_version": self.version, "cursor": self.cursor.state_dict(),
            "kl": self.kl.state_dict(), "normalizer": self.normalizer.state_dict(),
            "baseline": self.baseline.state_dict(),
            "reference": {"dir": self._policy_dir, "sha256": ckpt.weights_digest(self._policy_dir)},
            "inflight_step": None if self._inflight is None else self._inflight.step,
        }

    def save_checkpoint(self, stage_dir: Path) -> Path:
        """Checkpoint the whole RL state after ``next_step`` steps; the controller's file goes last."""
        directory = ckpt.checkpoint_dir(stage_dir, self.next_step)
        if directory.exists():  # an incomplete attempt at the same step
            import shutil

            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        self.trainers.call("save_checkpoint", str(directory), self.next_step)
        if self._inflight is not None:  # sampled by the weights before the last update: kept, not redone
            self._pages(self._inflight)
            ckpt.write_inflight(directory, self._inflight.step, self._inflight.indices, asdict(self._inflight.batch))
        ckpt.write_controller_state(directory, self.state_dict())
        ckpt.prune(stage_dir, int(self.cfg.keep_checkpoints))
        return directory

    def _load_state(self, state: Dict[str, Any]) -> None:
        """Restore the loop's state and push the restored policy to the rollout workers (verified)."""
        self.next_step = int(state["next_step"])
        self.cursor.epoch, self.cursor.offset = int(state["cursor"]["epoch"]), int(state["cursor"]["offset"])
        self.kl.load_state_dict(state["kl"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.baseline.load_state_dict(state["baseline"])
        self.version = int(state["sync_version"])
        if state.get("inflight_step") is not None:
            step, indices, fields = ckpt.read_inflight(self._resume_dir)
            self._inflight = _Inflight(step, indices, [], [], [], RolloutBatch(**fields))
        self.sync.sync(self.version)
        if self.cfg.sync.verify:
            self.verify(self.next_step)

    # -- the step ---------------------------------------------------------------------------
    def step(self, step: int, prefetch: bool = False, evaluate: bool = False) -> Dict[str, float]:
        """One RL step (the six phases of the module docstring), each phase one call, timed; returns what it logs.

        With ``rl.overlap`` and ``prefetch`` (there is a next step), the next
        step's pages are requested from the rollout workers as soon as this
        step's are in, so they are sampled while this step scores, trains and
        syncs, by the weights before this step's update. With ``evaluate``
        the synced policy is then scored on the held-out requests
        (:meth:`evaluate`, phase ``eval``).
        """
        timer = Timer()
        with timer.phase("generate"):  # the prompts were drawn when these pages were asked for
            requests, rollout = self._generate(step, prefetch)
        with timer.phase("reward"):
            scored = self._reward(requests, rollout)
        with timer.phase("experience"):
            batch, metrics = self._experience(rollout, scored)
        with timer.phase("train"):
            stats = self._train(step, batch)
        with timer.phase("sync"):
            sync, delta = self._sync(step)
        with timer.phase("eval"):
            heldout = self._evaluate() if evaluate else {}
        return self._finish(step, timer, batch, {**metrics, **stats, **heldout}, sync, delta)

    # -- the phases -------------------------------------------------------------------------
    def _generate(self, step: int, prefetch: bool):
        """Prompts and pages: step ``step``'s requests (drawn from the prompt cursor when their pages were
        asked for: now, or a step ahead) and their pages; with ``rl.overlap`` and ``prefetch``, the next
        step's pages are asked for at once."""
        indices, rollout = self._collect(step)
        if self.cfg.overlap and prefetch:
            self._launch(step + 1)
        requests = [self.requests[i] for i in indices]
        self.last_request_ids = [r.request_id for r in requests]
        return requests, rollout

    def _reward(self, requests: Sequence[Request], rollout: RolloutBatch) -> Any:
        """Every page scored by the reward workers for the request it was sampled for."""
        repeated = [requests[i] for i in rollout.request_index]
        return self.rewards.score(repeated, rollout.item_ids, rollout.valid)

    def _experience(self, rollout: RolloutBatch, scored: Any):
        """The step's batch for the update and its figures: the pages packed, the trainer ranks' logprobs
        (and values) of them, then the arithmetic of :mod:`pagerl.rl.experience` on the whole batch."""
        if not all(rollout.valid):
            bad = rollout.valid.index(False)
            raise RLError(f"rollout produced an invalid page ({rollout.reasons[bad]}); the RL stage needs "
                          "constrained rollouts (rl.rollout.constrained=true)")
        batch = xp.pack(rollout.prompt_ids, rollout.response_ids, rollout.num_candidates, rollout.page_sizes,
                        self._pad_id)
        trainer_out = xp.concat(self.trainers.call_each("experience", [(s,) for s in self.split(batch)]))
        mask = batch["mask"]
        exp = compute_experience(mask, trainer_out, xp.ragged_to_frame(rollout.token_logprobs, mask.shape[1]),
                                 *scored.as_tensors(torch.float64), torch.as_tensor(rollout.request_index),
                                 rl=self.cfg, rewards=self.recipe.rewards, estimator=self.algorithm.estimator,
                                 normalizer=self.normalizer, baseline=self.baseline, kl_coef=self.kl.value)
        batch.update(trainer_fields(exp, self.algorithm.needs_critic))
        return batch, experience_metrics(exp, self.recipe.rewards, [self.version - v for v in rollout.version])

    def _train(self, step: int, batch: xp.Batch) -> Dict[str, float]:
        """Every trainer rank updates on its shard of ``batch`` (kept as ``last_batch``); the ranks' mean
        statistics."""
        self.last_batch = batch
        return self.trainers.call_each("train", [(s, step, self.kl.value, self._lr(step))
                                                 for s in self.split(batch)])[0]

    def _sync(self, step: int):
        """The trainers' weights pushed to the rollout workers as the next version, then (``rl.sync.verify``)
        the probe batch's max |rollout - trainer| logprob: ``(sync figures, that delta or None)``. A rollout
        worker lost while receiving is replaced and every worker is sent them again, up to
        ``rl.rollout.max_restarts`` times."""
        self.version += 1
        sync = self._ask_rollouts(lambda: self.sync.sync(self.version), step=step, where=f"rl step {step}",
                                  what="the weight sync lost rollout workers")
        return sync, (self.verify(step) if self.cfg.sync.verify else None)

    def _finish(self, step: int, timer: Timer, batch: xp.Batch, metrics: Dict[str, float], sync: Any,
                delta: Optional[float]) -> Dict[str, float]:
        """The step's row: ``metrics`` (experience, update, held-out figures) with each phase's seconds, the
        throughput, the sync, the loop's state and the faults survived so far. The KL controller then
        takes the step's KL, and a non-finite figure stops the run."""
        pages = int(batch["mask"].shape[0])
        total = sum(timer.seconds.values())
        rl_s = total - timer.seconds["eval"]  # the throughput of RL itself, without the held-out pages
        tokens = int(batch["mask"].sum())
        metrics.update({f"seconds_{k}": timer.seconds[k] for k in PHASES})
        metrics.update({
            "step_s": total, "pages_per_s": pages / rl_s, "tokens_per_s": tokens / rl_s,
            "sync_mb_per_s": sync.mb_per_s, "sync_seconds": sync.seconds,
            "sync_mb": sync.bytes / 2**20, "version": float(self.version), "kl_coef": self.kl.value,
            "lr": self._lr(step), "prompt_epoch": float(self.cursor.epoch),
            # faults survived so far in this attempt of the stage (pagerl.rl.roles.reward_workers for rewards)
            "rollout_workers_replaced": float(self.faults["rollout_workers_replaced"]),
            "reward_batch_retries": float(self.rewards.stats["retries"]),
        })
        if delta is not None:
            metrics["sync_delta_max"] = delta
        self.kl.update(metrics["kl"], pages)
        for name, value in metrics.items():
            if not math.isfinite(value):
                raise RLError(f"rl step {step}: {name} is {value}; stopping rather than training on it")
        self.next_step = step + 1
        return metrics

    # -- rollouts: asking, collecting, and asking again after a lost worker ------------------
    def _launch(self, step: int) -> None:
        """Ask the rollout workers for step ``step``'s pages (the next requests), by the weights they hold.

        The seed of worker w is a function of (RL seed, step, w) only, so a
        step's pages do not depend on when they were asked for.
        """
        indices = self.cursor.next()
        requests = [self.requests[i] for i in indices]
        workers = len(self.rollouts)
        chunks = np.array_split(np.arange(len(requests)), workers)
        seeds = [rl_seed(self.recipe) * 1_000_003 + step * 101 + i for i in range(workers)]
        args = [([requests[int(i)] for i in chunk], seeds[w]) for w, chunk in enumerate(chunks)]
        offsets = np.cumsum([0] + [len(c) for c in chunks[:-1]]).tolist()
        refs = self.rollouts.async_call_each("generate", [(*a, self.version) for a in args])
        self._inflight = _Inflight(step, indices, refs, offsets, args)

    def _collect(self, step: int):
        """``(request indices, RolloutBatch)`` of step ``step``: launched now, or earlier (overlap, resume)."""
        if self._inflight is None:
            self._launch(step)
        pending, self._inflight = self._inflight, None
        if pending.step != step:
            raise RLError(f"rl step {step}: the pages in flight are step {pending.step}'s")
        return pending.indices, self._pages(pending)

    def _pages(self, pending: _Inflight) -> RolloutBatch:
        """The pages of ``pending``, once every worker's are in; a lost worker's are asked for again.

        A rollout worker that dies (SIGKILL, OOM) is restarted by Ray
        (``rl.rollout.max_restarts``); the new process holds the initial
        weights, so it is sent the current version before it gets its
        requests again, with the same seed (:meth:`_ask_rollouts`). On-policy
        that regenerates the lost pages exactly; with overlap the redone pages
        come from the current weights (staleness 0), which their version
        records. Every page is generated once in the batch, whatever was lost.
        """
        if pending.batch is not None:
            return pending.batch
        batches = self._answers("generate", pending.refs, pending.args, pending.step, f"rl step {pending.step}")
        pending.batch = RolloutBatch.concat(batches, pending.offsets)
        return pending.batch

    def _answers(self, method: str, refs: Sequence[Any], args: Sequence[Any], step: int, where: str) -> List[Any]:
        """Each rollout worker's answer to ``method``, started as ``refs[w]`` with ``(*args[w], self.version)``;
        a worker lost is replaced and asked again with the same arguments (so the same seed)."""
        return [self._ask_rollouts(lambda: self.rollouts.wait([ref])[0],
                                   lambda: self.rollouts.call_one(w, method, *args[w], self.version),
                                   step=step, where=where, what=f"rollout worker {w} was lost", worker=w)
                for w, ref in enumerate(refs)]

    def _ask_rollouts(self, ask: Callable[[], Any], again: Optional[Callable[[], Any]] = None, *, step: int,
                      where: str, what: str, worker: Optional[int] = None) -> Any:
        """``ask()``'s answer; if a rollout worker's process was lost or replaced, wait for Ray's restart,
        resync every worker to ``self.version`` and answer ``again()`` instead (without ``again``: the
        resync's own figures, for when ``ask`` is the weight sync), up to ``rl.rollout.max_restarts`` times.

        The worker replaced is the one a :class:`RoleDiedError` names, or ``worker`` (the one asked) for a
        :class:`RolloutVersionError`: a call Ray delivered to the restarted process before its resync. A
        loss during the replacement itself counts as one more. Out of restarts: :class:`RLError`
        ``"<where>: <what> <n> times (rl.rollout.max_restarts=<limit>): <last error>"``.
        """
        limit = int(self.cfg.rollout.max_restarts)
        lost: Optional[int] = None
        error: Optional[BaseException] = None
        for attempt in range(limit + 1):
            try:
                if attempt == 0:
                    return ask()
                synced = self._replace_rollout(lost, step)
                return synced if again is None else again()
            except (RoleDiedError, RolloutVersionError) as exc:
                lost = _lost_rollout(exc, worker)
                if lost is None:  # another role died, or the whole group is gone: not ours to replace
                    raise
                error = exc
        raise RLError(f"{where}: {what} {limit + 1} times (rl.rollout.max_restarts={limit}): {error}") from error

    def _replace_rollout(self, worker: int, step: int):
        """Wait for Ray's restart of a lost rollout worker and bring every worker to the current weights."""
        print(f"[rl] step {step}: rollout worker {worker} died; waiting for its restart and resyncing "
              f"version {self.version}", flush=True)
        self.faults["rollout_workers_replaced"] += 1
        self.rollouts.await_restart(worker)
        # A fresh transport: a collective one must re-form its group with the new process.
        self.sync.close()
        self.sync = WeightSync(self.trainers, self.rollouts, self.cfg.sync, float(self.cfg.timeout_s))
        return self.sync.sync(self.version)

    # -- shards, learning rate, padding -----------------------------------------------------
    def split(self, batch: xp.Batch) -> List[xp.Batch]:
        """One equal shard of ``batch`` per trainer rank."""
        return xp.split(batch, len(self.trainers))

    def _lr(self, step: int) -> float:
        return lr_at(step, base_lr=self.cfg.lr, warmup_steps=self.cfg.warmup_steps, total_steps=self.cfg.steps,
                     min_ratio=1.0)

    @property
    def _pad_id(self) -> int:
        if not hasattr(self, "_pad"):

            tok = load_policy_tokenizer(self._policy_dir)
            self._pad = int(tok.eos_token_id if tok.pad_token_id is None else tok.pad_token_id)
        return self._pad

    # -- held-out evaluation ----------------------------------------------------------------
    def eval_due(self, step: int) -> bool:
        """Whether step ``step`` (0-based) ends with a held-out evaluation: every ``rl.eval_every``
        steps and after the last."""
        every = int(self.cfg.eval_every)
        return every > 0 and ((step + 1) % every == 0 or step + 1 == int(self.cfg.steps))

    def evaluate(self) -> Dict[str, float]:
        """:meth:`_evaluate` timed as the phase ``eval`` (``seconds_eval``): the initial policy's point."""
        timer = Timer()
        with timer.phase("eval"):
            metrics = self._evaluate()
        return {**metrics, "seconds_eval": timer.seconds["eval"]}

    def _evaluate(self) -> Dict[str, float]:
        """The held-out figures of the policy the rollout workers hold (version ``self.version``).

        :class:`pagerl.eval.pages.HeldoutEval` gives the eval stage's decoding (``eval.decoding``,
        ``eval.constrained``, the same chunks and seeds), whose chunks are spread over the rollout
        workers, and scores their pages as the eval stage scores a saved policy's; so after the last
        step they are the eval stage's figures for the saved RL policy (greedy). Logged as
        ``eval/<metric>`` (the eval stage's names) and ``eval/<metric>_se``.
        """
        if self.heldout is None:
            raise RLError("rl.eval_every is on but the controller was given no held-out requests")
        chunks, workers = self.heldout.chunks, len(self.rollouts)
        args = [(chunks[w::workers], self.heldout.options) for w in range(workers)]
        refs = self.rollouts.async_call_each("heldout_pages", [(*a, self.version) for a in args])
        answers = self._answers("heldout_pages", refs, args, self.next_step,
                                f"rl held-out evaluation of policy version {self.version}")
        return self.heldout.figures([page for i in range(len(chunks)) for page in answers[i % workers][i // workers]])

    # -- verification -----------------------------------------------------------------------
    def _probe_batch(self) -> RolloutBatch:
        """A fixed batch of pages (sampled once by the initial policy) scored after every sync."""
        n = min(int(self.cfg.sync.probe_requests), len(self.requests))
        return self.rollouts.call_one(0, "generate", self.requests[:n], rl_seed(self.recipe) + 424242, 0)

    def verify(self, step: int) -> float:
        """Max per-token |rollout - trainer| logprob of the probe batch; above the bound the run stops."""
        p = self.probe
        # top_p=1: the whole constrained distribution, defined for the probe pages whatever the nucleus is now
        args = (p.prompt_ids, p.response_ids, p.num_candidates, p.page_sizes, 1.0)
        # Both sides score at once: they are independent, and in sequence they were a tenth of a quickstart step.
        trainer_refs = self.trainers.async_call("probe_logprobs", *args)
        rollout_refs = self.rollouts.async_call("probe_logprobs", *args)
        trainer = self.trainers.wait(trainer_refs)[0]
        rollout = self.rollouts.wait(rollout_refs)
        worst = 0.0
        for answer in rollout:
            worst = max(worst, verify_sync(trainer, answer, None, float(self.cfg.sync.max_logprob_delta), step))
        return worst

    # -- the end ------------------------------------------------------------------------------
    def save_policy(self, directory: Path) -> None:
        self.trainers.call("save_policy", str(directory))

    def shutdown(self) -> None:
        self.roles.shutdown()
        if hasattr(self, "sync"):
            self.sync.close()
