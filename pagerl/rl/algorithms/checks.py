"""Shape checks with errors that name the offending argument.

Tensors of the RL algorithms are all in the response frame [B, T]; a tensor
of the wrong shape would otherwise broadcast silently into wrong numbers.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def require_shape(name: str, tensor: torch.Tensor, shape: Sequence[int]) -> None:
    """ValueError naming ``name`` unless ``tensor`` has exactly ``shape``."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor of shape {tuple(shape)}, got {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(tensor.shape)}")


def require_frame(mask: torch.Tensor, name: str = "mask") -> None:
    """ValueError unless ``mask`` is [B, T]: every row a prefix of ones of length >= 1.

    In the response frame row b is 1 on positions 0 .. K_b (K_b slots, then
    EOS) and 0 after, so anything else (a hole, a leading prompt, an empty
    row) means the tensors are in another frame.
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name}: expected a [B, T] response mask, got {shape}")
    m = mask.to(torch.bool)
    lengths = m.sum(dim=1)
    prefix = torch.arange(m.shape[1], device=m.device)[None, :] < lengths[:, None]
    bad = (m != prefix).any(dim=1) | (lengths == 0)
    if bad.any():
        row = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"{name}: row {row} is {m[row].int().tolist()}; a response-frame row is ones on its "
            "K_b slots and EOS (positions 0 .. K_b), then zeros"
        )


def optional_shape(name: str, tensor: Optional[torch.Tensor], shape: Sequence[int]) -> None:
    if tensor is not None:
        require_shape(name, tensor, shape)
