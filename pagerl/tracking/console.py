"""What a run shows a person on the terminal, and where everything else goes.

A run starts Ray, Ray Train and DeepSpeed, and each of them prints: actor
prefixes with colour codes, deprecation notices, rendezvous chatter. Around
that, the few lines a person wants (which stage runs, how far it is, what it
found) get lost. So a command that runs stages opens a :func:`session`:

- file descriptors 1 and 2 are pointed at ``<run_dir>/logs/run.log`` for the
  session, so every library's output, including what C++ code and Ray's log
  monitor write, lands there in full and in order;
- :data:`CONSOLE` writes the person's lines to the terminal that was there
  before (and copies them into the log, so the log alone tells the story):
  one progress display per stage and each stage's headline result;
- PageRL's own log lines (the ``logging`` loggers under ``pagerl``, at INFO
  and above) go to the log, and only there;
- on the way out the descriptors are restored before any error is printed,
  so real errors reach the terminal, which is also told where the full log is.

So there are two channels and no third: :data:`CONSOLE` for what a person
reads, ``logging.getLogger(__name__)`` for what the log keeps.

The terminal is the standard output the command had; errors keep standard
error. Outside a session (library use, tests that call the pipeline
in-process) :data:`CONSOLE` writes to ``sys.stdout`` and nothing is redirected.

A progress display is one redrawn line on an interactive terminal and
rate-limited whole lines otherwise (a CI log, ``ray job logs``), both with
rate and ETA (:class:`pagerl.tracking.progress.Progress` formats them).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, TextIO

from pagerl.tracking.metrics import METRICS_FILE
from pagerl.tracking.progress import Progress

LOG_FILE = "logs/run.log"


class Console:
    """The person-facing output of a run (see the module docstring)."""

    def __init__(self) -> None:
        self._terminal: Optional[TextIO] = None
        self._log: Optional[TextIO] = None
        self._lock = threading.Lock()
        self.log_path: Optional[Path] = None

    @property
    def stream(self) -> TextIO:
        return self._terminal if self._terminal is not None else sys.stdout

    @property
    def interactive(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def line(self, text: str) -> None:
        """One whole line for the person (and for the log)."""
        with self._lock:
            self._write_terminal(text + "\n")
            self._write_log(text + "\n")

    def error(self, text: str) -> None:
        """One whole line about a failure: on standard error outside a session; inside one (where
        standard error is the log) on the terminal and in the log."""
        if self._log is not None:
            self.line(text)
            return
        with self._lock:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def redraw(self, text: str) -> None:
        """Replace the current terminal line (interactive terminals only); not logged."""
        with self._lock:
            self._write_terminal("\r\033[K" + text)

    def _write_terminal(self, text: str) -> None:
        stream = self.stream
        stream.write(text)
        stream.flush()

    def _write_log(self, text: str) -> None:
        if self._log is not None:
            self._log.write(text)
            self._log.flush()

    def progress(self, stage: str, total: Optional[int], every_s: float = 10.0) -> "ProgressDisplay":
        return ProgressDisplay(self, stage, total, every_s)


CONSOLE = Console()


class ProgressDisplay:
    """One stage's progress: a redrawn line on a terminal, rate-limited lines elsewhere."""

    def __init__(self, console: Console, stage: str, total: Optional[int], every_s: float) -> None:
        self.console = console
        self.live = console.interactive
        # Redraws are cheap on a terminal; a log gets a line every every_s.
        self._progress = Progress(stage, total=total, every_s=0.5 if self.live else every_s,
                                  stream=_Sink(self), enabled=True)
        self._last: Optional[str] = None
        self._closed = False

    def update(self, step: int, metrics: Optional[Mapping[str, float]] = None) -> None:
        self._progress.update(step, metrics)

    def _show(self, line: str) -> None:
        self._last = line
        if self.live:
            self.console.redraw(line)
        else:
            self.console.line(line)

    def close(self) -> None:
        """End the display: on a terminal, keep the last line and move on."""
        if self._closed:
            return
        self._closed = True
        if self.live and self._last is not None:
            self.console._write_terminal("\n")
            self.console._write_log(self._last + "\n")


class _Sink(io.TextIOBase):
    """The stream a :class:`Progress` prints to: hands each line to its display."""

    def __init__(self, display: ProgressDisplay) -> None:
        self._display = display

    def write(self, text: str) -> int:
        text = text.rstrip("\n")
        if text:
            self._display._show(text)
        return len(text)


@contextlib.contextmanager
def session(run_dir: Path) -> Iterator[Console]:
    """Send fds 1 and 2 to ``<run_dir>/logs/run.log`` while the block runs; CONSOLE keeps the terminal."""
    log_path = Path(run_dir) / LOG_FILE
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8", errors="replace")
    log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")
    log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {' '.join(sys.argv)}\n")
    log.flush()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    CONSOLE._terminal, CONSOLE._log, CONSOLE.log_path = terminal, log, log_path
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("pagerl")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield CONSOLE
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        CONSOLE._terminal, CONSOLE._log = None, None
        terminal.close()
        log.close()


class MetricsWatcher:
    """Shows a stage's progress from the rows its rank 0 appends to ``metrics.jsonl``.

    Ray Train workers run in other processes, whose output goes to the log;
    the driver learns how far they are from the record they write anyway, so
    the progress a person sees is the progress the run logged.
    """

    def __init__(self, run_dir: Path, stage: str, total: int, show: Mapping[str, str],
                 every_s: float, start_step: int = 0, poll_s: float = 1.0) -> None:

        self.path = Path(run_dir) / METRICS_FILE
        self.stage = stage
        self.show = dict(show)  # metric name in the file -> label on the line
        self.display = CONSOLE.progress(stage, total, every_s)
        self._offset = self.path.stat().st_size if self.path.is_file() else 0
        self._stop = threading.Event()
        self._poll_s = poll_s
        self._thread = threading.Thread(target=self._run, name=f"progress-{stage}", daemon=True)
        # Rate and ETA count from the stage's start (the first rows may arrive in one poll).
        self.display.update(start_step)

    def __enter__(self) -> "MetricsWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._read()
        self.display.close()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            self._read()

    def _read(self) -> None:
        import json

        if not self.path.is_file():
            return
        with open(self.path, encoding="utf-8") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        end = chunk.rfind("\n")
        if end < 0:
            return
        self._offset += len(chunk[: end + 1].encode("utf-8"))
        for text in chunk[: end + 1].splitlines():
            try:
                row = json.loads(text)
            except ValueError:
                continue
            if row.get("stage") != self.stage:
                continue
            values = {label: row[name] for name, label in self.show.items() if row.get(name) is not None}
            self.display.update(int(row["step"]), values)
