"""Log-linear masking path for absorbing (masked) discrete diffusion (SEDD, Lou et al. 2024; MDLM, Sahoo et al. 2024).

Convention (as for the continuous paths): t = 0 is data, t = 1 is (almost) all masked.
Each token is masked independently with total noise `sigma_bar(t) = -log(1 - (1 - eps) t)`, so

    m(t) = P(token masked at t) = 1 - exp(-sigma_bar(t)) = (1 - eps) t      (linear in t)

The concrete score of unmasking a masked token into value v is
`s(x, t)[i, v] = (1 - m) / m * p0(v | x)` and the reverse jump rate is `dsigma(t) * s`, whose
total over v is `unmask_rate(t) = dsigma(t) (1 - m) / m = (1 - eps) / m(t) = 1 / t`.
The mask token id is `vocab_size` (one past the real tokens). All times are float64.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_F64 = torch.float64


def _as_t(t: Tensor | float) -> Tensor:
    return t.to(_F64) if isinstance(t, Tensor) else torch.tensor(float(t), dtype=_F64)


class LogLinearMaskPath:
    """Absorbing path with m(t) = (1 - eps) t; `eps` keeps sigma_bar(1) = -log(eps) finite (SEDD default 1e-3)."""

    kind = "masked_loglinear"

    def __init__(self, eps: float = 1e-3) -> None:
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must lie in [0, 1), got {eps}")
        self.eps = float(eps)

    def mask_prob(self, t: Tensor | float) -> Tensor:
        """m(t) = (1 - eps) t: probability that a token is masked at time t."""
        return (1.0 - self.eps) * _as_t(t)

    def sigma_bar(self, t: Tensor | float) -> Tensor:
        """Total noise sigma_bar(t) = -log(1 - (1 - eps) t)."""
        return -torch.log1p(-self.mask_prob(t))

    def dsigma(self, t: Tensor | float) -> Tensor:
        """d sigma_bar / dt = (1 - eps) / (1 - (1 - eps) t)."""
        return (1.0 - self.eps) / (1.0 - self.mask_prob(t))

    def score_scale(self, t: Tensor | float) -> Tensor:
        """(1 - m) / m: the concrete score is this times p0(v | x_t)."""
        m = self.mask_prob(t)
        return (1.0 - m) / m

    def unmask_rate(self, t: Tensor | float) -> Tensor:
        """Total reverse rate out of the mask state, dsigma (1 - m) / m = (1 - eps) / m(t)."""
        return (1.0 - self.eps) / self.mask_prob(t)

    def to_config(self) -> dict[str, Any]:
        """JSON-able description (stored in sampler specs)."""
        return {"kind": self.kind, "eps": self.eps}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LogLinearMaskPath":
        """Inverse of `to_config`."""
        if config.get("kind") != cls.kind:
            raise ValueError(f"path config {config} is not a {cls.kind} path")
        return cls(eps=float(config["eps"]))

    def __repr__(self) -> str:
        return f"LogLinearMaskPath(eps={self.eps})"


def validate_discrete_grid(ts: Tensor) -> Tensor:
    """Check a sampling grid [M + 1]: float, strictly decreasing from <= 1 to exactly 0 (all masks resolved)."""
    ts = torch.as_tensor(ts).to(_F64)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"a grid needs at least 2 times in a 1-D tensor, got shape {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError("the grid contains NaN or inf")
    if float(ts[0]) > 1.0 or float(ts[-1]) != 0.0:
        raise ValueError(f"a masked-diffusion grid runs from t <= 1 down to exactly 0; got {float(ts[0]):.6g} -> {float(ts[-1]):.6g}")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("grid must be strictly decreasing (masked -> data)")
    return ts


def uniform_grid(num_steps: int, t_start: float = 1.0) -> Tensor:
    """Time-uniform grid [num_steps + 1] from t_start down to 0 (float64)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.linspace(t_start, 0.0, num_steps + 1, dtype=_F64)


def ts_from_kappa(kappa: Tensor, t_start: float = 1.0) -> Tensor:
    """Grid [M + 1] from step sizes kappa [M] (LSD+): ts[k+1] = ts[k] - kappa[k]; the last point is pinned to 0.

    Differentiable in kappa except for the pinned end (sum(kappa) must equal t_start).
    """
    inner = t_start - torch.cumsum(kappa.to(_F64), 0)[:-1]
    return torch.cat([torch.tensor([t_start], dtype=_F64), inner, torch.zeros(1, dtype=_F64)])


def kappa_from_ts(ts: Tensor) -> Tensor:
    """Step sizes kappa [M] = ts[:-1] - ts[1:]."""
    return ts[:-1] - ts[1:]


def teacher_grid(student_ts: Tensor, teacher_steps: int) -> Tensor:
    """Teacher grid [N + 1] containing the student's [M + 1]: each student step cut into N / M equal sub-steps."""
    num_steps = student_ts.numel() - 1
    if teacher_steps <= num_steps:
        raise ValueError(f"the teacher needs more steps than the student (N > M), got N={teacher_steps}, M={num_steps}")
    if teacher_steps % num_steps:
        raise ValueError(f"teacher steps N={teacher_steps} must be a multiple of student steps M={num_steps} "
                         f"so that its grid contains the student's; try N={num_steps * max(2, teacher_steps // num_steps)}")
    r = teacher_steps // num_steps
    frac = torch.arange(r, dtype=_F64) / r  # [r]
    starts, sizes = student_ts[:-1, None], (student_ts[:-1] - student_ts[1:])[:, None]
    return torch.cat([(starts - frac * sizes).reshape(-1), student_ts[-1:]])


def check_contains(teacher_ts: Tensor, student_ts: Tensor, atol: float = 1e-12) -> Tensor:
    """Indices [M + 1] of the student's grid points inside the teacher's grid; ValueError if one is missing."""
    diff = (teacher_ts[None, :] - student_ts[:, None]).abs()
    dist, index = diff.min(dim=1)
    if bool((dist > atol).any()):
        k = int(torch.nonzero(dist > atol)[0])
        raise ValueError(f"the teacher grid does not contain the student's time ts[{k}]={float(student_ts[k]):.6g}; "
                         "build it with teacher_grid(student_ts, N) (N a multiple of M)")
    return index
