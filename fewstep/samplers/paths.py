"""Noise paths x_t = alpha(t) x0 + sigma(t) eps on t in [0, 1] (t = 0 data, t = 1 noise).

Every solver works in the log-SNR `lam(t) = log(alpha / sigma)`; a path supplies `alpha_sigma`,
`lam`, its inverse `t_of_lam`, and `model_time` (the units the network was trained with:
integer DDPM timesteps, a continuous time, or `sigma * num_train_timesteps` for flows).
All arithmetic is float64; results are returned as float64 tensors.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Literal

import torch
from torch import Tensor

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
_F64 = torch.float64


def _as_t(t: Tensor | float) -> Tensor:
    return torch.as_tensor(t, dtype=_F64)


class NoisePath(ABC):
    """Base class: a Gaussian noise path on t in [0, 1] described by (alpha, sigma, lam)."""

    #: "vp" (alpha^2 + sigma^2 = 1) or "flow" (alpha = 1 - t, sigma = t).
    kind: str = ""
    #: smallest time the network was trained at; grids end here or jump to t = 0.
    t_min: float = 0.0
    #: the finite log-SNR range used by sigma-space grids (Karras, logSNR): t_hi -> t_lo.
    t_hi_finite: float = 1.0
    t_lo_finite: float = 0.0
    #: True when the network only knows integer timesteps (model_time is rounded).
    discrete: bool = False

    @abstractmethod
    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(alpha(t), sigma(t)), each shaped like `t`."""

    def lam(self, t: Tensor | float) -> Tensor:
        """Log signal-to-noise ratio lam(t) = log(alpha / sigma); +inf at sigma = 0."""
        alpha, sigma = self.alpha_sigma(t)
        return torch.log(alpha) - torch.log(sigma)

    @abstractmethod
    def t_of_lam(self, lam: Tensor | float) -> Tensor:
        """Inverse of `lam` (monotone decreasing in t)."""

    @abstractmethod
    def model_time(self, t: Tensor | float) -> Tensor:
        """The timestep the network expects at time t (rounded for discrete models)."""

    @abstractmethod
    def t_of_model_time(self, timestep: Tensor | float) -> Tensor:
        """Inverse of `model_time` (for models that receive diffusers' timesteps)."""

    def snap(self, ts: Tensor) -> Tensor:
        """Move time-space grid points onto the model's own timesteps (identity if continuous)."""
        return ts

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable description, inverse of `path_from_config`."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items() if k != "type")
        return f"{type(self).__name__}({args})"


# ----------------------------------------------------------------------------------------
# Variance preserving, discrete (DDPM / Stable Diffusion)
# ----------------------------------------------------------------------------------------


