"""Inverse-propensity scoring (IPS): a target policy's click rate from logs of another policy.

Why: logged clicks only say how the logging policy did. Re-weighting each
logged impression by ``target probability / logging probability`` of what
was shown gives an unbiased estimate of the click rate the target policy
would have had, as long as the logging policy could show everything the
target shows (every logging propensity > 0) and the propensities are the
true ones -- which is what the Open Bandit Dataset logs. The estimate of the
logging policy itself has every weight 1: the plain mean of the clicks.

The estimate is a mean of n independent terms ``w_i * r_i``, so its standard
error is their sample standard deviation over sqrt(n) and the interval is the
normal one. With few clicks and large weights the normal interval is rough;
``effective_sample_size`` (``(sum w)^2 / sum w^2``) says how many logged
impressions the estimate is really worth.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional, Sequence, Tuple

import numpy as np

from pagerl.eval.stats import mean_se


@dataclass(frozen=True)
class IpsEstimate:
    """An IPS estimate with its standard error and normal confidence interval (None where n < 2)."""

    value: float
    se: Optional[float]
    ci: Optional[Tuple[float, float]]
    level: float
    n: int
    max_weight: float
    effective_sample_size: float

    def __str__(self) -> str:
        if self.se is None or self.ci is None:
            return f"{self.value:.5f} (n={self.n}, no standard error)"
        return (
            f"{self.value:.5f} ± {self.se:.5f} ({100 * self.level:g}% CI [{self.ci[0]:.5f}, {self.ci[1]:.5f}], "
            f"n={self.n}, effective n={self.effective_sample_size:.0f})"
        )


def ips_estimate(
    clicks: Sequence[float],
    target_propensities: Sequence[float],
    logging_propensities: Sequence[float],
    level: float = 0.95,
) -> IpsEstimate:
    """``mean(clicks * target / logging)`` over logged impressions, with its SE and normal CI.

    ``target_propensities[i]`` is the target policy's probability of showing
    what impression i showed (in [0, 1]), ``logging_propensities[i]`` the
    logging policy's (in (0, 1]); ``clicks`` are the logged rewards.
    """
    r = _vector(clicks, "clicks")
    target = _vector(target_propensities, "target_propensities")
    logging = _vector(logging_propensities, "logging_propensities")
    if not (len(r) == len(target) == len(logging)):
        raise ValueError(
            f"ips_estimate: {len(r)} clicks, {len(target)} target and {len(logging)} logging propensities; "
            "expected one of each per logged impression"
        )
    if len(r) == 0:
        raise ValueError("ips_estimate: no logged impressions")
    if not 0.0 < level < 1.0:
        raise ValueError(f"ips_estimate: confidence level must be in (0, 1), got {level}")
    _check_range(target, "target_propensities", lower_open=False)
    _check_range(logging, "logging_propensities", lower_open=True)
    weights = target / logging
    value, se = mean_se(weights * r)
    ci = None
    if se is not None:
        z = NormalDist().inv_cdf(0.5 + level / 2.0)
        ci = (value - z * se, value + z * se)
    total = float(weights.sum())
    squares = float((weights**2).sum())
    return IpsEstimate(
        value=float(value),
        se=se,
        ci=ci,
        level=float(level),
        n=len(r),
        max_weight=float(weights.max()),
        effective_sample_size=total * total / squares if squares > 0 else 0.0,
    )


def _vector(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"ips_estimate: {name} must be one value per logged impression, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if len(bad):
        raise ValueError(f"ips_estimate: {name}[{bad[0]}] is {float(array[bad[0]])!r}: expected a finite number")
    return array


def _check_range(p: np.ndarray, name: str, lower_open: bool) -> None:
    outside = (p <= 0.0) if lower_open else (p < 0.0)
    bad = np.flatnonzero(outside | (p > 1.0))
    if len(bad):
        interval = "(0, 1]" if lower_open else "[0, 1]"
        raise ValueError(
            f"ips_estimate: {name}[{bad[0]}] is {float(p[bad[0]])!r}: expected a probability in {interval}"
        )
