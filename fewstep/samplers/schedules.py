"""Step schedules: grids `ts` [num_steps + 1] running down from t_max (noise) towards data.

Every schedule returns float64 times in [0, 1], strictly decreasing. Its last point is set by
`final`:
  * "zero"  — the last step lands on t = 0 exactly (sigma = 0): the sample is x0_hat there.
  * "t_min" — the last step lands on the smallest trained time (`path.t_min`, or the path's
              finite log-SNR end for sigma-space grids); the output keeps sigma(t_min) noise.

Time-space grids (uniform, quadratic, flow_shift) place num_steps + 1 points from t_max to
t_min and then replace the last by the final target — diffusers' "linspace" spacing; on a
discrete DDPM path they land on its integer timesteps exactly as diffusers does.
Sigma-space grids (logsnr / exponential, karras) space num_steps points in log-SNR between
the path's finite ends and append t = 0 (k-diffusion's and diffusers' convention), or space
num_steps + 1 points when final = "t_min". On a flow (lam = -inf at t = 1) the first point is
then moved to t = 1, so sampling starts from pure noise.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from .paths import DiscreteVPPath, NoisePath

Final = Literal["zero", "t_min"]
TimestepSpacing = Literal["linspace", "leading", "trailing"]
_F64 = torch.float64


# ------------------------------------------------------------------- validation helpers


def check_num_steps(num_steps: int) -> int:
    """Raise unless num_steps is a positive integer."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    return num_steps


def validate_grid(ts: Tensor | list[float]) -> Tensor:
    """Check a grid: 1-D, >= 2 finite points in [0, 1], strictly decreasing; returns float64."""
    ts = torch.as_tensor(ts, dtype=_F64).detach().clone() if not isinstance(ts, Tensor) else ts.to(_F64)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"a grid needs at least 2 times in a 1-D tensor, got shape {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError("the grid contains NaN or inf")
    if bool((ts < 0).any()) or bool((ts > 1).any()):
        raise ValueError(
            f"grid times must lie in [0, 1] (t = 1 noise, t = 0 data); got range "
            f"[{float(ts.min()):.4g}, {float(ts.max()):.4g}]"
        )
    if not bool((ts[1:] < ts[:-1]).all()):
        bad = int(torch.nonzero(ts[1:] >= ts[:-1])[0])
        raise ValueError(
            f"grid must be strictly decreasing (noise -> data); ts[{bad}]={float(ts[bad]):.6g} "
            f"is followed by ts[{bad + 1}]={float(ts[bad + 1]):.6g}"
        )
    return ts


def _with_final(points: Tensor, path: NoisePath, final: Final) -> Tensor:
    """Replace the last point by the final target (t = 0 or path.t_min)."""
    if final not in ("zero", "t_min"):
        raise ValueError(f"final must be 'zero' or 't_min', got {final!r}")
    points = points.clone()
    points[-1] = 0.0 if final == "zero" else path.t_min
    return points


# ------------------------------------------------------------------- time shifts (flows)


