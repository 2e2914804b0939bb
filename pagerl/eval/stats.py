"""The one mean-and-standard-error every evaluation figure is reported with."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np


def mean_se(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and standard error (sample std / sqrt(n)); None where undefined (no values / a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean()) if len(arr) else None
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else None
    return mean, se
