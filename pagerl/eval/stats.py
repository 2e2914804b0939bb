"""The statistics every evaluation figure is reported with.

Two views of the same request sample:

- :func:`mean_se`: the mean and its standard error (sample std / sqrt(n)),
  the spread a normal approximation implies;
- :func:`bootstrap_ci`: a percentile bootstrap confidence interval over
  requests, which makes no normality assumption. Click counts per page are
  skewed and bounded below by 0, and a valid-page rate near 1 is far from
  normal, so the interval is the figure to read at small n.

The bootstrap draws its resamples once (:func:`bootstrap_indices`) from a
seed, and every method and metric of an evaluation uses the same draws: the
intervals are repeatable, and the intervals of a paired difference and of
its two sides come from the same resampled request sets.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np


def mean_se(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and standard error (sample std / sqrt(n)); None where undefined (no values / a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean()) if len(arr) else None
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else None
    return mean, se


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, n]`` request indices drawn with replacement, a pure function of its arguments."""
    if n < 1 or resamples < 1:
        return np.zeros((0, max(n, 0)), dtype=np.int64)
    return np.random.default_rng([int(seed), 0xB00757, int(n)]).integers(0, n, size=(int(resamples), int(n)))


def bootstrap_ci(values: Sequence[float], indices: np.ndarray, level: float) -> Optional[List[float]]:
    """The percentile bootstrap interval ``[lo, hi]`` of the mean of ``values`` at ``level`` (e.g. 0.95).

    ``indices`` are resamples of positions into ``values``
    (:func:`bootstrap_indices` with ``n = len(values)``). None where the
    interval is undefined: fewer than two values, or no resamples.
    """
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) < 2 or len(indices) == 0:
        return None
    if indices.shape[1] != len(arr):
        raise ValueError(f"bootstrap indices resample {indices.shape[1]} values, got {len(arr)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    return _central(arr[indices].mean(axis=1), level)


def _central(statistics: np.ndarray, level: float) -> List[float]:
    """The central ``level`` share of resampled statistics: the percentile interval."""
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(statistics, [tail, 1.0 - tail])
    return [float(lo), float(hi)]


class Bootstrap:
    """``eval.bootstrap_resamples`` resamples at ``eval.ci_level``, drawn once per sample size from ``seed``.

    One instance serves a whole evaluation, so every method's interval over
    the same n requests comes from the same resampled request sets.
    """

    def __init__(self, resamples: int, level: float, seed: int) -> None:
        if int(resamples) < 0:
            raise ValueError(f"bootstrap resamples must be 0 (off) or more, got {resamples}")
        if not 0.0 < float(level) < 1.0:
            raise ValueError(f"confidence level must be in (0, 1), got {level}")
        self.resamples, self.level, self.seed = int(resamples), float(level), int(seed)
        self._indices: dict = {}

    def ci(self, values: Sequence[float]) -> Optional[List[float]]:
        """The interval of the mean of ``values`` (None when off or undefined)."""
        if self.resamples == 0:
            return None
        return bootstrap_ci(values, self._draws(len(values)), self.level)

    def ratio_ci(self, numerator: Sequence[float], denominator: Sequence[float]) -> Optional[List[float]]:
        """The interval of ``mean(numerator) / mean(denominator)`` over the same resampled requests
        (a relative change: ``numerator`` the per-request difference, ``denominator`` the base)."""
        num, den = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
        if len(num) != len(den):
            raise ValueError(f"ratio of {len(num)} and {len(den)} values: expected one of each per request")
        if self.resamples == 0 or len(num) < 2:
            return None
        idx = self._draws(len(num))
        return _central(num[idx].mean(axis=1) / den[idx].mean(axis=1), self.level)

    def _draws(self, n: int) -> np.ndarray:
        if n not in self._indices:
            self._indices[n] = bootstrap_indices(n, self.resamples, self.seed)
        return self._indices[n]