def diffusers_betas(
    beta_schedule: BetaSchedule,
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> Tensor:
    """Betas computed exactly as diffusers computes them (float32), shape [num_train_timesteps]."""
    n = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        # Nichol & Dhariwal (2021) cosine alpha_bar, betas capped at 0.999.
        def alpha_bar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        return torch.tensor(betas, dtype=torch.float32)
    raise ValueError(
        f"unknown beta_schedule {beta_schedule!r}; valid: 'linear', 'scaled_linear', "
        "'squaredcos_cap_v2' (or pass trained_betas)"
    )


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. (2023) Alg. 1: shift/scale sqrt(alpha_bar) so the last timestep has SNR 0."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def _clamp_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Make a zero-terminal-SNR alpha_bar usable: the last entry 2^-24 (diffusers' choice).

    With linear betas the rescaled alpha_bar of the timesteps just before the last falls below
    2^-24 (diffusers keeps that non-monotone table); here those entries are raised to a
    geometric ramp just above 2^-24 so that log-SNR stays strictly decreasing. They are pure
    noise either way (SNR < 1e-7); every other timestep is unchanged.
    """
    out = alphas_cumprod.clone()
    out[-1] = 2**-24
    for k in range(out.numel() - 2, -1, -1):
        if out[k] > out[k + 1]:
            break
        out[k] = out[k + 1] * (1 + 2**-10)
    return out


class DiscreteVPPath(NoisePath):
    """VP path of a discrete-time DDPM with `alphas_cumprod[k]`, k = 0 .. N-1.

    Time mapping: t = (k + 1) / N, so t = 1 is the last training timestep and t = 1/N the
    first (`t_min`); t = 0 is clean data (alpha_bar = 1, like DDIM's `set_alpha_to_one`).
    Between integer timesteps log(sigma/alpha) is interpolated linearly in k, which is how
    diffusers maps sigmas to timesteps (`_sigma_to_t`); below k = 0, sigma^2/alpha^2 falls
    linearly to 0.
    """

    kind = "vp"
    discrete = True

    def __init__(self, alphas_cumprod: Tensor):
        alphas_cumprod = torch.as_tensor(alphas_cumprod)
        if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() < 2:
            raise ValueError("alphas_cumprod must be a 1-D tensor with at least 2 entries")
        if not bool(((alphas_cumprod > 0) & (alphas_cumprod <= 1)).all()):
            raise ValueError("alphas_cumprod must lie in (0, 1]; clamp a zero-SNR last entry")
        # diffusers computes sigma = ((1 - a) / a) ** 0.5 in the dtype of alphas_cumprod.
        sigmas_ve = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.alphas_cumprod = alphas_cumprod.to(_F64)
        self.log_sigmas = torch.log(sigmas_ve.to(_F64))  # increasing in k
        if not bool((self.log_sigmas[1:] > self.log_sigmas[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        self.num_train_timesteps = int(alphas_cumprod.numel())
        n = self.num_train_timesteps
        self.t_min = 1.0 / n
        self.t_hi_finite = 1.0
        self.t_lo_finite = 1.0 / n
        self._source: dict[str, Any] = {"alphas_cumprod": "explicit"}

    @classmethod
    def from_betas(
        cls,
        beta_schedule: BetaSchedule = "linear",
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        trained_betas: Tensor | list[float] | None = None,
        rescale_betas_zero_snr: bool = False,
    ) -> "DiscreteVPPath":
        """Build from a diffusers beta schedule (same float32 arithmetic as diffusers)."""
        if trained_betas is not None:
            betas = torch.as_tensor(trained_betas, dtype=torch.float32)
        else:
            betas = diffusers_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        if rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if rescale_betas_zero_snr:
            alphas_cumprod = _clamp_zero_terminal_snr(alphas_cumprod)
        path = cls(alphas_cumprod)
        path._source = {
            "beta_schedule": beta_schedule,
            "num_train_timesteps": num_train_timesteps,
            "beta_start": beta_start,
            "beta_end": beta_end,
            "trained_betas": None if trained_betas is None else [float(b) for b in betas],
            "rescale_betas_zero_snr": rescale_betas_zero_snr,
        }
        return path

    def _log_sigma_ve(self, t: Tensor) -> Tensor:
        """log(sigma/alpha) at continuous t (float64)."""
        n = self.num_train_timesteps
        k = (t * n - 1).clamp(max=n - 1)
        k_floor = k.floor().clamp(0, n - 2)
        w = (k - k_floor).clamp(max=1)
        lo = self.log_sigmas[k_floor.long()]
        hi = self.log_sigmas[k_floor.long() + 1]
        inside = lo + w * (hi - lo)
        # below the first timestep: sigma_ve^2 = sigma_ve(k=0)^2 * (k + 1), zero at t = 0.
        below = self.log_sigmas[0] + 0.5 * torch.log((t * n).clamp(min=0))  # k + 1 = t n, without cancellation
        return torch.where(k >= 0, inside, below)

    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        log_s = self._log_sigma_ve(_as_t(t))
        alpha = torch.rsqrt(1 + torch.exp(2 * log_s))
        return alpha, torch.exp(log_s) * alpha

    def lam(self, t: Tensor | float) -> Tensor:
        return -self._log_sigma_ve(_as_t(t))

    def t_of_lam(self, lam: Tensor | float) -> Tensor:
        n = self.num_train_timesteps
        log_s = -_as_t(lam)
        idx = torch.searchsorted(self.log_sigmas, log_s.contiguous()).clamp(1, n - 1)
        lo, hi = self.log_sigmas[idx - 1], self.log_sigmas[idx]
        k = (idx - 1) + ((log_s - lo) / (hi - lo)).clamp(max=1)
        k_below = torch.exp(2 * (log_s - self.log_sigmas[0])) - 1  # inverse of the tail
        k = torch.where(log_s >= self.log_sigmas[0], k, k_below)
        return ((k + 1) / n).clamp(0, 1)

    def model_time(self, t: Tensor | float) -> Tensor:
        k = _as_t(t) * self.num_train_timesteps - 1
        return k.round().clamp(0, self.num_train_timesteps - 1)

    def t_of_model_time(self, timestep: Tensor | float) -> Tensor:
        return (_as_t(timestep) + 1) / self.num_train_timesteps

    def snap(self, ts: Tensor) -> Tensor:
        snapped = (self.model_time(ts) + 1) / self.num_train_timesteps
        return torch.where(ts > 0, snapped, ts)

    def to_config(self) -> dict[str, Any]:
        if "beta_schedule" in self._source:
            return {"type": "discrete_vp", **self._source}
        return {"type": "discrete_vp", "alphas_cumprod": [float(a) for a in self.alphas_cumprod]}


# ----------------------------------------------------------------------------------------
# Variance preserving, continuous (score SDE / DPM-Solver's VPSDE)
# ----------------------------------------------------------------------------------------


class ContinuousVPPath(NoisePath):
    """Continuous VP path with linear beta(t) (Song et al. 2021): log alpha = -Δβ t²/4 - β0 t/2."""

    kind = "vp"

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_min: float = 1e-3,
        model_time_scale: float = 1.0,
    ):
        if not 0 < beta_min < beta_max:
            raise ValueError("need 0 < beta_min < beta_max")
        if not 0 < t_min < 1:
            raise ValueError("t_min must lie in (0, 1)")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min = self.t_lo_finite = float(t_min)
        self.t_hi_finite = 1.0
        self.model_time_scale = float(model_time_scale)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * (self.beta_max - self.beta_min) * t**2 - 0.5 * self.beta_min * t

    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        log_alpha = self._log_alpha(_as_t(t))
        return torch.exp(log_alpha), torch.sqrt(-torch.expm1(2 * log_alpha))

    def lam(self, t: Tensor | float) -> Tensor:
        log_alpha = self._log_alpha(_as_t(t))
        return log_alpha - 0.5 * torch.log(-torch.expm1(2 * log_alpha))

    def t_of_lam(self, lam: Tensor | float) -> Tensor:
        # log alpha = -0.5 log(1 + e^{-2 lam}); solve the quadratic in t.
        log_alpha = -0.5 * torch.logaddexp(torch.zeros((), dtype=_F64), -2 * _as_t(lam))
        delta = self.beta_max - self.beta_min
        disc = self.beta_min**2 - 4 * delta * log_alpha
        return (2 * (-log_alpha) / (0.5 * self.beta_min + 0.5 * torch.sqrt(disc))).clamp(0, 1)

    def model_time(self, t: Tensor | float) -> Tensor:
        return _as_t(t) * self.model_time_scale

    def t_of_model_time(self, timestep: Tensor | float) -> Tensor:
        return _as_t(timestep) / self.model_time_scale

    def to_config(self) -> dict[str, Any]:
        return {
            "type": "continuous_vp",
            "beta_min": self.beta_min,
            "beta_max": self.beta_max,
            "t_min": self.t_min,
            "model_time_scale": self.model_time_scale,
        }


# ----------------------------------------------------------------------------------------
# Rectified flow
# ----------------------------------------------------------------------------------------


#: smallest finite time of a flow whose model takes t in [0, 1] directly (num_train_timesteps=1).
CONTINUOUS_T_LO = 1e-3


class RectifiedFlowPath(NoisePath):
    """Rectified flow / flow matching: alpha = 1 - t, sigma = t; the net predicts v = eps - x0.

    `model_time(t) = t * num_train_timesteps`, the `timesteps` diffusers' flow schedulers
    hand to SD3 / Flux transformers. Time shifts are grid transforms (`schedules.shift_times`),
    not part of the path, exactly as in diffusers. Models that take t itself (ACE-Step:
    `num_train_timesteps=1`) get the finite log-SNR range of a 1000-step model, t in [1e-3, 1 - 1e-3].
    """

    kind = "flow"

    def __init__(self, num_train_timesteps: int = 1000, t_lo_finite: float | None = None):
        self.num_train_timesteps = int(num_train_timesteps)
        self.t_min = 0.0
        default = 1.0 / num_train_timesteps if num_train_timesteps > 1 else CONTINUOUS_T_LO
        self.t_lo_finite = float(t_lo_finite) if t_lo_finite is not None else default
        self.t_hi_finite = 1.0 - self.t_lo_finite

    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        t = _as_t(t)
        return 1 - t, t

    def lam(self, t: Tensor | float) -> Tensor:
        t = _as_t(t)
        return torch.log1p(-t) - torch.log(t)

    def t_of_lam(self, lam: Tensor | float) -> Tensor:
        return torch.sigmoid(-_as_t(lam))

    def model_time(self, t: Tensor | float) -> Tensor:
        return _as_t(t) * self.num_train_timesteps

    def t_of_model_time(self, timestep: Tensor | float) -> Tensor:
        return _as_t(timestep) / self.num_train_timesteps

    def to_config(self) -> dict[str, Any]:
        return {
            "type": "rectified_flow",
            "num_train_timesteps": self.num_train_timesteps,
            "t_lo_finite": self.t_lo_finite,
        }


_PATHS = {"discrete_vp": DiscreteVPPath, "continuous_vp": ContinuousVPPath, "rectified_flow": RectifiedFlowPath}


def path_from_config(config: dict[str, Any]) -> NoisePath:
    """Rebuild a path from `NoisePath.to_config()` output."""
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in _PATHS:
        raise ValueError(f"unknown path type {kind!r}; valid: {sorted(_PATHS)}")
    if kind == "discrete_vp":
        if "alphas_cumprod" in config:
            return DiscreteVPPath(torch.tensor(config["alphas_cumprod"], dtype=_F64))
        return DiscreteVPPath.from_betas(**config)
    return _PATHS[kind](**config)
