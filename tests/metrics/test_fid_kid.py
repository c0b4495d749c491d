"""KID: parity with torch-fidelity on the same subsets, unbiasedness; bootstrap and FID-infinity
against brute force, a known linear trend and the known sampling distribution of FD on Gaussians."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytorch_fid.fid_score import calculate_frechet_distance

from fewstep.metrics import resample
from fewstep.metrics.kid import kernel_inception_distance, polynomial_kernel
from fewstep.metrics.resample import bootstrap_fd, fid_infinity
from fewstep.metrics.stats import Stats


def _gaussians(n: int, d: int, shift: float, seed: int) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).standard_normal((n, d)) + shift)


@pytest.mark.parametrize("dtype, rel_mean, rel_std", [(torch.float64, 1e-10, 1e-9), (torch.float32, 1e-4, 1e-3)])
def test_matches_torch_fidelity_kid(dtype, rel_mean, rel_std):
    """Same subsets (RandomState(seed)); torch-fidelity computes in the features' dtype, we in
    float64: float64 features agree to summation order, float32 ones to float32 round-off."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    x, y = _gaussians(300, 16, 0.0, 0).to(dtype), _gaussians(250, 16, 0.3, 1).to(dtype)
    ours = kernel_inception_distance(x, y, subsets=20, subset_size=100, seed=7)
    theirs = kid_features_to_metric(x, y, kid_subsets=20, kid_subset_size=100, rng_seed=7, verbose=False)
    assert ours[0] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=rel_mean)
    assert ours[1] == pytest.approx(theirs["kernel_inception_distance_std"], rel=rel_std)
    assert ours[0] > 5 * ours[1]  # a shift the metric sees, so the comparison is not 0 = 0


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


def _pytorch_fid(x: torch.Tensor, other: torch.Tensor | Stats) -> float:
    x = x.numpy()
    if isinstance(other, Stats):
        mu2, sigma2 = other.mu, other.sigma
    else:
        mu2, sigma2 = other.numpy().mean(0), np.cov(other.numpy(), rowvar=False)
    return float(calculate_frechet_distance(x.mean(0), np.cov(x, rowvar=False), mu2, sigma2))


@pytest.mark.parametrize("both", [False, True])
def test_bootstrap_equals_brute_force_resampling(both):
    """Same seed, rows drawn with torch.Generator(seed).randint (first set, then the second unless it
    is fixed statistics); each replicate scored by pytorch-fid; interval, std and bias by hand."""
    x, y = _gaussians(60, 5, 0, 4), _gaussians(50, 5, 0.4, 5)
    other = y if both else Stats(mu=np.full(5, 0.4), sigma=np.eye(5))
    result = bootstrap_fd(x, other, replicates=25, level=0.9, seed=11)
    generator = torch.Generator().manual_seed(11)
    values = []
    for _ in range(25):
        xb = x[torch.randint(60, (60,), generator=generator)]
        yb = y[torch.randint(50, (50,), generator=generator)] if both else other
        values.append(_pytorch_fid(xb, yb))
    values, estimate = np.array(values), _pytorch_fid(x, other)
    np.testing.assert_allclose(result.values, values, rtol=1e-9)
    q_low, q_high = np.percentile(values, [5, 95])
    assert result.low == pytest.approx(max(2 * estimate - q_high, 0), rel=1e-9, abs=1e-12)
    assert result.high == pytest.approx(2 * estimate - q_low, rel=1e-9)
    assert result.std == pytest.approx(values.std(ddof=1), rel=1e-9)
    assert result.bias == pytest.approx(values.mean() - estimate, rel=1e-8)


def test_bootstrap_std_and_coverage_match_the_known_sampling_distribution():
    """x ~ N(mu, I_4), reference = the population statistics (0, I): the population FD is |mu|^2 =
    0.25 and FD_N's sampling std is 2 |mu| / sqrt(N) = 0.05 to first order (from |mean(x)|^2). Over
    40 independent samples the bootstrap std averages within 15% of it, and the 95% basic interval
    covers 0.25 at least 34 times (expected 38)."""
    d, n, shift = 4, 400, 0.5
    population = Stats(mu=np.zeros(d), sigma=np.eye(d))
    stds, covered = [], 0
    for seed in range(40):
        x = _gaussians(n, d, 0, 100 + seed)
        x[:, 0] += shift
        result = bootstrap_fd(x, population, replicates=100, seed=seed)
        stds.append(result.std)
        covered += result.low <= shift**2 <= result.high
    assert np.mean(stds) == pytest.approx(2 * shift / np.sqrt(n), rel=0.15)
    assert covered >= 34


def test_fid_infinity_recovers_the_intercept_of_a_linear_trend(monkeypatch):
    """With FD_N = a + b / N exactly, the extrapolation returns a; sizes are N/10 ... N."""
    monkeypatch.setattr(resample, "_fd_against", lambda x, other: 3.25 + 40.0 / x.shape[0])
    intercept, sizes, values = fid_infinity(torch.zeros(500, 2), torch.zeros(500, 2), num_points=7)
    np.testing.assert_array_equal(sizes, np.unique(np.linspace(50, 500, 7).astype(np.int64)))
    np.testing.assert_allclose(values, 3.25 + 40.0 / sizes, rtol=1e-15)
    assert intercept == pytest.approx(3.25, rel=1e-12)


def test_fid_infinity_removes_the_known_first_order_bias():
    """x ~ N(mu, I_16) vs the population statistics (0, I), |mu|^2 = 1: to first order
    E[FD_N] = |mu|^2 + (d + d (d + 1) / 4) / N = 1 + 84 / N (d / N from the mean, d (d + 1) / (4 N)
    from the covariance's square root). Over 40 samples of N = 1000, the mean FD_N sits at
    1.084, FID-infinity's mean at 1 (within 0.04, ~3 standard errors) and the fitted slope near 84."""
    d = 16
    population = Stats(mu=np.zeros(d), sigma=np.eye(d))
    intercepts, slopes, full = [], [], []
    for seed in range(40):
        x = _gaussians(1000, d, 0, seed)
        x[:, 0] += 1.0
        intercept, sizes, values = fid_infinity(x, population, seed=seed)
        intercepts.append(intercept)
        slopes.append(np.polyfit(1.0 / sizes, values, 1)[0])
        full.append(values[-1])
    assert np.mean(full) == pytest.approx(1 + 84 / 1000, abs=0.03)
    assert np.mean(intercepts) == pytest.approx(1.0, abs=0.04)
    assert np.mean(slopes) == pytest.approx(84, rel=0.15)
