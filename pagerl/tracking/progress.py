"""A progress line for long loops, readable in a terminal and in a log file.

Why not tqdm: a redrawn bar (carriage returns, ANSI codes) turns into
hundreds of fragments in a captured log (Ray job logs, CI output). This
prints whole lines, rate-limited, e.g.::

    [sft] step 40/300 (13%) loss=1.234 12.3 it/s eta 0:00:21

A line is printed at most once every ``every_s`` seconds (counted from
the reporter's creation, so a loop that finishes quickly prints one line,
not two), and always for the last step, so a log shows how every loop
ended. Rate and ETA are measured from the first update, so the time a loop
spends before its first step (model load, compilation) does not distort
them. The clock is injectable so tests need not sleep.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Mapping, Optional, TextIO


class Progress:
    """Rate-limited progress lines for the loop of one stage."""

    def __init__(
        self,
        stage: str,
        total: Optional[int] = None,
        every_s: float = 10.0,
        stream: Optional[TextIO] = None,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ) -> None:
        if total is not None and total < 0:
            raise ValueError(f"progress total of stage {stage!r} must be >= 0 or None, got {total}")
        if every_s < 0:
            raise ValueError(f"progress every_s of stage {stage!r} must be >= 0, got {every_s}")
        self.stage = stage
        self.total = total
        self.every_s = every_s
        # Resolved at print time, so pytest's capsys (which swaps sys.stderr) sees it.
        self._stream = stream
        self._clock = clock
        self.enabled = enabled
        self._start_time: Optional[float] = None
        self._start_step = 0
        # Throttling starts at creation: the first line comes after every_s.
        self._last_print = clock()
        self.lines_printed = 0

    def update(self, step: int, metrics: Optional[Mapping[str, float]] = None) -> Optional[str]:
        """Report that ``step`` steps are done; returns the line if one was printed."""
        now = self._clock()
        if self._start_time is None:
            # The first update is the reference point of rate and ETA.
            self._start_time, self._start_step = now, step
        is_last = self.total is not None and step >= self.total
        due = now - self._last_print >= self.every_s
        if not (due or is_last):
            return None
        line = self.format_line(step, now, metrics or {})
        self._last_print = now
        if self.enabled:
            stream = self._stream if self._stream is not None else sys.stderr
            print(line, file=stream, flush=True)
            self.lines_printed += 1
        return line

    def format_line(self, step: int, now: float, metrics: Mapping[str, float]) -> str:
        """The text of one progress line (no newline)."""
        parts = [f"[{self.stage}] step {step}"]
        if self.total is not None:
            percent = 100.0 * step / self.total if self.total else 100.0
            parts[0] += f"/{self.total} ({percent:.0f}%)"
        for name, value in metrics.items():
            parts.append(f"{name}={_format_value(value)}")
        elapsed = now - (self._start_time if self._start_time is not None else now)
        done = step - self._start_step
        if elapsed > 0 and done > 0:
            rate = done / elapsed
            parts.append(_format_rate(rate))
            if self.total is not None and step < self.total:
                parts.append(f"eta {_format_seconds((self.total - step) / rate)}")
        return " ".join(parts)


def _format_rate(rate: float) -> str:
    """``12.3 it/s``, ``1520 it/s`` or, for slow loops, ``4.2 s/it``."""
    if rate >= 100:
        return f"{rate:.0f} it/s"
    if rate >= 1:
        return f"{rate:.3g} it/s"
    return f"{1 / rate:.3g} s/it"


def _format_value(value: float) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def _format_seconds(seconds: float) -> str:
    """``H:MM:SS``, the same width whatever the terminal."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
