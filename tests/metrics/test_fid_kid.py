"""KID: parity with torch-fidelity on the same subsets, unbiasedness, bootstrap and FID-infinity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewstep.metrics.kid import kernel_inception_distance, polynomial_kernel
from fewstep.metrics.resample import bootstrap_fd, fid_infinity
from fewstep.metrics.stats import stats_from_features


def _gaussians(n: int, d: int, shift: float, seed: int) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).standard_normal((n, d)) + shift)


def test_matches_torch_fidelity_kid():
    from torch_fidelity.metric_kid import kid_features_to_metric

    x, y = _gaussians(300, 16, 0.0, 0).float(), _gaussians(250, 16, 0.3, 1).float()
    ours = kernel_inception_distance(x, y, subsets=20, subset_size=100, seed=7)
    theirs = kid_features_to_metric(x, y, kid_subsets=20, kid_subset_size=100, rng_seed=7, verbose=False)
    assert ours[0] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)
    assert ours[1] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-3)


def test_unbiased_near_zero_for_same_distribution_positive_otherwise():
    """Over 200 independent same-distribution pairs, KID averages to 0 (the V-statistic does not)."""
    unbiased, biased = [], []
    for seed in range(200):
        x, y = _gaussians(60, 8, 0, 2 * seed), _gaussians(60, 8, 0, 2 * seed + 1)
        unbiased.append(kernel_inception_distance(x, y, subsets=1, subset_size=60)[0])
        biased.append(float(polynomial_kernel(x, x).mean() + polynomial_kernel(y, y).mean()
                            - 2 * polynomial_kernel(x, y).mean()))
    unbiased, biased = np.array(unbiased), np.array(biased)
    standard_error = unbiased.std(ddof=1) / np.sqrt(len(unbiased))
    assert abs(unbiased.mean()) < 3 * standard_error
    assert biased.mean() > 10 * standard_error
    shifted = kernel_inception_distance(_gaussians(400, 8, 0, 2), _gaussians(400, 8, 0.5, 3), subsets=20,
                                        subset_size=200)
    assert shifted[0] > 10 * shifted[1] > 0


def test_kid_needs_two_images():
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(torch.zeros(1, 3), torch.zeros(5, 3))


def test_bootstrap_interval_and_fid_infinity():
    x, y = _gaussians(400, 4, 0, 4), _gaussians(400, 4, 0.5, 5)
    ref = stats_from_features(y)
    boot = bootstrap_fd(x, ref, replicates=50, seed=0)
    assert boot.low < 4 * 0.25 < boot.high  # population FD = 4 * 0.5^2 (same covariance)
    assert boot.std > 0 and boot.bias > 0  # resampling with replacement biases FD upward
    both = bootstrap_fd(x, y, replicates=20, seed=0)
    assert both.std > boot.std  # resampling both sides adds the reference's sampling noise
    intercept, sizes, values = fid_infinity(x, ref, num_points=8, min_n=50)
    assert len(sizes) == 8 and values[0] > values[-1]  # FD is biased upward at small N
    assert abs(intercept - 1.0) < abs(values[-1] - 1.0) + 0.05
