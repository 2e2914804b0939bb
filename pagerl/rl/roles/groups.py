"""Calling a group of Ray actors that play one role of the RL stage.

The RL stage is a handful of roles (rollout workers, trainer ranks, reward
and reference workers), each a few identical Ray actors that the controller
calls together: "every trainer rank: train on your shard", "every rollout
worker: load version 7". :class:`ActorGroup` is that vocabulary, once, so
that every call of every role is waited on the same way:

- results come back in rank order (``call``, ``call_each``), or one actor is
  called alone (``call_one``), or calls are started now and waited on later
  (``async_call`` then ``wait``, or :func:`wait_groups` for calls of several
  groups that only finish together, such as the two sides of a collective);
- every wait has a deadline (``timeout_s``, the recipe's ``rl.timeout_s``).
  A role that does not answer in time raises :class:`RoleTimeoutError`
  naming the group, the actor, the method, the timeout and the recipe key
  that sets it, instead of hanging the run;
- an actor that died raises :class:`RoleDiedError` naming the role, so a
  lost process is never mistaken for a slow one;
- an exception raised *by the method* reaches the caller as that exception
  (a ``PageRLError`` stays one), chained to Ray's error with the remote
  traceback.

Actors may be pinned to bundles of a placement group made by
:func:`pagerl.rl.roles.placement.plan_placement`, which reserves every role's
resources at once so that roles never wait for each other's CPUs or GPUs.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from pagerl.errors import PageRLError


class RoleError(PageRLError):
    """An actor of a role failed; ``role`` and ``index`` say which (``index`` -1: the whole group)."""

    def __init__(self, message: str, role: str = "", index: int = -1) -> None:
        super().__init__(message)
        self.role, self.index = role, int(index)


class RoleTimeoutError(RoleError):
    """An actor of a role did not answer a call within the role's timeout."""


class RoleDiedError(RoleError):
    """An actor of a role died (crashed, was killed, or failed to start)."""


class _Call(NamedTuple):
    """What a pending reference stands for, to name it in an error."""

    group: str
    index: int
    method: str


