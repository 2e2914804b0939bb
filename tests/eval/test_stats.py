"""The bootstrap intervals against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pagerl.eval.stats import Bootstrap, bootstrap_ci, bootstrap_indices, mean_se


def test_two_values_give_the_exact_bootstrap_distribution():
    """Resampling [0, 1] twice gives a mean of 0, 1/2 or 1 with probability 1/4, 1/2, 1/4.

    So the 95% interval reaches both ends, and the central 40% (the 30th to
    the 70th percentile, inside the mass 1/2 at 1/2) is the single point 1/2.
    """
    indices = bootstrap_indices(2, 20000, seed=0)
    means = np.asarray([0.0, 1.0])[indices].mean(axis=1)
    shares = [np.mean(means == v) for v in (0.0, 0.5, 1.0)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.02)
    assert bootstrap_ci([0.0, 1.0], indices, 0.95) == [0.0, 1.0]
    assert bootstrap_ci([0.0, 1.0], indices, 0.40) == [0.5, 0.5]


def test_a_constant_sample_has_a_point_interval_and_a_large_one_the_normal_width():
    boot = Bootstrap(4000, 0.95, seed=3)
    assert boot.ci([2.5] * 7) == [2.5, 2.5]
    values = np.random.default_rng(1).exponential(1.0, size=400)
    lo, hi = boot.ci(values)
    mean, se = mean_se(values)
    # for n = 400 the bootstrap and the normal interval (mean +- 1.96 se) nearly agree
    assert lo < mean < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_the_same_seed_draws_the_same_resamples_for_every_method():
    a = Bootstrap(500, 0.9, seed=11)
    b = Bootstrap(500, 0.9, seed=11)
    values = list(np.linspace(0.0, 1.0, 30))
    assert a.ci(values) == b.ci(values)
    assert Bootstrap(500, 0.9, seed=12).ci(values) != a.ci(values)
    # shared draws: shifting every value shifts the interval by exactly as much
    lo, hi = a.ci(values)
    shifted = a.ci([v + 1.0 for v in values])
    assert shifted == pytest.approx([lo + 1.0, hi + 1.0])


def test_undefined_or_off_intervals_are_none_and_bad_settings_are_refused():
    assert Bootstrap(0, 0.95, seed=0).ci([1.0, 2.0]) is None
    assert Bootstrap(100, 0.95, seed=0).ci([1.0]) is None
    assert Bootstrap(100, 0.95, seed=0).ci([]) is None
    with pytest.raises(ValueError, match="confidence level"):
        Bootstrap(100, 1.5, seed=0)
    with pytest.raises(ValueError, match="resamples"):
        Bootstrap(-1, 0.95, seed=0)
    with pytest.raises(ValueError, match="resample 3 values"):
        bootstrap_ci([1.0, 2.0], bootstrap_indices(3, 10, 0), 0.95)
    assert math.isclose(mean_se([1.0, 3.0])[0], 2.0)


def test_a_relative_change_interval_is_the_ratio_on_each_resample():
    boot = Bootstrap(3000, 0.95, seed=5)
    base = np.random.default_rng(2).uniform(1.0, 2.0, size=200)
    # a variant exactly 10% above the base on every request: the change is 10% on every resample
    lo, hi = boot.ratio_ci(0.1 * base, base)
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    noisy = 0.1 * base + np.random.default_rng(3).normal(0.0, 0.2, size=200)
    lo, hi = boot.ratio_ci(noisy, base)
    assert lo < noisy.mean() / base.mean() < hi
    with pytest.raises(ValueError, match="one of each per request"):
        boot.ratio_ci([1.0, 2.0], [1.0])
