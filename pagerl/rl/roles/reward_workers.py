"""Reward workers: a group of Ray actors that score generated pages.

Each :class:`RewardWorker` builds the recipe's reward source once (loads the
reward models, rebuilds the simulator's world, imports the user function) and
then scores chunks of ``rewards.batch_size`` pages, one batched forward pass
per chunk. :class:`RewardWorkerGroup` is the driver's side: it splits a batch
into chunks, keeps every worker busy, and puts the answers back in order::

    group = RewardWorkerGroup(recipe, run_dir)   # rewards.num_workers actors
    scored = group.score(requests, pages, valid)  # ScoredPages: page, items, valid
    page_r, item_r, valid = scored.as_tensors()
    group.shutdown()

Fault tolerance, and why it is split this way:

- **Ray restarts a dead worker**: actors are created with
  ``max_restarts=rewards.max_restarts``; the new process builds its source
  again in ``__init__``.
- **We retry the chunk it held**, not Ray: ``max_task_retries`` is 0, and
  :meth:`RewardWorkerGroup.score` resends a chunk whose worker died (a
  ``RayActorError``) to the same worker, which Ray is restarting (the call
  waits for the new process), or, when that worker is out of restarts, to
  the next live one -- at most ``rewards.max_batch_retries`` times per chunk.
  Doing it here makes every retry visible (a warning, and the counters in
  :attr:`RewardWorkerGroup.stats` that the trainer logs) and bounded by a
  recipe key; Ray's own task retries would be silent. Scoring is a pure
  function of its input, so a chunk that may or may not have run is safe to
  run again.
- A worker whose restarts are used up is dead for good (``ActorDiedError``):
  its chunks go to the others; with none left, or a chunk out of retries,
  :class:`RewardWorkerError` stops the run naming the keys to raise.

Errors of the source itself (a user function returning a bad shape, a NaN)
are not retried: they would fail again. They reach the caller as the
original exception.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from pagerl.config.schema import RecipeConfig
from pagerl.data.types import Request
from pagerl.distributed.compute_log import ComputeLog, Span
from pagerl.distributed.device import peak_memory_mb
from pagerl.errors import PageRLError
from pagerl.rewards.reward_sources import ScoredPages, build_reward_source, check_reward_source, score_pages

log = logging.getLogger(__name__)


class RewardWorkerError(PageRLError):
    """Reward workers died more often than the recipe allows."""


class RewardWorker:
    """One reward actor's body (also usable in-process, e.g. in a debugger).

    It takes the whole recipe, unlike the other roles, because that is what its reward source is
    built from (:func:`pagerl.rewards.reward_sources.build_reward_source`): ``simulator`` rebuilds
    the environment from ``env.*``, ``sim.*`` and ``run.seed`` (:func:`pagerl.envs.env_from_recipe`),
    and a registered source may read any section. Of its own it reads only ``rewards.cpus_per_worker``.
    """

    def __init__(self, recipe: RecipeConfig, run_dir: str) -> None:
        # One torch thread per reserved CPU: several workers on one machine
        # must not each start a thread per core.
        try:
            import torch

            torch.set_num_threads(max(1, int(recipe.rewards.cpus_per_worker)))
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        self.source = build_reward_source(recipe, Path(run_dir))
        self.calls = 0
        self.compute = ComputeLog()  # when score() ran (pagerl.distributed.compute_log)

    def ready(self) -> Dict[str, Any]:
        """Answers once the source is built: its name and this process's id."""
        return {"source": self.source.name, "pid": os.getpid()}

    def pid(self) -> int:
        return os.getpid()

    def peak_memory_mb(self) -> Dict[str, float]:
        import torch

        return peak_memory_mb(torch.device("cpu"))

    def score(
        self, requests: Sequence[Request], pages: Sequence[Sequence[str]], valid: Optional[Sequence[bool]]
    ) -> ScoredPages:
        self.calls += 1
        with self.compute.span("reward"):
            return score_pages(self.source, requests, pages, valid)

    def take_compute_spans(self) -> List[Span]:
        """When score() ran since the last call (:mod:`pagerl.distributed.compute_log`)."""
        return self.compute.take()


