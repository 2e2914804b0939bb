"""Checkpoints of the whole RL state, and the rule that picks one to resume from.

One checkpoint is a directory ``<run_dir>/rl/checkpoints/step_<NNNNNN>`` that holds

- ``policy/``: the policy under ZeRO in the format of
  :mod:`pagerl.distributed.checkpoint_format` (a Hugging Face model, each rank's
  optimizer partition, ``trainer_state.json``), plus ``rng_rank<r>.safetensors``,
  every trainer rank's torch RNG state;
- ``critic/``: the same for the critic, when the algorithm has one;
- ``inflight.json``, with ``rl.overlap`` only: the next step's pages, sampled
  ahead of it by the weights before the last update (which no file holds, so
  they are kept rather than regenerated), with their requests;
- ``controller.json``, written last (its presence marks the checkpoint
  complete): the next step, the prompt cursor, the sync version, the KL
  controller, the running reward moments, the per-slot baselines and the
  identity of the reference policy.

What is *not* stored, and why a resumed run still replays exactly: the
rollout workers draw from a seed that is a pure function of (run seed, step,
worker), the reward sources are deterministic, the trainer's minibatch order
is seeded per step, and the controller's prompt order is a seeded
permutation per epoch. So once the trainer ranks, the controller and the
rollout weights are restored, step ``s`` of a resumed run is step ``s`` of an
uninterrupted one. On-policy nothing is in flight between steps; with
overlap the one step in flight is stored (``inflight.json``).

The reference policy is not copied: ``controller.json`` names its directory
and the SHA-256 of its weights, and a resume against other weights is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from pagerl.errors import PageRLError

CHECKPOINTS = "checkpoints"
CONTROLLER_STATE = "controller.json"
INFLIGHT = "inflight.json"
FORMAT = "pagerl-rl-checkpoint"
FORMAT_VERSION = 1


class RLCheckpointError(PageRLError):
    """An RL checkpoint cannot be resumed from (incomplete, or from another run)."""


def checkpoint_dir(stage_dir: Path, step: int) -> Path:
    """Where the checkpoint taken after ``step`` completed steps lives."""
    return Path(stage_dir) / CHECKPOINTS / f"step_{int(step):06d}"


def is_complete(directory: Path) -> bool:
    return (Path(directory) / CONTROLLER_STATE).is_file()


def complete_checkpoints(stage_dir: Path) -> List[Path]:
    """Every complete checkpoint under ``stage_dir``, oldest first."""
    root = Path(stage_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((d for d in root.iterdir() if d.is_dir() and d.name.startswith("step_") and is_complete(d)),
                  key=lambda d: d.name)


def latest(stage_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint, or None (an incomplete one, from a crash mid-save, is ignored)."""
    found = complete_checkpoints(stage_dir)
    return found[-1] if found else None


def prune(stage_dir: Path, keep: int) -> List[Path]:
    """Remove all but the newest ``keep`` complete checkpoints and every incomplete one older than them."""
    root = Path(stage_dir) / CHECKPOINTS
    complete = complete_checkpoints(stage_dir)
    kept = {d.name for d in complete[-int(keep):]}
    newest = complete[-1].name if complete else ""
    removed = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.name not in kept and d.name <= newest:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def weights_digest(model_dir: str | Path) -> str:
    """SHA-256 of a policy directory's weights file: the reference's identity."""
    path = Path(model_dir) / "model.safetensors"
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_controller_state(directory: Path, state: Dict[str, Any]) -> None:
    """Write ``controller.json`` atomically (it marks the checkpoint complete, so it goes last)."""
    directory = Path(directory)
    tmp = directory / (CONTROLLER_STATE + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **state}, indent=2, sort_keys=True))
    tmp.replace(directory / CONTROLLER_STATE)


def read_controller_state(directory: Path, reference_dir: str | Path) -> Dict[str, Any]:
    """The controller state of a complete checkpoint, checked to belong to this run's reference policy."""
    path = Path(directory) / CONTROLLER_STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RLCheckpointError(f"{path}: not a readable RL checkpoint ({exc})") from exc
    if state.get("format") != FORMAT or int(state.get("version", -1)) != FORMAT_VERSION:
        raise RLCheckpointError(f"{path}: expected format {FORMAT} version {FORMAT_VERSION}, "
                                f"got {state.get('format')!r} version {state.get('version')!r}")
    saved = state["reference"]["sha256"]
    now = weights_digest(reference_dir)
    if saved != now:
        raise RLCheckpointError(
            f"{path}: the checkpoint was trained against the reference policy {state['reference']['dir']} "
            f"(weights sha256 {saved[:12]}...), but this run's reference {reference_dir} has {now[:12]}...; "
            f"remove {Path(directory).parent} to start the RL stage over")
    return state


def write_inflight(directory: Path, step: int, indices: List[int], batch: Dict[str, Any]) -> None:
    """The pages of step ``step`` sampled ahead of it (``rl.overlap``) by the weights before the last
    update, which the checkpoint does not hold: they are stored, not regenerated. JSON keeps every
    float exactly (shortest round-trip repr)."""
    (Path(directory) / INFLIGHT).write_text(json.dumps({"step": int(step), "indices": [int(i) for i in indices],
                                                        "batch": batch}))


def read_inflight(directory: Path):
    """``(step, request indices, RolloutBatch fields)`` of :func:`write_inflight`."""
    data = json.loads((Path(directory) / INFLIGHT).read_text())
    return int(data["step"]), [int(i) for i in data["indices"]], data["batch"]
