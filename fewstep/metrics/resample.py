"""Resampling estimates around the Frechet distance: bootstrap intervals and FID-infinity.

- Bootstrap (Efron 1979): resample each feature set's rows with replacement and recompute FD.
  FD is biased upward at finite N (Chong & Forsyth 2020) and resampling with replacement adds
  the same bias again: replicates sit *above* the point estimate, so a plain percentile
  interval can exclude it. We report the bootstrap std, the resampling bias
  `mean(FD*) - FD`, and the basic (pivotal, bias-corrected) interval
  `[2 FD - q_hi, 2 FD - q_lo]`, an interval for the population FD (N -> infinity). A side given
  only as statistics stays fixed (its sampling error is then not included).
- FID-infinity (Chong & Forsyth, "Effectively Unbiased FID and Inception Score and where to
  find them", CVPR 2020): FID_N is linear in 1/N to first order; compute it on random subsets
  of `num_points` sizes from N_min to N, fit `FID_N = FID_inf + k / N` by least squares and
  report the intercept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from fewstep.metrics.frechet import feature_factor, frechet_distance, frechet_distance_from_features
from fewstep.metrics.stats import Stats


@dataclass
class BootstrapResult:
    """Basic interval [low, high] at `level`, bootstrap std and bias, and the replicate values."""

    low: float
    high: float
    std: float
    bias: float
    level: float
    values: np.ndarray


def _fd_against(x: Tensor, other: Tensor | Stats) -> float:
    """FD between features x (N, D) and either features (M, D) or fixed statistics."""
    if isinstance(other, Tensor):
        return frechet_distance_from_features(x, other)
    d = x.shape[1]
    factor = feature_factor(x) if x.shape[0] <= d else None
    return frechet_distance(x.mean(0), torch.cov(x.T).reshape(d, d), other.mu, other.sigma, factor1=factor)


def bootstrap_fd(
    features1: Tensor,
    other: Tensor | Stats,
    replicates: int = 200,
    level: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> BootstrapResult:
    """Basic bootstrap interval of the Frechet distance; features1 (N, D), other (M, D) or `Stats`."""
    if replicates < 2:
        raise ValueError(f"--bootstrap needs at least 2 replicates, got {replicates}")
    generator = torch.Generator().manual_seed(seed)
    x = features1.to(torch.float64)
    y = other.to(torch.float64) if isinstance(other, Tensor) else other
    values = np.empty(replicates)
    for i in tqdm(range(replicates), desc="bootstrap", unit="rep", disable=not progress, leave=False):
        xb = x[torch.randint(x.shape[0], (x.shape[0],), generator=generator)]
        yb = y[torch.randint(y.shape[0], (y.shape[0],), generator=generator)] if isinstance(y, Tensor) else y
        values[i] = _fd_against(xb, yb)
    estimate = _fd_against(x, y)
    tail = (1 - level) / 2 * 100
    q_low, q_high = np.percentile(values, [tail, 100 - tail])
    low, high = max(2 * estimate - q_high, 0.0), max(2 * estimate - q_low, 0.0)
    bias = float(values.mean() - estimate)
    return BootstrapResult(float(low), float(high), float(values.std(ddof=1)), bias, level, values)


def fid_infinity(
    features1: Tensor,
    other: Tensor | Stats,
    num_points: int = 15,
    min_n: int | None = None,
    seed: int = 0,
) -> tuple[float, np.ndarray, np.ndarray]:
    """FID extrapolated to N -> inf (Chong & Forsyth 2020): (intercept, sizes N, FD at each N).

    Subsets of features1 (N, D) of sizes linspace(min_n, N) (min_n defaults to N / 10, as the
    reference's 5k of 50k) are scored against `other`; a line in 1/N is fitted.
    """
    n = features1.shape[0]
    min_n = max(min_n or n // 10, 2)
    if n <= min_n or num_points < 2:
        raise ValueError(f"FID-infinity needs more than {min_n} images and 2 sizes; got {n} images")
    sizes = np.unique(np.linspace(min_n, n, num_points).astype(np.int64))
    generator = torch.Generator().manual_seed(seed)
    x = features1.to(torch.float64)
    values = np.array([_fd_against(x[torch.randperm(n, generator=generator)[:size]], other) for size in sizes])
    slope, intercept = np.polyfit(1.0 / sizes, values, 1)
    return float(intercept), sizes, values