def _chunks(n: int, size: int) -> List[Tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


class RewardWorkerGroup:
    """``rewards.num_workers`` reward actors and the batching and retries around them.

    Given the whole recipe because its workers are (:class:`RewardWorker`), and because it checks the
    reward source in the driver first, from the same recipe.
    """

    def __init__(self, recipe: RecipeConfig, run_dir: Path | str, placement: Optional[Tuple[Any, int]] = None) -> None:
        """``placement``: ``(placement_group, first_bundle_index)`` to run worker i in bundle first + i
        (the RL stage reserves every role's resources in one placement group)."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        cfg = recipe.rewards
        # Bad paths and missing model directories fail here, in the driver,
        # with the recipe key -- not as a dead actor's traceback.
        check_reward_source(recipe, Path(run_dir))
        self.cfg = cfg
        actor = ray.remote(RewardWorker)
        options = dict(num_cpus=cfg.cpus_per_worker, max_restarts=cfg.max_restarts, max_task_retries=0)
        self._actors = []
        for i in range(cfg.num_workers):
            if placement is not None:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement[0], placement_group_bundle_index=int(placement[1]) + i)
            self._actors.append(actor.options(**options).remote(recipe, str(run_dir)))
        self._dead: set = set()
        self.stats: Dict[str, float] = {"pages": 0, "chunks": 0, "retries": 0, "workers_lost": 0, "seconds": 0.0}
        # One line per retry: (chunk start, attempt, worker index, error class).
        self.retry_log: List[Tuple[int, int, int, str]] = []
        self._next = 0

    @property
    def num_workers(self) -> int:
        return len(self._actors)

    def wait_ready(self, timeout_s: float = 300.0) -> List[Dict[str, Any]]:
        """Block until every worker has built its source; their ``ready()`` answers."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            return ray.get([a.ready.remote() for a in self._actors], timeout=timeout_s)
        except GetTimeoutError:
            raise RewardWorkerError(
                f"reward workers did not start within {timeout_s:.0f} s "
                f"(rewards.num_workers={self.cfg.num_workers}, rewards.cpus_per_worker={self.cfg.cpus_per_worker}: "
                "does the cluster have the CPUs?)"
            ) from None
        except RayActorError as exc:
            raise RewardWorkerError(f"a reward worker failed to start: {exc}") from None

    def peak_memory_mb(self) -> List[Dict[str, float]]:
        """Each worker's peak memory (:func:`pagerl.distributed.device.peak_memory_mb`)."""
        import ray

        return ray.get([a.peak_memory_mb.remote() for a in self._actors], timeout=60)

    def take_compute_spans(self) -> List[Span]:
        """Every worker's spans of scoring since the last call (:mod:`pagerl.distributed.compute_log`)."""
        import ray

        return [span for spans in ray.get([a.take_compute_spans.remote() for a in self._actors], timeout=60)
                for span in spans]

    def pids(self) -> List[int]:
        """Process ids of the workers (where a test or an operator sends a signal)."""
        import ray

        return ray.get([a.pid.remote() for a in self._actors])

    def _live_after(self, index: int) -> int:
        n = len(self._actors)
        for step in range(1, n + 1):
            candidate = (index + step) % n
            if candidate not in self._dead:
                return candidate
        raise RewardWorkerError(
            f"all {n} reward workers are dead (each was restarted up to rewards.max_restarts="
            f"{self.cfg.max_restarts} times); raise rewards.max_restarts or find why they die"
        )

    def score(
        self,
        requests: Sequence[Request],
        pages: Sequence[Sequence[str]],
        valid: Optional[Sequence[bool]] = None,
    ) -> ScoredPages:
        """Rewards of ``pages[b]`` for ``requests[b]``, in order (see :func:`score_pages`)."""
        import ray
        from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

        if len(requests) != len(pages) or (valid is not None and len(valid) != len(pages)):
            raise ValueError(
                f"RewardWorkerGroup.score: {len(requests)} requests, {len(pages)} pages"
                + ("" if valid is None else f", {len(valid)} validity flags")
            )
        started = time.perf_counter()
        spans = _chunks(len(pages), self.cfg.batch_size)
        if not spans:
            return ScoredPages(np.zeros(0), np.zeros((0, 0)), np.zeros(0, dtype=bool), [])
        valid_list = None if valid is None else [bool(v) for v in valid]

        def submit(span: Tuple[int, int], worker: int) -> Any:
            a, b = span
            return self._actors[worker].score.remote(
                list(requests[a:b]), [list(p) for p in pages[a:b]], None if valid_list is None else valid_list[a:b]
            )

        pending: Dict[Any, Tuple[int, int, int]] = {}  # ref -> (chunk, attempt, worker)
        for chunk, span in enumerate(spans):
            worker = self._live_after(self._next - 1)
            self._next = worker + 1
            pending[submit(span, worker)] = (chunk, 0, worker)
        results: List[Optional[ScoredPages]] = [None] * len(spans)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            chunk, attempt, worker = pending.pop(ref)
            try:
                results[chunk] = ray.get(ref)
            except RayTaskError as exc:
                # The source raised: not a crash, and retrying would fail the same way.
                for other in pending:
                    try:
                        ray.cancel(other)
                    except Exception:  # already finished or not cancellable: harmless
                        pass
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from None
                raise
            except RayActorError as exc:
                if isinstance(exc, ActorDiedError) and worker not in self._dead:
                    self._dead.add(worker)
                    self.stats["workers_lost"] += 1
                first = spans[chunk][0]
                if attempt >= self.cfg.max_batch_retries:
                    raise RewardWorkerError(
                        f"reward batch of pages {first}..{spans[chunk][1] - 1} was lost {attempt + 1} times "
                        f"with its worker (rewards.max_batch_retries={self.cfg.max_batch_retries}); "
                        f"last error: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                    ) from None
                if worker not in self._dead:
                    self._await_restart(worker)
                retry_on = self._live_after(worker - 1) if worker not in self._dead else self._live_after(worker)
                self.stats["retries"] += 1
                self.retry_log.append((first, attempt + 1, worker, type(exc).__name__))
                log.warning(
                    "reward worker %d died holding pages %d..%d (%s); retry %d/%d on worker %d",
                    worker, first, spans[chunk][1] - 1, type(exc).__name__, attempt + 1,
                    self.cfg.max_batch_retries, retry_on,
                )
                pending[submit(spans[chunk], retry_on)] = (chunk, attempt + 1, retry_on)
        self.stats["pages"] += len(pages)
        self.stats["chunks"] += len(spans)
        self.stats["seconds"] += time.perf_counter() - started
        return ScoredPages.concat([r for r in results if r is not None])

    def _await_restart(self, worker: int, timeout_s: float = 120.0) -> None:
        """Wait until a worker Ray is restarting answers again (or is dead for good).

        A call sent while the actor restarts fails at once with "the actor is
        restarting"; resending the chunk before the new process is up would
        spend every retry in a few milliseconds.
        """
        import ray
        from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ray.get(self._actors[worker].ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                return
            except ActorDiedError:
                if worker not in self._dead:
                    self._dead.add(worker)
                    self.stats["workers_lost"] += 1
                return
            except (RayActorError, GetTimeoutError):
                time.sleep(0.2)

    def shutdown(self) -> None:
        """End the workers (they are not restarted)."""
        import ray

        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self._actors = []

    def __enter__(self) -> "RewardWorkerGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