def _describe(calls: Sequence[_Call]) -> str:
    names = [f"{c.group}[{c.index}].{c.method}()" for c in calls]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _wait(entries: Sequence[Tuple[Any, _Call]], timeout_s: float, timeout_key: str) -> List[Any]:
    """Results of ``entries`` (ref, call) in order; the first failure or the deadline raises."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    deadline = time.monotonic() + timeout_s
    position = {ref: k for k, (ref, _) in enumerate(entries)}
    results: List[Any] = [None] * len(entries)
    pending = [ref for ref, _ in entries]

    def timed_out(refs: Sequence[Any]) -> RoleTimeoutError:
        calls = [entries[position[r]][1] for r in refs]
        return RoleTimeoutError(
            f"{_describe(calls)} did not answer within {timeout_s:g} s ({timeout_key}={timeout_s:g}); "
            f"the role is stuck or far slower than expected: raise {timeout_key} if the work is "
            "genuinely that long, else look at that actor's log", calls[0].group, calls[0].index
        )

    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise timed_out(pending)
        ref = ready[0]
        call = entries[position[ref]][1]
        try:
            # ready already: the timeout only guards against a fetch that stalls
            results[position[ref]] = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
        except GetTimeoutError:
            raise timed_out([ref]) from None
        except RayActorError as exc:
            raise RoleDiedError(
                f"role {call.group!r}: actor {call.index} died before {call.method}() returned "
                f"({type(exc).__name__}: {_first_line(exc)})", call.group, call.index
            ) from exc
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from exc
            raise
    return results


class CallVocabulary:
    """The blocking calls, from a group's ``async_call``, ``async_call_each``, ``async_call_one`` and ``wait``."""

    def call(self, method: str, *args: Any, **kwargs: Any) -> List[Any]:
        """The same call on every actor; results in rank order."""
        return self.wait(self.async_call(method, *args, **kwargs))

    def call_each(self, method: str, per_actor_args: Sequence[Any], **kwargs: Any) -> List[Any]:
        """One argument tuple per actor (see :meth:`async_call_each`); results in rank order."""
        return self.wait(self.async_call_each(method, per_actor_args, **kwargs))

    def call_one(self, index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """``method`` on actor ``index`` alone; its result."""
        return self.wait([self.async_call_one(index, method, *args, **kwargs)])[0]


class ActorGroup(CallVocabulary):
    """``count`` actors of ``actor_cls`` playing the role ``name`` (see the module docstring).

    ``actor_cls`` is a plain class (made a Ray actor here) or a Ray actor
    class. Each actor gets ``num_cpus``/``num_gpus``, is restarted by Ray up
    to ``max_restarts`` times (its methods are never retried by Ray: a call
    lost with its actor raises :class:`RoleDiedError`, and the caller
    decides), and, with ``placement=(placement_group, first_bundle_index)``,
    actor ``i`` runs in bundle ``first_bundle_index + i``. ``env`` is added
    to the actors' environment (through their runtime env).
    """

    def __init__(
        self,
        name: str,
        actor_cls: Any,
        count: int,
        *,
        num_cpus: float,
        num_gpus: float = 0.0,
        placement: Optional[Tuple[Any, int]] = None,
        max_restarts: int = 0,
        init_args: Sequence[Any] = (),
        init_kwargs: Optional[Mapping[str, Any]] = None,
        env: Optional[Mapping[str, str]] = None,
        timeout_s: float = 300.0,
        timeout_key: str = "rl.timeout_s",
    ) -> None:
        import ray
        from ray.actor import ActorClass
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if count < 1:
            raise ValueError(f"ActorGroup {name!r}: count must be at least 1, got {count}")
        if timeout_s <= 0:
            raise ValueError(f"ActorGroup {name!r}: {timeout_key} must be positive, got {timeout_s}")
        self.name = name
        self.timeout_s = float(timeout_s)
        self.timeout_key = timeout_key
        self._pending: Dict[Any, _Call] = {}
        remote_cls = actor_cls if isinstance(actor_cls, ActorClass) else ray.remote(actor_cls)
        options: Dict[str, Any] = dict(
            num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=0
        )
        if env:
            options["runtime_env"] = {"env_vars": {str(k): str(v) for k, v in env.items()}}
        self._actors: List[Any] = []
        for i in range(count):
            per_actor = dict(options)
            if placement is not None:
                group, first = placement
                per_actor["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=group, placement_group_bundle_index=int(first) + i
                )
            self._actors.append(remote_cls.options(**per_actor).remote(*init_args, **dict(init_kwargs or {})))

    # -- the group --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._actors)

    @property
    def actors(self) -> List[Any]:
        """The actor handles, in rank order (to hand to another role, e.g. sync receivers)."""
        return list(self._actors)

    def wait_ready(self) -> None:
        """Block until every actor's constructor has run (within the timeout)."""
        # Every Ray actor answers __ray_ready__ once constructed; it is what
        # Ray's own libraries use to wait for a worker group to come up.
        self._wait_calls([(a.__ray_ready__.remote(), _Call(self.name, i, "__init__"))
                          for i, a in enumerate(self._checked())])

    def await_restart(self, index: int) -> None:
        """Block until actor ``index``, which Ray is restarting after it died, answers again.

        A call sent while the actor restarts fails at once ("the actor is
        restarting"), so resending work before the new process is up would
        spend every retry in milliseconds. Out of restarts (dead for good) or
        not back within the timeout raises :class:`RoleDiedError`.
        """
        import ray
        from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError

        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            try:
                ray.get(self._checked()[index].__ray_ready__.remote(), timeout=max(1.0, deadline - time.monotonic()))
                return
            except ActorDiedError as exc:
                raise RoleDiedError(f"role {self.name!r}: actor {index} is dead for good, out of restarts "
                                    f"({_first_line(exc)})", self.name, index) from exc
            except (RayActorError, GetTimeoutError):
                time.sleep(0.2)
        raise RoleDiedError(f"role {self.name!r}: actor {index} was not back within {self.timeout_s:g} s "
                            f"({self.timeout_key})", self.name, index)

    def kill(self) -> None:
        """End every actor (without restarts). Calls still pending are lost."""
        import ray

        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone: nothing left to end
                pass
        self._actors = []
        self._pending.clear()

    def __enter__(self) -> "ActorGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()

    # -- calls ------------------------------------------------------------------------------
    def async_call(self, method: str, *args: Any, **kwargs: Any) -> List[Any]:
        """Start ``method(*args, **kwargs)`` on every actor; one reference per actor, in rank order."""
        return [self._submit(i, method, args, kwargs) for i in range(len(self._checked()))]

    def async_call_each(self, method: str, per_actor_args: Sequence[Any], **kwargs: Any) -> List[Any]:
        """Start ``method`` on actor ``i`` with ``per_actor_args[i]`` (a tuple of positional
        arguments; anything else is the single argument)."""
        actors = self._checked()
        if len(per_actor_args) != len(actors):
            raise ValueError(
                f"{self.name}.{method}: {len(per_actor_args)} argument tuples for {len(actors)} actors"
            )
        return [
            self._submit(i, method, a if isinstance(a, tuple) else (a,), kwargs)
            for i, a in enumerate(per_actor_args)
        ]

    def async_call_one(self, index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """Start ``method`` on actor ``index`` only; its reference."""
        actors = self._checked()
        if not 0 <= index < len(actors):
            raise IndexError(f"{self.name} has {len(actors)} actors, no actor {index}")
        return self._submit(index, method, args, kwargs)

    def wait(self, refs: Sequence[Any]) -> List[Any]:
        """Results of references this group's ``async_*`` calls returned, in their order."""
        return self._wait_calls([(ref, self._take(ref)) for ref in refs])

    # -- internals --------------------------------------------------------------------------
    def _checked(self) -> List[Any]:
        if not self._actors:
            raise RoleDiedError(f"role {self.name!r}: the group was shut down (kill() was called)", self.name)
        return self._actors

    def _submit(self, index: int, method: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        actor = self._actors[index]
        try:
            bound = getattr(actor, method)
        except AttributeError:
            raise AttributeError(f"role {self.name!r}: its actors have no method {method!r}") from None
        ref = bound.remote(*args, **kwargs)
        self._pending[ref] = _Call(self.name, index, method)
        return ref

    def _take(self, ref: Any) -> _Call:
        call = self._pending.pop(ref, None)
        if call is None:
            raise ValueError(f"{self.name}.wait: a reference that this group did not start (or already waited on)")
        return call

    def _wait_calls(self, entries: Sequence[Tuple[Any, _Call]]) -> List[Any]:
        return _wait(entries, self.timeout_s, self.timeout_key)


def wait_groups(*group_refs: Tuple[ActorGroup, Sequence[Any]]) -> List[List[Any]]:
    """Wait on calls of several groups together: ``[(group, refs), ...]`` -> one result list each.

    For calls that only finish together (both sides of a collective): the
    first failure of either side is raised at once, instead of waiting out
    the other side's timeout first. The deadline is the smallest of the
    groups' timeouts.
    """
    if not group_refs:
        return []
    entries = [(ref, group._take(ref)) for group, refs in group_refs for ref in refs]
    strictest = min(group_refs, key=lambda gr: gr[0].timeout_s)[0]
    flat = _wait(entries, strictest.timeout_s, strictest.timeout_key)
    out, start = [], 0
    for _, refs in group_refs:
        out.append(flat[start : start + len(refs)])
        start += len(refs)
    return out
