"""Frechet distance: closed forms, peers (pytorch-fid, torchmetrics formula), low-rank path, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from fewstep.metrics import frechet
from fewstep.metrics.frechet import (
    NEGATIVE_RTOL,
    PSD_RTOL,
    check_covariance,
    covariance_factor,
    feature_factor,
    frechet_distance,
    frechet_distance_from_features,
    trace_sqrt_product,
)


def _random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def test_commuting_gaussians_closed_form():
    """Diagonal covariances: FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2."""
    rng = np.random.default_rng(0)
    d = 50
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_non_commuting_gaussians_closed_form():
    """S2 = S1^{-1/2} M S1^{-1/2} makes S1^{1/2} S2 S1^{1/2} = M, so Tr sqrt(S1 S2) = sum sqrt(eig M)."""
    rng = np.random.default_rng(1)
    d = 40
    q, r = _random_rotation(d, rng), _random_rotation(d, rng)
    w, m = rng.uniform(0.05, 3, d), rng.uniform(0.05, 3, d)
    sigma1 = (q * w) @ q.T
    inv_sqrt = (q / np.sqrt(w)) @ q.T
    sigma2 = inv_sqrt @ ((r * m) @ r.T) @ inv_sqrt
    sigma2 = (sigma2 + sigma2.T) / 2
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sum(np.sqrt(m))
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("n", [300, 40])  # full rank (Cholesky path) and rank-deficient (eigh path)
def test_matches_pytorch_fid(n):
    rng = np.random.default_rng(2)
    d = 64
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    x = np.maximum(rng.standard_normal((n, d)) @ mix, 0)
    y = np.maximum(rng.standard_normal((n, d)) @ mix * 1.2 + 0.1, 0)
    stats = [(v.mean(0), np.cov(v, rowvar=False)) for v in (x, y)]
    ours = frechet_distance(*stats[0], *stats[1])
    reference = calculate_frechet_distance(*stats[0], *stats[1])
    assert ours == pytest.approx(reference, rel=1e-9 if n > d else 1e-6)
    assert frechet_distance_from_features(torch.tensor(x), torch.tensor(y)) == pytest.approx(ours, rel=1e-10)


def test_matches_torchmetrics_formula_in_float64():
    """torchmetrics' FID: Tr sqrt via eigvals of the non-symmetric S1 S2."""
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((500, 32)), rng.standard_normal((500, 32)) * 1.5 + 0.3
    mu1, mu2 = torch.tensor(x.mean(0)), torch.tensor(y.mean(0))
    s1, s2 = torch.tensor(np.cov(x, rowvar=False)), torch.tensor(np.cov(y, rowvar=False))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(float(_compute_fid(mu1, s1, mu2, s2)), rel=1e-10)


def test_low_rank_path_equals_full_path():
    """n < d: the n x n feature-factor problem gives the d x d answer.

    From a rank-deficient d x d covariance, round-off in its null space (~eps) enters through
    the square root as ~sqrt(eps): agreement is ~1e-9 relative, the feature path being exact.
    """
    rng = np.random.default_rng(4)
    x = torch.tensor(rng.standard_normal((20, 100)))
    y = torch.tensor(rng.standard_normal((15, 100)) + 0.2)
    full = frechet_distance(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T))
    low_rank = frechet_distance_from_features(x, y)
    assert low_rank == pytest.approx(full, rel=1e-8)
    one_sided = frechet_distance(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T), factor1=feature_factor(x))
    assert one_sided == pytest.approx(full, rel=1e-8)
    # brute force in float64 on the 100 x 100 product via its (real, non-negative) eigenvalues
    product_eigs = np.linalg.eigvals(torch.cov(x.T).numpy() @ torch.cov(y.T).numpy())
    brute = float((x.mean(0) - y.mean(0)).square().sum() + torch.cov(x.T).trace() + torch.cov(y.T).trace()) \
        - 2 * np.sqrt(np.clip(product_eigs.real, 0, None)).sum()
    assert low_rank == pytest.approx(brute, rel=1e-7)