def shift_times(ts: Tensor, shift: float) -> Tensor:
    """Static time shift of SD3 (Esser et al. 2024): t' = s t / (1 + (s - 1) t)."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * ts / (1 + (shift - 1) * ts)


def dynamic_shift_times(ts: Tensor, mu: float, shift_type: str = "exponential") -> Tensor:
    """Resolution-dependent shift of Flux: e^mu / (e^mu + 1/t - 1) ("linear": mu / (mu + 1/t - 1))."""
    scale = math.exp(mu) if shift_type == "exponential" else float(mu)
    if shift_type not in ("exponential", "linear"):
        raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got {shift_type!r}")
    safe = ts.clamp(min=torch.finfo(_F64).tiny)
    shifted = scale / (scale + (1 / safe - 1))
    return torch.where(ts > 0, shifted, ts)


def apply_time_shift(ts: Tensor, shift: float | None, mu: float | None, shift_type: str = "exponential") -> Tensor:
    """Dynamic shift if `mu` is given, else the static `shift` (1 or None: unchanged)."""
    if mu is not None:
        return dynamic_shift_times(ts, mu, shift_type)
    if shift is not None and shift != 1.0:
        return shift_times(ts, shift)
    return ts


# ------------------------------------------------------------------- time-space grids


def diffusers_discrete_timesteps(
    num_train_timesteps: int,
    num_steps: int,
    spacing: TimestepSpacing = "linspace",
    steps_offset: int = 0,
    last_timestep: int | None = None,
) -> Tensor:
    """Integer timesteps [num_steps] of diffusers' DPMSolverMultistepScheduler for a spacing.

    `last_timestep` (default num_train_timesteps) is diffusers' clipped end: the grid starts at
    last_timestep - 1 (`lambda_min_clipped`).
    """
    n_train = num_train_timesteps
    last = n_train if last_timestep is None else int(last_timestep)
    if spacing == "linspace":
        # np.linspace(0, last - 1, num_steps + 1) computes i * step; do the same.
        k = torch.arange(num_steps + 1, dtype=_F64) * ((last - 1) / num_steps)
        return k.round().flip(0)[:-1]
    if spacing == "leading":
        ratio = last // (num_steps + 1)
        return (torch.arange(num_steps + 1, dtype=_F64) * ratio).round().flip(0)[:-1] + steps_offset
    if spacing == "trailing":
        ratio = n_train / num_steps
        return (torch.arange(float(last), 0, -ratio, dtype=_F64)).round() - 1
    raise ValueError(f"unknown timestep_spacing {spacing!r}; valid: 'linspace', 'leading', 'trailing'")


def uniform(
    path: NoisePath,
    num_steps: int,
    final: Final = "zero",
    *,
    t_max: float = 1.0,
    shift: float | None = None,
    mu: float | None = None,
    shift_type: str = "exponential",
    timestep_spacing: TimestepSpacing = "linspace",
    steps_offset: int = 0,
) -> Tensor:
    """Time-uniform grid (DDIM); on a discrete path, diffusers' integer timesteps for `timestep_spacing`.

    On a discrete path `t_max` < 1 starts the grid at timestep round(t_max N) - 1, as diffusers'
    `lambda_min_clipped` does, and repeated timesteps (num_steps >= N) are dropped: the grid then
    has fewer than num_steps steps.
    """
    check_num_steps(num_steps)
    if isinstance(path, DiscreteVPPath) and shift is None and mu is None:
        n_train = path.num_train_timesteps
        last = round(t_max * n_train)
        k = diffusers_discrete_timesteps(n_train, num_steps, timestep_spacing, steps_offset, last)
        k = torch.unique_consecutive(k.clamp(0, n_train - 1))
        return _with_final(torch.cat([(k + 1) / n_train, k.new_zeros(1)]), path, final)
    ts = torch.linspace(t_max, path.t_min, num_steps + 1, dtype=_F64)
    return _finish_time_space(ts, path, final, shift, mu, shift_type)


def _finish_time_space(ts: Tensor, path: NoisePath, final: Final, shift, mu, shift_type: str) -> Tensor:
    """Shift (flows), snap to the model's timesteps (DDPM), then set the final point."""
    return _with_final(path.snap(apply_time_shift(ts, shift, mu, shift_type)), path, final)


def quadratic(
    path: NoisePath,
    num_steps: int,
    final: Final = "zero",
    *,
    t_max: float = 1.0,
    shift: float | None = None,
    mu: float | None = None,
    shift_type: str = "exponential",
) -> Tensor:
    """Time-quadratic grid of DPM-Solver (Lu et al. 2022): sqrt(t) uniform; denser near data."""
    check_num_steps(num_steps)
    ts = torch.linspace(math.sqrt(t_max), math.sqrt(path.t_min), num_steps + 1, dtype=_F64) ** 2
    return _finish_time_space(ts, path, final, shift, mu, shift_type)


def flow_shift(
    path: NoisePath,
    num_steps: int,
    final: Final = "zero",
    *,
    t_max: float = 1.0,
    shift: float | None = 3.0,
    mu: float | None = None,
    shift_type: str = "exponential",
) -> Tensor:
    """Uniform grid pushed towards noise by the SD3 static shift (or Flux's dynamic shift `mu`)."""
    if shift is None and mu is None:
        raise ValueError("flow_shift needs `shift` (e.g. 3.0) or `mu` (dynamic shifting)")
    return uniform(path, num_steps, final, t_max=t_max, shift=shift, mu=mu, shift_type=shift_type)


# ------------------------------------------------------------------- sigma-space grids


def _lam_ends(path: NoisePath, t_max: float | None) -> tuple[Tensor, Tensor]:
    """log-SNR at the noisy and the clean finite ends of the path."""
    t_start = path.t_hi_finite if t_max is None else min(t_max, path.t_hi_finite)
    return path.lam(t_start), path.lam(path.t_lo_finite)


