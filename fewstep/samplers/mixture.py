"""Gaussian mixtures with an exact denoiser: the analytic oracle for testing solvers.

For data x0 ~ sum_k w_k N(mu_k, s_k^2 I) and x = alpha x0 + sigma eps, the posterior mean is
  E[x0 | x] = sum_k p(k | x) [mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x - alpha mu_k)],
  p(k | x) ∝ w_k N(x; alpha mu_k, (alpha^2 s_k^2 + sigma^2) I).
Works for any sample shape: samples are flattened to D = prod(shape) features.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .parameterization import check_prediction_type, from_x0_eps
from .paths import NoisePath


class GaussianMixture:
    """Isotropic Gaussian mixture: means [K, D], stds [K], weights [K] (normalised)."""

    def __init__(self, means: Tensor, stds: Tensor | float, weights: Tensor | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError("means must have shape [K, D]")
        k = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        if bool((self.stds <= 0).any()):
            raise ValueError("stds must be positive")
        weights = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError("weights must be K non-negative numbers with a positive sum")
        self.weights = weights / weights.sum()

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def random(cls, num_components: int, dim: int, std: float = 0.3, seed: int = 0, scale: float = 1.0) -> "GaussianMixture":
        """A reproducible random mixture with means ~ N(0, scale^2 I) and random weights."""
        g = torch.Generator().manual_seed(seed)
        means = scale * torch.randn(num_components, dim, generator=g, dtype=torch.float64)
        weights = torch.rand(num_components, generator=g, dtype=torch.float64) + 0.5
        return cls(means, std, weights)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(x0 [n, D] float64, component labels [n] int64)."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[labels] + self.stds[labels, None] * noise, labels

    def x0_posterior_mean(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """Exact E[x0 | x_t = x] for x [B, ...] (any trailing shape with prod = D); same shape/dtype."""
        shape, dtype = x.shape, x.dtype
        flat = x.reshape(shape[0], -1).to(torch.float64)
        if flat.shape[1] != self.dim:
            raise ValueError(f"samples have {flat.shape[1]} features, the mixture has {self.dim}")
        alpha = torch.as_tensor(alpha, dtype=torch.float64, device=flat.device)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=flat.device)
        means, var0 = self.means.to(flat.device), self.stds.to(flat.device) ** 2
        var_t = alpha**2 * var0 + sigma**2  # [K]
        diff = flat[:, None, :] - alpha * means[None]  # [B, K, D]
        log_p = (
            torch.log(self.weights.to(flat.device))
            - 0.5 * self.dim * torch.log(2 * math.pi * var_t)
            - 0.5 * diff.pow(2).sum(-1) / var_t
        )
        resp = torch.softmax(log_p, dim=1)  # [B, K]
        gain = alpha * var0 / var_t  # [K]
        x0_k = means[None] + gain[None, :, None] * diff
        return (resp[..., None] * x0_k).sum(1).reshape(shape).to(dtype)

    def denoiser(self, path: NoisePath) -> "MixtureDenoiser":
        """The exact denoiser D(x, t) on `path` (evaluated at continuous t)."""
        return MixtureDenoiser(self, path)

    def model(self, path: NoisePath, prediction_type: str = "epsilon") -> "MixtureModel":
        """A network-like module `model(x, timestep) -> output` in `prediction_type` units."""
        return MixtureModel(self, path, prediction_type)


class MixtureDenoiser(nn.Module):
    """Exact x0_hat of a `GaussianMixture` on a path, at continuous time t."""

    def __init__(self, mixture: GaussianMixture, path: NoisePath):
        super().__init__()
        self.mixture, self.path = mixture, path

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        alpha, sigma = self.path.alpha_sigma(t)
        return self.mixture.x0_posterior_mean(x, alpha, sigma)


class MixtureModel(nn.Module):
    """The mixture's exact model in network form: input (x, timestep in model units) -> output.

    The timestep is mapped back with `path.t_of_model_time`, so the model sees exactly what a
    trained network would see (e.g. integer DDPM timesteps).
    """

    def __init__(self, mixture: GaussianMixture, path: NoisePath, prediction_type: str = "epsilon"):
        super().__init__()
        self.mixture, self.path = mixture, path
        self.prediction_type = check_prediction_type(prediction_type)

    def forward(self, x: Tensor, timestep: Tensor | float, **cond: Any) -> Tensor:
        timestep = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1)[0]
        t = self.path.t_of_model_time(timestep)
        return self.output_at(x, t)

    def output_at(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The exact output at continuous time t."""
        alpha, sigma = self.path.alpha_sigma(t)
        x0 = self.mixture.x0_posterior_mean(x, alpha, sigma)
        a, s = alpha.to(x.dtype), sigma.to(x.dtype)
        eps = (x - a * x0) / s
        return from_x0_eps(x0, eps, a, s, self.prediction_type)
