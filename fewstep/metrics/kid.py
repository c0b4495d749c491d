"""Kernel Inception Distance (Binkowski et al. 2018): unbiased polynomial-kernel MMD^2 over subsets.

`k(x, y) = (x.y / D + 1)^3`; on each of `subsets` random subsets of size m from both sets,
`MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1)) - 2 sum_ij k(x_i, y_j) / m^2`,
reported as mean and (population) std over subsets. Subsets are drawn as torch-fidelity does
(`numpy.random.RandomState(seed)`, first set then second, without replacement; seed 2020), so
the numbers are comparable with it; arithmetic here is float64.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 3, coef0: float = 1.0) -> Tensor:
    """`(x y^T / D + coef0)^degree` for x (N, D), y (M, D) -> (N, M)."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x: Tensor, y: Tensor) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel between x (m, D) and y (m, D)."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / m**2)


def kernel_inception_distance(
    features1: Tensor | np.ndarray,
    features2: Tensor | np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 2020,
) -> tuple[float, float]:
    """KID mean and std over `subsets` subsets of `min(subset_size, n1, n2)` rows (N, D features)."""
    x = torch.as_tensor(features1).to(torch.float64)
    y = torch.as_tensor(features2).to(torch.float64)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 images on each side, got {x.shape[0]} and {y.shape[0]}")
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        pick_x = torch.from_numpy(rng.choice(x.shape[0], m, replace=False))
        pick_y = torch.from_numpy(rng.choice(y.shape[0], m, replace=False))
        values[i] = mmd2_unbiased(x[pick_x], y[pick_y])
    return float(values.mean()), float(values.std())
