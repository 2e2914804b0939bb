"""Training checkpoints that a user can load with Hugging Face, and a run can resume from.

A checkpoint directory holds:

- ``config.json`` + ``model.safetensors`` (+ tokenizer files): the policy as a
  Hugging Face model, loadable with ``from_pretrained`` as it is;
- ``master_fp32.safetensors``: the optimizer's fp32 master weights, written only
  when the model trains in a 16-bit dtype (otherwise the model file is them);
- ``optim_rank{r}.safetensors``: the inner optimizer's state of ZeRO rank ``r``
  (its partition of the Adam moments), one file per rank;
- ``trainer_state.json``: step, epoch position, world size, ZeRO stage, and the
  layout of the optimizer state (written last: its presence marks the
  checkpoint complete).

Nothing is ever pickled: tensors go to safetensors, structure to JSON, and
loading uses safetensors only (no ``torch.load``), so a checkpoint from an
untrusted place cannot run code. The optimizer state is per rank (ZeRO
partitions it), so a run resumes with the world size and ZeRO stage it was
saved with; a mismatch is refused with a clear error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from safetensors.torch import load_file, save_file

TRAINER_STATE = "trainer_state.json"
MASTER_WEIGHTS = "master_fp32.safetensors"


def optim_file(rank: int) -> str:
    return f"optim_rank{rank}.safetensors"


def flatten_state(state: Any, prefix: str = "") -> Tuple[Any, Dict[str, torch.Tensor]]:
    """Split a nested optimizer state into a JSON skeleton and named tensors."""
    tensors: Dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[path] = node.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(node, dict):
            return {"__dict__": [[walk_key(k), walk(v, f"{path}/{k}")] for k, v in node.items()]}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot store optimizer state value of type {type(node).__name__} at {path}")

    def walk_key(key: Any) -> Any:
        if not isinstance(key, (int, str)):
            raise TypeError(f"cannot store optimizer state key {key!r}")
        return key

    return walk(state, prefix), tensors


def unflatten_state(skeleton: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def save_optimizer_state(state: Any, directory: Path, rank: int) -> Any:
    """Write this rank's optimizer state (nested tensors and scalars); returns its JSON skeleton."""
    skeleton, tensors = flatten_state(state)
    save_file(tensors, str(directory / optim_file(rank)))
    return skeleton


def load_optimizer_state(directory: Path, rank: int, skeleton: Any) -> Any:
    path = directory / optim_file(rank)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: optimizer state of rank {rank} is missing from the checkpoint")
    return unflatten_state(skeleton, load_file(str(path)))


def write_trainer_state(directory: Path, state: Dict[str, Any]) -> None:
    (directory / TRAINER_STATE).write_text(json.dumps(state, indent=2, sort_keys=True))


def read_trainer_state(directory: Path) -> Dict[str, Any]:
    return json.loads((directory / TRAINER_STATE).read_text())


def is_complete(directory: Path) -> bool:
    """A checkpoint is usable when its trainer state and every rank's optimizer file exist."""
    if not (directory / TRAINER_STATE).is_file():
        return False
    try:
        state = read_trainer_state(directory)
    except (OSError, json.JSONDecodeError):
        return False
    return all((directory / optim_file(r)).is_file() for r in range(int(state.get("world_size", 0))))


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The complete checkpoint with the highest step under ``root`` (searched recursively)."""
    if not root.exists():
        return None
    found: List[Tuple[int, str, Path]] = []
    for state_file in root.rglob(TRAINER_STATE):
        directory = state_file.parent
        if is_complete(directory):
            found.append((int(read_trainer_state(directory)["step"]), str(directory), directory))
    return max(found)[2] if found else None


def export_files(checkpoint_dir: Path, target: Path, names: Sequence[str]) -> None:
    """Copy the named files of a checkpoint into ``target``, replacing it whole.

    Used to publish a stage's final model (a plain Hugging Face directory)
    without its training state; the copy goes to a sibling first, so a crash
    never leaves a half-written ``target``.
    """
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in names:
        if (checkpoint_dir / name).is_file():
            shutil.copy2(checkpoint_dir / name, tmp / name)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
