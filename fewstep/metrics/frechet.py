"""Frechet distance between Gaussians fitted to features (FID when the features are Inception's).

`FD = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2})`   (Dowson & Landau 1982; Heusel et al. 2017)

The only hard term is `Tr((S1 S2)^{1/2})`. With any factor `S1 = F^T F` (F: r x d) the non-zero
eigenvalues of `S1 S2` are those of the symmetric PSD matrix `F S2 F^T` (r x r) — the symmetric
form `S1^{1/2} S2 S1^{1/2}` up to an orthogonal change of basis — so

    Tr((S1 S2)^{1/2}) = sum_i sqrt(eigvalsh(F S2 F^T)_i) = ||F1 F2^T||_* (if also S2 = F2^T F2),

computed in float64 with symmetric / SVD solvers: no complex arithmetic, no non-symmetric `eig`
(torchmetrics) and no Schur-based `sqrtm` (pytorch-fid / scipy).

- Both covariances positive definite (n > d): F = L^T from Cholesky, `eigvalsh(L^T S2 L)`.
- Otherwise (n <= d): low-rank factors — the centred features `(X - mu) / sqrt(n - 1)` when
  they are at hand (exact), else a pivoted Cholesky that stops at the numerical rank — and the
  nuclear norm of `F1 F2^T`, an r1 x r2 SVD.

Inputs are checked, not repaired (`check_covariance`): a covariance must be symmetric,
`||S - S^T||_F <= 1e-6 ||S||_F` (it is then symmetrised exactly), and positive semi-definite up
to round-off, smallest eigenvalue `>= -1e-6 Tr(S)` (tested as: `S + 1e-6 Tr(S) I` has a Cholesky
factor). Float64 round-off is ~1e-13 Tr(S) and storing a covariance in float32 moves its
eigenvalues by at most ~6e-8 Tr(S), so only matrices that are not covariances fail (sigma = -I, a
garbage triangle, an inverse covariance with the wrong sign...).

Round-off makes eigenvalues of PSD matrices come out as tiny negatives (about -1e-16 times the
largest); they are clipped to 0 before the square root. The distance itself is clipped at 0 only
within round-off: a result below `-1e-6 (Tr S1 + Tr S2)` (the scale of the terms that cancel) is
an error, never reported as 0. So near-identical sets give 0.0 or a tiny positive number, and
a clearly negative value raises instead of passing for a perfect score.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SYMMETRY_RTOL = 1e-6
"""A covariance S passes as symmetric when `||S - S^T||_F <= SYMMETRY_RTOL * ||S||_F`."""
PSD_RTOL = 1e-6
"""A covariance S passes as PSD when its smallest eigenvalue is `>= -PSD_RTOL * Tr(S)`."""
NEGATIVE_RTOL = 1e-6
"""An FD in `[-NEGATIVE_RTOL * (Tr S1 + Tr S2), 0)` is round-off and clipped to 0; below, an error."""


def _f64(x: np.ndarray | Tensor) -> Tensor:
    """A float64 CPU-or-device tensor view of `x` (numpy arrays stay on CPU)."""
    if isinstance(x, Tensor):
        return x.to(torch.float64)
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


def check_covariance(sigma: np.ndarray | Tensor, name: str = "sigma") -> Tensor:
    """`sigma` as a float64 tensor, exactly symmetrised, after checking that it is a covariance.

    Symmetric: `||S - S^T||_F <= SYMMETRY_RTOL ||S||_F`; positive semi-definite up to round-off:
    smallest eigenvalue `>= -PSD_RTOL Tr(S)`, tested with one Cholesky of `S + PSD_RTOL Tr(S) I`
    (O(d^3 / 3); the eigenvalues are computed only for the error message). `name` says where
    the matrix came from (e.g. the statistics file) in the ValueError raised otherwise.
    """
    return _checked_covariance(sigma, name)[0]


def _checked_covariance(sigma: np.ndarray | Tensor, name: str) -> tuple[Tensor, Tensor | None]:
    """(symmetrised sigma, its Cholesky factor L if positive definite else None); see `check_covariance`."""
    sigma = _f64(sigma)
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
        raise ValueError(f"{name} must be a square (d, d) covariance matrix, got shape {tuple(sigma.shape)}")
    if not torch.isfinite(sigma).all():
        raise ValueError(f"{name} contains NaN or infinite values; recompute the statistics")
    symmetric = (sigma + sigma.T) / 2
    norm = float(torch.linalg.matrix_norm(sigma))
    asymmetry = 2 * float(torch.linalg.matrix_norm(sigma - symmetric))  # ||S - S^T||_F
    if asymmetry > SYMMETRY_RTOL * norm:
        raise ValueError(
            f"{name} is not symmetric (||S - S^T|| / ||S|| = {asymmetry / norm:.3g}, tolerance "
            f"{SYMMETRY_RTOL:g}), so it is not a covariance matrix: the data is damaged or is not a "
            "covariance; recompute the statistics (`fewstep fid stats INPUT --out FILE.npz`)"
        )
    sigma = symmetric
    if norm == 0:  # every feature vector identical: a valid (zero) covariance
        return sigma, None
    lower, info = torch.linalg.cholesky_ex(sigma)
    if int(info) == 0:
        return sigma, lower
    scale = float(sigma.diagonal().abs().sum())  # = Tr(S) for a PSD matrix
    shift = PSD_RTOL * scale
    eye = torch.eye(sigma.shape[0], dtype=sigma.dtype, device=sigma.device)
    if scale == 0 or int(torch.linalg.cholesky_ex(sigma + shift * eye)[1]) != 0:
        smallest = float(torch.linalg.eigvalsh(sigma)[0])
        raise ValueError(
            f"{name} is not positive semi-definite: its smallest eigenvalue is {smallest:.4g}, below the "
            f"round-off tolerance -{PSD_RTOL:g} x (sum of |diagonal|, the trace of a covariance) = "
            f"{-shift:.4g}, so it is not a covariance matrix "
            "(a negated or inverse matrix, or damaged data?); recompute the statistics "
            "(`fewstep fid stats INPUT --out FILE.npz`)"
        )
    return sigma, None


def _clip_round_off(value: float, scale: float) -> float:
    """`max(value, 0)` when value >= -NEGATIVE_RTOL * scale (round-off); a ValueError below that."""
    if value < -NEGATIVE_RTOL * scale:
        raise ValueError(
            f"the Frechet distance came out clearly negative ({value:.6g}, below the round-off tolerance "
            f"-{NEGATIVE_RTOL:g} x (Tr S1 + Tr S2) = {-NEGATIVE_RTOL * scale:.3g}); the statistics are not "
            "covariances of real features, or this is a bug: please report it with the two inputs"
        )
    return max(value, 0.0)


def covariance_factor(sigma: Tensor) -> Tensor:
    """A factor F (r x d) with `F^T F = sigma`: Cholesky if positive definite, else pivoted Cholesky.

    The pivoted (rank-revealing) Cholesky (LAPACK dpstrf, Higham 1990) stops at the numerical
    rank r (remaining pivots below d * eps * max diag), so F has only r rows; O(d^2 r).
    """
    factor, info = torch.linalg.cholesky_ex(sigma)
    if int(info) == 0:
        return factor.T
    from scipy.linalg.lapack import dpstrf

    d = sigma.shape[0]
    packed, pivots, rank, status = dpstrf(sigma.detach().cpu().numpy(), lower=1)
    if status < 0:
        raise ValueError(f"pivoted Cholesky failed (LAPACK dpstrf info={status}); is sigma symmetric PSD?")
    lower = torch.from_numpy(np.tril(packed)[:, :rank]).to(sigma)
    result = torch.zeros(rank, d, dtype=sigma.dtype, device=sigma.device)
    result[:, torch.from_numpy(pivots.astype(np.int64) - 1).to(sigma.device)] = lower.T
    return result


def feature_factor(features: Tensor) -> Tensor:
    """The low-rank factor `(X - mean) / sqrt(n - 1)` (n x d) of the sample covariance of X (n x d)."""
    x = _f64(features)
    return (x - x.mean(0)) / (x.shape[0] - 1) ** 0.5


def _lower_t_a_lower(lower: Tensor, a: Tensor) -> Tensor:
    """`L^T A L` for lower-triangular L and symmetric A (d, d).

    On CPU: two BLAS triangular multiplies (dtrmm, d^3 flops each: half the work of two general
    matmuls); elsewhere two matmuls. torch's Cholesky factor is already Fortran-ordered, and a
    C-ordered symmetric A read as Fortran-ordered is A itself, so nothing is copied.
    """
    if lower.device.type != "cpu":
        return lower.T @ a @ lower
    from scipy.linalg import blas

    lower_array = lower.detach().numpy()
    lower_fortran = lower_array if lower_array.flags.f_contiguous else np.asfortranarray(lower_array)
    a_array = a.detach().numpy()
    a_fortran = a_array.T if a_array.flags.c_contiguous else np.asfortranarray(a_array)  # A^T = A
    a_lower = blas.dtrmm(1.0, lower_fortran, a_fortran, side=1, lower=1)  # A L
    return torch.from_numpy(blas.dtrmm(1.0, lower_fortran, a_lower, side=0, lower=1, trans_a=1, overwrite_b=1))


def trace_sqrt_product(
    sigma1: Tensor | None,
    sigma2: Tensor | None,
    factor1: Tensor | None = None,
    factor2: Tensor | None = None,
    lower1: Tensor | None = None,
    lower2: Tensor | None = None,
) -> float:
    """`Tr((S1 S2)^{1/2})` in float64 (see module docstring).

    sigma1, sigma2: (d, d) symmetric PSD covariances; factor1, factor2: optional (r, d) factors
    with `F^T F = S`; lower1, lower2: optional Cholesky factors already computed. Both
    covariances positive definite: `sum sqrt(eigvalsh(L1^T S2 L1))`. Otherwise (n <= d, or
    factors given) the nuclear norm of `F1 F2^T` (r1 x r2): singular values carry round-off of
    order eps, where eigenvalues of a singular product would carry sqrt(eps).
    """
    if factor1 is None and factor2 is None:
        if lower1 is None:
            lower1, info1 = torch.linalg.cholesky_ex(sigma1)
            lower1 = lower1 if int(info1) == 0 else None
        if lower1 is not None and (lower2 is not None or int(torch.linalg.cholesky_ex(sigma2)[1]) == 0):
            inner = _lower_t_a_lower(lower1, sigma2)
            inner = (inner + inner.T) / 2  # exact symmetry for the symmetric solver
            return float(torch.linalg.eigvalsh(inner).clamp(min=0).sqrt().sum())
    factor1 = covariance_factor(sigma1) if factor1 is None else factor1
    factor2 = covariance_factor(sigma2) if factor2 is None else factor2
    return float(torch.linalg.svdvals(factor1 @ factor2.T).sum())


def frechet_distance(
    mu1: np.ndarray | Tensor,
    sigma1: np.ndarray | Tensor,
    mu2: np.ndarray | Tensor,
    sigma2: np.ndarray | Tensor,
    factor1: Tensor | None = None,
    factor2: Tensor | None = None,
) -> float:
    """Frechet distance `|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})` in float64.

    mu: (d,), sigma: (d, d); optional factors (r, d) with `F^T F = sigma` select the low-rank path.
    Each sigma must be symmetric and PSD up to round-off (`check_covariance`); the result is
    clipped at 0 only within round-off (`NEGATIVE_RTOL`), else a ValueError.
    """
    mu1, mu2, sigma1, sigma2 = (_f64(a) for a in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(),) * 2:
        raise ValueError(
            f"feature dimensions differ: mu {tuple(mu1.shape)} vs {tuple(mu2.shape)}, "
            f"sigma {tuple(sigma1.shape)} vs {tuple(sigma2.shape)}; both sides must use the same "
            "feature extractor"
        )
    for name, value in (("mu1", mu1), ("mu2", mu2)):
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or infinite values; recompute the statistics")
    sigma1, lower1 = _checked_covariance(sigma1, "sigma1")
    sigma2, lower2 = _checked_covariance(sigma2, "sigma2")
    factor1 = None if factor1 is None else _f64(factor1)
    factor2 = None if factor2 is None else _f64(factor2)
    mean_term = float((mu1 - mu2).square().sum())
    trace_term = float(sigma1.trace() + sigma2.trace())
    cross = trace_sqrt_product(sigma1, sigma2, factor1, factor2, lower1, lower2)
    return _clip_round_off(mean_term + trace_term - 2.0 * cross, trace_term)


def frechet_distance_from_features(features1: Tensor, features2: Tensor) -> float:
    """Frechet distance between two feature sets (n1 x d, n2 x d); low-rank path when n <= d."""
    x1, x2 = _f64(features1), _f64(features2)
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"feature dimensions differ: {x1.shape[1]} vs {x2.shape[1]}")
    if min(x1.shape[0], x2.shape[0]) < 2:
        raise ValueError("each feature set needs at least 2 rows for a covariance")
    d = x1.shape[1]
    f1 = feature_factor(x1) if x1.shape[0] <= d else None
    f2 = feature_factor(x2) if x2.shape[0] <= d else None
    if f1 is not None and f2 is not None:  # never form a d x d matrix
        mean_term = float((x1.mean(0) - x2.mean(0)).square().sum())
        trace_term = float(f1.square().sum() + f2.square().sum())
        return _clip_round_off(mean_term + trace_term - 2.0 * trace_sqrt_product(None, None, f1, f2), trace_term)
    return frechet_distance(x1.mean(0), torch.cov(x1.T).reshape(d, d), x2.mean(0),
                            torch.cov(x2.T).reshape(d, d), f1, f2)