def _finish_sigma_space(path: NoisePath, ts: Tensor, final: Final, t_max: float | None) -> Tensor:
    """Start at pure noise (t = 1) when the finite log-SNR end is below it (flows); append the final point."""
    if t_max is None and path.t_hi_finite < 1.0:
        ts = torch.cat([ts.new_ones(1), ts[1:]])
    if final == "zero":
        return torch.cat([ts, ts.new_zeros(1)])
    if final == "t_min":
        return ts
    raise ValueError(f"final must be 'zero' or 't_min', got {final!r}")


def logsnr(path: NoisePath, num_steps: int, final: Final = "zero", *, t_max: float | None = None) -> Tensor:
    """logSNR-uniform grid (DPM-Solver's recommendation for small images); = k-diffusion 'exponential'."""
    check_num_steps(num_steps)
    count = num_steps if final == "zero" else num_steps + 1
    lam_start, lam_end = _lam_ends(path, t_max)
    if count == 1:
        lams = lam_start.reshape(1)
    else:
        lams = torch.linspace(float(lam_start), float(lam_end), count, dtype=_F64)
    return _finish_sigma_space(path, path.t_of_lam(lams), final, t_max)


def karras(
    path: NoisePath, num_steps: int, final: Final = "zero", *, rho: float = 7.0, t_max: float | None = None
) -> Tensor:
    """Karras et al. (2022) grid: sigma^(1/rho) uniform in the VE sigma = sigma/alpha = exp(-lam)."""
    check_num_steps(num_steps)
    if rho <= 0:
        raise ValueError(f"rho must be positive, got {rho}")
    count = num_steps if final == "zero" else num_steps + 1
    lam_start, lam_end = _lam_ends(path, t_max)
    sigma_max, sigma_min = float(torch.exp(-lam_start)), float(torch.exp(-lam_end))
    ramp = torch.linspace(0, 1, count, dtype=_F64) if count > 1 else torch.zeros(1, dtype=_F64)
    inv_rho = 1.0 / rho
    sigmas = (sigma_max**inv_rho + ramp * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return _finish_sigma_space(path, path.t_of_lam(-torch.log(sigmas)), final, t_max)


def explicit(path: NoisePath, ts: Tensor | list[float]) -> Tensor:
    """A user-supplied grid (BOSS, LSD+ or any spec): validated, used as is."""
    return validate_grid(ts)


# ------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ScheduleInfo:
    """A named schedule: its function and whether it spaces times or log-SNRs."""

    fn: Callable[..., Tensor]
    space: Literal["time", "sigma"]
    summary: str


SCHEDULES: dict[str, ScheduleInfo] = {
    "uniform": ScheduleInfo(uniform, "time", "time-uniform (DDIM / diffusers 'linspace')"),
    "quadratic": ScheduleInfo(quadratic, "time", "time-quadratic (DPM-Solver)"),
    "flow_shift": ScheduleInfo(flow_shift, "time", "uniform + SD3/Flux time shift"),
    "logsnr": ScheduleInfo(logsnr, "sigma", "logSNR-uniform (DPM-Solver)"),
    "exponential": ScheduleInfo(logsnr, "sigma", "= logsnr (k-diffusion's name: log sigma uniform)"),
    "karras": ScheduleInfo(karras, "sigma", "Karras et al. rho = 7"),
}


def available_schedules() -> list[str]:
    """Names accepted by `get_schedule` (plus 'explicit', which needs `ts`)."""
    return sorted(SCHEDULES) + ["explicit"]


def get_schedule(name: str, path: NoisePath, num_steps: int | None = None, **kwargs) -> Tensor:
    """Grid `ts` [num_steps + 1] for schedule `name` on `path` (see module docstring)."""
    if name == "explicit":
        if "ts" not in kwargs:
            raise ValueError("schedule 'explicit' needs ts=[t_0 > t_1 > ... ] (e.g. from a sampler spec)")
        return explicit(path, kwargs["ts"])
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {available_schedules()}")
    if num_steps is None:
        raise ValueError(f"schedule {name!r} needs num_steps")
    info = SCHEDULES[name]
    # options of other schedule families (rho, shift, spacing, ...) do not apply: drop them
    accepted = inspect.signature(info.fn).parameters
    options = {key: value for key, value in kwargs.items() if key in accepted}
    return validate_grid(info.fn(path, num_steps, **options))
