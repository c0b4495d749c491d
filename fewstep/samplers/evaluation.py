"""Solver accuracy against the exact ODE solution of an analytic Gaussian mixture.

Used by `fewstep solvers` and scripts/bench_solvers.py: every (solver, schedule, NFE budget)
integrates the same noise with the mixture's exact denoiser, and the error is the RMS
distance to the exact probability-flow ODE endpoint (RK4 in log-SNR, 600 steps, float64).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from torch import Tensor

from .denoiser import DenoiserLike
from .mixture import GaussianMixture
from .paths import DiscreteVPPath, NoisePath, RectifiedFlowPath
from .sampling import reference_solution, sample
from .schedules import get_schedule
from .solvers import get_solver

#: the clean end of the reference integration: lam = 12 (sigma/alpha ~ 6e-6), then x0_hat.
_REFERENCE_LAM_END = 12.0


def benchmark_mixture(dim: int = 16, num_components: int = 8, std: float = 0.2, seed: int = 0) -> GaussianMixture:
    """The default analytic test problem: 8 well separated isotropic modes in 16-D."""
    return GaussianMixture.random(num_components, dim, std=std, seed=seed, scale=1.0)


def benchmark_path(kind: str) -> NoisePath:
    """"vp" = Stable Diffusion-like DDPM (linear betas, 1000 steps); "flow" = rectified flow."""
    if kind == "vp":
        return DiscreteVPPath.from_betas("linear")
    if kind == "flow":
        return RectifiedFlowPath()
    raise ValueError(f"unknown path {kind!r}; valid: 'vp', 'flow'")


def exact_endpoint(denoiser: DenoiserLike, x: Tensor, t_start: float = 1.0, num_steps: int = 600) -> Tensor:
    """The exact ODE solution at t = 0 from x at t_start (to 1e-6 or so): RK4 to lam = 12, then x0_hat."""
    path = denoiser.path
    if not bool(torch.isfinite(path.lam(torch.tensor(t_start, dtype=torch.float64)))):
        # alpha = 0 (a flow at t = 1): a first-order step to 1 - 1e-4 (error ~1e-8), then RK4
        t_next = torch.tensor(t_start - 1e-4, dtype=torch.float64)
        alpha_n, sigma_n = path.alpha_sigma(t_next)
        x = sigma_n * x + alpha_n * denoiser(x, torch.tensor(t_start, dtype=torch.float64))
        t_start = float(t_next)
    t_end = float(path.t_of_lam(torch.tensor(_REFERENCE_LAM_END, dtype=torch.float64)))
    x_end = reference_solution(denoiser, x, t_start, t_end, num_steps=num_steps)
    return denoiser(x_end, torch.tensor(t_end, dtype=torch.float64))


def steps_for_budget(solver_name: str, nfe: int, path: NoisePath | None = None) -> int:
    """Largest step count whose NFE (the last step to t = 0 costs one evaluation) fits the budget.

    dpmpp_fast spends the budget exactly: its grid from t = 1 to 0 has the step count of its order
    split, plus the first-order steps (to t = 0; from t = 1 on a flow, where alpha = 0 — `path`).
    """
    solver = get_solver(solver_name)
    if solver.fast:
        start_infinite = path is not None and not bool(torch.isfinite(path.lam(torch.tensor(1.0, dtype=torch.float64))))
        return solver.num_steps_for(nfe, first_order_steps=1 + int(start_infinite))
    return max(1, (nfe - 1) // solver.evals_per_step + 1)


def budget_solver(solver_name: str, nfe: int):
    """The solver for one NFE budget (dpmpp_fast is told its budget; the others do not need it)."""
    solver = get_solver(solver_name)
    return get_solver(solver_name, nfe=nfe) if solver.fast else solver


@dataclass
class ErrorRow:
    """One measurement: RMS error per coordinate of the final sample vs the exact endpoint."""

    path: str
    solver: str
    schedule: str
    nfe_budget: int
    nfe: int
    rmse: float


def rmse(a: Tensor, b: Tensor) -> float:
    """Root mean squared difference over all coordinates."""
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def solver_errors(
    path_kind: str,
    solvers: Iterable[str],
    schedules: Iterable[str],
    nfes: Iterable[int],
    num_samples: int = 256,
    seed: int = 0,
    mixture: GaussianMixture | None = None,
) -> list[ErrorRow]:
    """Error table for every solver x schedule x NFE budget on one path (same noise for all)."""
    path = benchmark_path(path_kind)
    mixture = mixture or benchmark_mixture()
    denoiser = mixture.denoiser(path)
    noise = torch.randn(num_samples, mixture.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    target = exact_endpoint(denoiser, noise, 1.0)
    rows = []
    for solver_name in solvers:
        for schedule in schedules:
            for budget in nfes:
                ts = get_schedule(schedule, path, steps_for_budget(solver_name, budget, path), final="zero")
                out = sample(denoiser, noise, ts, budget_solver(solver_name, budget))
                rows.append(ErrorRow(path_kind, solver_name, schedule, budget, out.nfe, rmse(out.x, target)))
    return rows


def rows_as_dicts(rows: list[ErrorRow]) -> list[dict]:
    """JSON-friendly rows."""
    return [asdict(row) for row in rows]
