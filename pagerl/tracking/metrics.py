"""Scalar metrics of a run: one JSONL file plus the sinks a recipe turns on.

Why JSONL and sinks: ``metrics.jsonl`` is the run's durable record (plain
text, append-only, flushed on every call so a crash loses nothing already
logged, read back by :func:`read_metrics` for the report and for tests that
assert on what a run did); the sinks of :mod:`pagerl.tracking.sinks`
(TensorBoard by default, Weights & Biases and MLflow when ``tracking.wandb``
or ``tracking.mlflow`` is on) are for looking at curves, while a run is
going or beside other experiments. All are written by the same
:meth:`MetricsLogger.log` call so they cannot disagree.

Layout inside the run directory::

    <run_dir>/metrics.jsonl      {"stage": "sft", "step": 40, "time": 1.7e9, "loss": 1.23, ...}
    <run_dir>/tensorboard/       event files, scalar tags "<stage>/<name>" (e.g. "sft/loss")
    <run_dir>/wandb/, mlflow/    the optional sinks (see pagerl.tracking.sinks)

A sink that cannot start is a misconfiguration and raises
:class:`~pagerl.tracking.sinks.SinkStartError` when the logger is made,
before any training step. A sink that fails later (a full disk, a tracking
server gone) must not end a run that may have hours of training left: it is
warned about once and closed, and the JSONL record goes on with every value.
A failing JSONL write still raises: without it the run has no record.

Non-finite values (NaN, +/-inf) are not an error here: a diverging loss is
exactly what the record must show. They are written to JSON as ``null``
(JSON has no NaN), listed under the line's ``"nonfinite"`` key, counted in
:attr:`MetricsLogger.nonfinite_count`, reported once per metric name through
:mod:`warnings`, and left out of every sink (a NaN point breaks TensorBoard's
smoothing and axis scaling, and the trackers' summaries). Deciding to stop a
diverging run belongs to the trainer, not to the logger.

Distributed stages: only one process may write a run's metrics, or the lines
of several ranks interleave and TensorBoard shows duplicate points. The
logger does not ask torch.distributed who it is; the caller decides, usually
``MetricsLogger(run_dir, enabled=(rank == 0))``. A disabled logger accepts
and validates every call and writes nothing, so call sites need no branch.

A resumed stage appends to the same file; it may re-log steps it had logged
before the interruption. :func:`metric_series` keeps the last value per step,
which is the value of the run that went on.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from pagerl.tracking.sinks import SINKS, TENSORBOARD_DIR, Sink, open_sinks

__all__ = ["METRICS_FILE", "TENSORBOARD_DIR", "MetricsLogger", "metric_series", "read_metrics"]

METRICS_FILE = "metrics.jsonl"
# Keys every JSON line carries; a metric may not use these names.
RESERVED_KEYS = frozenset({"stage", "step", "time", "nonfinite"})


class MetricsLogger:
    """Writes scalar metrics of one run to JSONL and to every sink it opened.

    Use as a context manager (or call :meth:`close`) so the sinks' last
    events reach the disk (and their runs are marked finished)::

        with MetricsLogger(run_dir, enabled=rank == 0) as logger:
            logger.log("sft", step, {"loss": loss, "lr": lr})

    ``tensorboard`` turns the TensorBoard sink on or off; ``tracking`` (a
    recipe's ``TrackingConfig``) turns on the other sinks it names
    (``tracking.wandb``, ``tracking.mlflow``) and carries their settings.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        jsonl: bool = True,
        tensorboard: bool = True,
        enabled: bool = True,
        tracking: Any = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        # Number of non-finite values logged so far (each one written as null).
        self.nonfinite_count = 0
        self._warned: set[str] = set()
        self._file = None
        self._sinks: Dict[str, Sink] = {}
        self._closed = False
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        switches = {name: bool(getattr(tracking, name, False)) for name in SINKS}
        switches["tensorboard"] = tensorboard
        # Sinks import their packages when opened: a JSONL-only logger (e.g. a
        # worker process) pulls in neither tensorboard nor a tracker.
        self._sinks = open_sinks(self.run_dir, [name for name, on in switches.items() if on], tracking)
        if jsonl:
            # Append: a resumed stage continues the record of its first attempt.
            self._file = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")

    @classmethod
    def from_config(
        cls, run_dir: str | os.PathLike, tracking_cfg: Any, enabled: bool = True
    ) -> "MetricsLogger":
        """A logger with the sinks a recipe's ``tracking`` section turns on."""
        return cls(
            run_dir,
            jsonl=bool(tracking_cfg.jsonl),
            tensorboard=bool(tracking_cfg.tensorboard),
            enabled=enabled,
            tracking=tracking_cfg,
        )

    @property
    def sink_names(self) -> Tuple[str, ...]:
        """The sinks this logger still writes to (JSONL aside), in registry order."""
        return tuple(self._sinks)

    def log(self, stage: str, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` (name -> number) of ``stage`` at ``step``.

        Values may be Python or numpy numbers or 0-d tensors (anything
        ``float()`` accepts, except strings). Raises ValueError on a bad
        stage, step, name or value, so a mistake at a call site fails the
        first time it runs rather than leaving a hole in the record.
        """
        if self._closed:
            raise ValueError(f"MetricsLogger for {self.run_dir} is closed; cannot log stage {stage!r}")
        if not isinstance(stage, str) or not stage or "/" in stage:
            raise ValueError(f"metrics stage must be a non-empty string without '/', got {stage!r}")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"metrics step of stage {stage!r} must be an integer >= 0, got {step!r}")
        step = int(step)
        record: Dict[str, Any] = {"stage": stage, "step": step, "time": time.time()}
        finite: Dict[str, float] = {}
        nonfinite: List[str] = []
        for name, value in metrics.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"metric names of stage {stage!r} must be non-empty strings, got {name!r}")
            if name in RESERVED_KEYS:
                raise ValueError(
                    f"metric name {name!r} of stage {stage!r} is reserved "
                    f"(reserved: {sorted(RESERVED_KEYS)})"
                )
            number = _to_float(value, f"{stage}/{name}")
            if math.isfinite(number):
                record[name] = number
                finite[name] = number
            else:
                record[name] = None
                nonfinite.append(name)
        if nonfinite:
            record["nonfinite"] = nonfinite
            self.nonfinite_count += len(nonfinite)
            for name in nonfinite:
                tag = f"{stage}/{name}"
                if tag not in self._warned:
                    self._warned.add(tag)
                    warnings.warn(
                        f"non-finite value for metric {tag} at step {step}; "
                        f"logged as null in {METRICS_FILE}",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        if not self.enabled:
            return
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if not finite:
            return
        for name, sink in list(self._sinks.items()):
            try:
                sink.log(stage, step, finite)
            except Exception as err:
                del self._sinks[name]
                _warn_sink_failed(name, err, f"at {stage} step {step}")
                try:
                    sink.close()
                except Exception:
                    pass  # already failing; the warning names the first error

    def close(self) -> None:
        """Flush and close the JSONL file and every sink; closing twice is allowed."""
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
        sinks, self._sinks = self._sinks, {}
        for name, sink in sinks.items():
            try:
                sink.close()
            except Exception as err:
                _warn_sink_failed(name, err, "on close")

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _warn_sink_failed(name: str, err: Exception, when: str) -> None:
    """The one warning a sink that failed after startup gives; the JSONL record goes on."""
    warnings.warn(
        f"tracking.{name}: the {name} sink failed {when} ({type(err).__name__}: {err}); "
        f"it is off for the rest of this logger, {METRICS_FILE} keeps every value",
        RuntimeWarning,
        stacklevel=3,
    )


def _to_float(value: Any, tag: str) -> float:
    """``value`` as a float, or a ValueError naming the metric."""
    if isinstance(value, (str, bytes)):
        raise ValueError(f"metric {tag} must be a number, got the string {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"metric {tag} must be a number (int, float, numpy scalar or 0-d tensor), "
            f"got {type(value).__name__}: {err}"
        ) from None


def read_metrics(run_dir: str | os.PathLike, stage: Optional[str] = None) -> List[Dict[str, Any]]:
    """All records of ``<run_dir>/metrics.jsonl`` in file order (optionally one stage's).

    Non-finite values come back as ``None``. A missing file gives an empty
    list (a run that logged nothing yet). A truncated *last* line is what a
    crash in the middle of a write leaves, so it is dropped with a warning; a
    bad line anywhere else means the file was damaged and raises ValueError
    with its line number.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records: List[Dict[str, Any]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "stage" not in record or "step" not in record:
                raise ValueError("not an object with 'stage' and 'step'")
        except ValueError as err:
            if lineno == len(lines):
                warnings.warn(f"{path}:{lineno}: dropping truncated last line ({err})", RuntimeWarning)
                break
            raise ValueError(f"{path}:{lineno}: bad metrics line: {err}") from None
        if stage is None or record["stage"] == stage:
            records.append(record)
    return records


def metric_series(
    records: Iterable[Mapping[str, Any]], stage: str, name: str
) -> Tuple[List[int], List[Optional[float]]]:
    """Steps and values of one metric, sorted by step, last value per step.

    Last-per-step: a stage resumed from a checkpoint re-logs the steps after
    that checkpoint, and the later lines are the run that continued.
    Records without ``name`` are skipped; null (non-finite) values stay None.
    """
    by_step: Dict[int, Optional[float]] = {}
    for record in records:
        if record.get("stage") == stage and name in record:
            by_step[int(record["step"])] = record[name]
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]