def test_covariance_factor_reconstructs():
    rng = np.random.default_rng(5)
    a = torch.tensor(rng.standard_normal((10, 30)))
    for sigma in (torch.cov(a), torch.cov(a.T)):  # positive definite and rank 9 of 30
        factor = covariance_factor(sigma)
        assert torch.allclose(factor.T @ factor, sigma, atol=1e-12)


@pytest.mark.parametrize("n", [50, 500])  # rank-deficient (pivoted Cholesky + SVD) and full rank (eigvalsh)
def test_identical_sets_cross_term_is_the_trace(n):
    """Tr((S S)^{1/2}) = Tr(S) for any PSD S: the term that must cancel Tr S1 + Tr S2, checked
    before any clipping (so an error in it cannot hide behind `max(FD, 0)`)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((n, 80))
    sigma = check_covariance(np.cov(x, rowvar=False))
    assert trace_sqrt_product(sigma, sigma) == pytest.approx(float(sigma.trace()), rel=1e-12)
    mu = x.mean(0)
    same = frechet_distance(mu, sigma, mu, sigma)
    assert isinstance(same, float) and 0.0 <= same < 1e-10
    # true value 80 * 1e-18 + Tr(S) * (1e-12)^2 / 4: zero to round-off
    nudged = frechet_distance(mu, sigma, mu + 1e-9, sigma * (1 + 1e-12))
    assert isinstance(nudged, float) and 0.0 <= nudged < 1e-8


def test_clearly_negative_distance_raises_round_off_is_clipped(monkeypatch):
    """Only a result within NEGATIVE_RTOL x (Tr S1 + Tr S2) of 0 is clipped; below, an error (not 0)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 10))
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    trace = float(np.trace(sigma))
    real = trace_sqrt_product
    monkeypatch.setattr(frechet, "trace_sqrt_product", lambda *a: real(*a) + 0.1 * NEGATIVE_RTOL * trace)
    assert frechet_distance(mu, sigma, mu, sigma) == 0.0  # -0.2e-6 of the scale: round-off, clipped
    monkeypatch.setattr(frechet, "trace_sqrt_product", lambda *a: real(*a) + 10 * NEGATIVE_RTOL * trace)
    with pytest.raises(ValueError, match="clearly negative"):
        frechet_distance(mu, sigma, mu, sigma)
    with pytest.raises(ValueError, match="clearly negative"):
        frechet_distance_from_features(torch.tensor(x[:8]), torch.tensor(x[:8]))


def test_covariances_are_checked_symmetric_and_psd():
    """sigma = -I used to give FD 0.0 (clipped), a garbage upper triangle ~2e-16."""
    d = 12
    with pytest.raises(ValueError, match="sigma1 is not positive semi-definite.*smallest eigenvalue is -1"):
        frechet_distance(np.zeros(d), -np.eye(d), np.zeros(d), -np.eye(d))
    rng = np.random.default_rng(8)
    x = rng.standard_normal((100, d))
    sigma = np.cov(x, rowvar=False)
    garbage = sigma.copy()
    garbage[np.triu_indices(d, 1)] = 5 * rng.standard_normal(d * (d - 1) // 2)
    with pytest.raises(ValueError, match="sigma2 is not symmetric"):
        frechet_distance(x.mean(0), sigma, x.mean(0), garbage)
    # the boundary: eigenvalue -10 x tolerance refused, -0.1 x tolerance accepted (then clipped to 0)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    for factor, ok in ((10, False), (0.1, True)):
        eigenvalues = np.ones(d)
        eigenvalues[0] = -factor * PSD_RTOL * (d - 1)  # trace ~ d - 1
        candidate = (q * eigenvalues) @ q.T
        if ok:
            checked = check_covariance(candidate, "candidate")
            assert torch.equal(checked, checked.T)
        else:
            with pytest.raises(ValueError, match="candidate is not positive semi-definite"):
                check_covariance(candidate, "candidate")


def test_bad_inputs():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(3), np.eye(3) * np.nan, np.zeros(3), np.eye(3))
