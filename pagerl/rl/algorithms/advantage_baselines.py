"""Baseline statistics of the advantage estimators: cells, group statistics
and the running per-slot baseline.

A *cell* is the set of rewards one baseline statistic is computed over;
``rl.baseline_scope`` chooses how tokens fall into cells (``BASELINE_SCOPES``):

    per_slot  cell(b, t) = (group of b, position t)
    pooled    cell(b, t) = group of b

For batch-wide statistics every row is in group 0, so per_slot cells are the
positions and pooled is one cell. Item rewards fall with the slot (position
bias): a statistic pooled over slots compares a slot-0 reward with slot-2
rewards and calls it good for being in slot 0, while a per-slot one compares
it only with other slot-0 rewards, i.e. it judges the *choice* of item.

Statistics are population statistics (divide by n), computed in float64 so a
cell of equal rewards gives exactly 0 and not rounding noise / eps.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping

import torch

from pagerl.registry import Registry, lookup, register
from pagerl.rewards.token_rewards import EPS, RunningMoments
from pagerl.rl.algorithms.checks import require_shape

# (groups[B] dense int64, length T) -> cell ids [B, T] int64
Scope = Callable[[torch.Tensor, int], torch.Tensor]
BASELINE_SCOPES = Registry("rl.baseline_scope")


@register(BASELINE_SCOPES, "per_slot")
def per_slot_cells(groups: torch.Tensor, length: int) -> torch.Tensor:
    """One cell per (group, position)."""
    return groups[:, None] * length + torch.arange(length, device=groups.device)[None, :]


@register(BASELINE_SCOPES, "pooled")
def pooled_cells(groups: torch.Tensor, length: int) -> torch.Tensor:
    """One cell per group, all positions together."""
    return groups[:, None].expand(groups.shape[0], length)


def dense_groups(group_ids: torch.Tensor) -> torch.Tensor:
    """Group ids renumbered 0 .. G-1 (any integer ids in, int64 out)."""
    return torch.unique(group_ids, return_inverse=True)[1].to(torch.int64)


def _sums(index: torch.Tensor, values: torch.Tensor, size: int):
    count = torch.zeros(size, dtype=values.dtype, device=values.device).index_add_(0, index, torch.ones_like(values))
    total = torch.zeros(size, dtype=values.dtype, device=values.device).index_add_(0, index, values)
    return count, total


def standardize(x: torch.Tensor, cells: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(x - mean_c) / (std_c + eps) over the kept entries of each cell c; 0 where not kept."""
    out = torch.zeros_like(x)
    if not keep.any():
        return out
    values, index = x[keep], torch.unique(cells[keep], return_inverse=True)[1]
    size = int(index.max()) + 1
    count, total = _sums(index, values, size)
    dev = values - (total / count)[index]
    m2 = torch.zeros(size, dtype=x.dtype, device=x.device).index_add_(0, index, dev * dev)
    out[keep] = dev / ((m2 / count).sqrt()[index] + EPS)
    return out


def leave_one_out(x: torch.Tensor, cells: torch.Tensor, keep: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x - (mean of the kept entries of the same cell that lie in *other rows*).

    Excluding the whole row, not just the entry, matters for pooled cells,
    where one page has several entries in its cell. 0 where no other row has
    an entry in the cell (a group of one page), and where not kept.
    """
    out = torch.zeros_like(x)
    if not keep.any():
        return out
    values, cell, row = x[keep], cells[keep], rows[keep]
    index = torch.unique(cell, return_inverse=True)[1]
    pair = torch.unique(cell * (int(row.max()) + 1) + row, return_inverse=True)[1]
    cell_n, cell_sum = _sums(index, values, int(index.max()) + 1)
    pair_n, pair_sum = _sums(pair, values, int(pair.max()) + 1)
    others_n = cell_n[index] - pair_n[pair]
    others_mean = (cell_sum[index] - pair_sum[pair]) / others_n.clamp(min=1)
    out[keep] = torch.where(others_n > 0, values - others_mean, torch.zeros_like(values))
    return out


class SlotBaseline:
    """Running mean and variance of the returns per response position.

    ``per_slot`` keeps one :class:`~pagerl.rewards.token_rewards.RunningMoments`
    per position t (moment t sees the returns G[b, t] of every batch so far);
    ``pooled`` one over all positions. :meth:`update` merges a batch in,
    :meth:`normalize` gives (G - mean_t) / (std_t + eps). The state is plain
    JSON (:meth:`state_dict`), checkpointed with the RL stage.

    Call it on the whole step's batch in one place (the moments are not
    all-reduced across ranks here).
    """

    def __init__(self, scope: str = "per_slot") -> None:
        self._cells: Scope = lookup(BASELINE_SCOPES, scope)
        self.scope = scope
        self.moments: List[RunningMoments] = []

    def _cell_ids(self, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if returns.dim() != 2:
            raise ValueError(f"returns: expected [B, T], got shape {tuple(returns.shape)}")
        require_shape("mask", mask, returns.shape)
        groups = torch.zeros(returns.shape[0], dtype=torch.int64, device=returns.device)
        return self._cells(groups, returns.shape[1])

    def update(self, returns: torch.Tensor, mask: torch.Tensor) -> None:
        """Merge the returns G[B, T] at the tokens of ``mask`` into the running moments."""
        cells, keep = self._cell_ids(returns, mask), mask.to(torch.bool)
        needed = int(cells[keep].max()) + 1 if keep.any() else 0
        while len(self.moments) < needed:
            self.moments.append(RunningMoments())
        for cell, moments in enumerate(self.moments[:needed]):
            moments.update(returns[keep & (cells == cell)])

    def normalize(self, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(G - mean_t) / (std_t + eps) at the tokens of ``mask``, 0 elsewhere."""
        cells, keep = self._cell_ids(returns, mask), mask.to(torch.bool)
        if keep.any() and int(cells[keep].max()) >= len(self.moments):
            raise ValueError(
                f"returns: position {int(cells[keep].max())} has no running moments yet; "
                "update the baseline with the batch before normalising it"
            )
        if not self.moments:
            return torch.zeros_like(returns)
        mean = torch.tensor([m.mean for m in self.moments], dtype=torch.float64, device=returns.device)
        std = torch.tensor([m.std for m in self.moments], dtype=torch.float64, device=returns.device)
        index = cells.clamp(max=len(self.moments) - 1)
        out = (returns.to(torch.float64) - mean[index]) / (std[index] + EPS)
        return torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=out.device)).to(returns.dtype)

    def state_dict(self) -> Dict[str, Any]:
        return {"scope": self.scope, "moments": [m.state_dict() for m in self.moments]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"scope", "moments"} - set(state)
        if missing:
            raise ValueError(f"SlotBaseline state lacks {sorted(missing)}: got keys {sorted(state)}")
        if state["scope"] != self.scope:
            raise ValueError(
                f"SlotBaseline state is {state['scope']!r}, this baseline is {self.scope!r} "
                "(rl.baseline_scope changed since the checkpoint)"
            )
        moments = []
        for entry in state["moments"]:
            m = RunningMoments()
            m.load_state_dict(entry)
            moments.append(m)
        self.moments = moments
