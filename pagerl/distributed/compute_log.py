"""When a role was computing: wall-clock spans, for the share of a step spent outside model compute.

The throughput benchmark (``benchmarks/bench_rl.py``) asks how much of an RL
step is orchestration (remote calls, serialisation, waiting) rather than
model compute. Summing the seconds each role computed answers it for a loop
whose phases run one after another, but not for an overlapped one, where the
rollout workers sample step t+1 while the trainer ranks update on step t and
the sum exceeds the wall time. So each role records *when* it computed
(:class:`ComputeLog`, ``time.time()``, a clock that processes on one machine
share) and :func:`covered_seconds` measures the union of those spans over
the timed window: a second in which any role computes counts once, a second
in which none does counts as outside compute.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterable, Iterator, List, Tuple

Span = Tuple[str, float, float]  # (phase, start, end), seconds since the epoch


class ComputeLog:
    """The spans one role spent in model compute since the last :meth:`take`."""

    def __init__(self) -> None:
        self._spans: List[Span] = []

    @contextmanager
    def span(self, phase: str) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self._spans.append((phase, start, time.time()))

    def take(self) -> List[Span]:
        out, self._spans = self._spans, []
        return out


def covered_seconds(spans: Iterable[Span], start: float, end: float) -> float:
    """Seconds of ``[start, end]`` inside at least one span (overlapping spans count once)."""
    clipped = sorted((max(s, start), min(e, end)) for _, s, e in spans if e > start and s < end)
    total, reach = 0.0, start
    for s, e in clipped:
        if e > reach:
            total += e - max(s, reach)
            reach = e
    return total
