"""Wall-clock seconds of each pipeline stage of a run, in ``<run_dir>/timings.json``.

Why a record of its own: ``metrics.jsonl`` holds what a stage measures of its
own steps, but a stage's wall time also holds what no step sees (starting its
Ray workers, loading models, checkpoints, its end-of-stage evaluation), and
only the pipeline that runs the stage sees all of it
(:func:`pagerl.app.pipeline.run`). Every attempt is kept: a stage stopped by
``*.stop_after_steps``, or one that failed and was run again, adds an attempt
with its outcome; a stage skipped as already complete adds nothing. So the
report's "Where the time went" is what the run cost in all, resumptions
included.

Layout::

    {"sft": [{"seconds": 79.2, "outcome": "finished", "ended": "2026-12-07T14:55:57+00:00"}], ...}
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Dict, List

__all__ = ["OUTCOMES", "TIMINGS_FILE", "read_stage_times", "record_stage_time", "total_seconds"]

TIMINGS_FILE = "timings.json"
# How an attempt ended: its stage completed, stopped at a step to be resumed, or raised.
OUTCOMES = ("finished", "stopped", "failed")


def read_stage_times(run_dir: str | os.PathLike) -> Dict[str, List[Dict[str, object]]]:
    """Every recorded attempt per stage, in the order they ran; empty without a record."""
    path = Path(run_dir) / TIMINGS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err}); expected {{stage: [attempts]}}") from err
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{path}: expected an object of stage name -> list of attempts")
    for stage, attempts in data.items():
        for i, attempt in enumerate(attempts):
            if (not isinstance(attempt, dict) or not isinstance(attempt.get("seconds"), (int, float))
                    or attempt.get("outcome") not in OUTCOMES):
                raise ValueError(f"{path}: stage {stage!r} attempt {i}: expected {{\"seconds\": <number>, "
                                 f"\"outcome\": one of {OUTCOMES}}}, got {attempt!r}")
    return data


def total_seconds(times: Dict[str, List[Dict[str, object]]]) -> float:
    """The wall time of every attempt of every stage in a record of :func:`read_stage_times`."""
    return sum(float(a["seconds"]) for attempts in times.values() for a in attempts)


def record_stage_time(run_dir: str | os.PathLike, stage: str, seconds: float, outcome: str) -> None:
    """Append one attempt of ``stage`` (``seconds`` of wall time, ended by ``outcome``) to the record."""
    if outcome not in OUTCOMES:
        raise ValueError(f"stage attempt outcome must be one of {OUTCOMES}, got {outcome!r}")
    times = read_stage_times(run_dir)
    times.setdefault(stage, []).append({
        "seconds": round(float(seconds), 2), "outcome": outcome,
        "ended": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    })
    path = Path(run_dir) / TIMINGS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(times, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a record
