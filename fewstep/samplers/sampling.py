"""The one sampling loop: any denoiser, any grid, any solver; counts NFE; differentiable.

There is deliberately no `torch.no_grad()` here: learning a grid or solver coefficients
back-propagates through this loop. Wrap the call in `torch.no_grad()` for plain sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

from .denoiser import DenoiserLike
from .schedules import validate_grid
from .solvers import Solver, get_solver
from .update import MultistepState, apply_update, combine


class SampleOutput(NamedTuple):
    """The final sample (same shape and dtype as the input noise) and the model evaluations used."""

    x: Tensor
    nfe: int


@dataclass
class StepInfo:
    """What a callback sees after step i: x is the new state at t_next, x0_hat the step's first prediction.

    With a corrector (UniPC), x is the predictor's state; the corrector replaces it at the next
    step, once x0_hat there is known (diffusers' prev_sample is the same uncorrected state).
    """

    i: int
    t: float
    t_next: float
    x: Tensor
    x0_hat: Tensor
    nfe: int


def sample(
    denoiser: DenoiserLike,
    x: Tensor,
    ts: Tensor,
    solver: Solver | str = "dpmpp_2m",
    coeffs: Tensor | list[Tensor] | None = None,
    callback: Callable[[StepInfo], Any] | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    eval_ts: Tensor | None = None,
    **cond: Any,
) -> SampleOutput:
    """Integrate from x at ts[0] down the grid ts [n + 1] with `solver`; x may have any shape [B, ...].

    `coeffs` ([n, max_order] or a list of per-step tensors) replaces the solver's analytic
    weights (learned samplers). `eval_ts` [n] (multistep solvers) decouples the time the model
    is told from the grid: step i evaluates the denoiser at eval_ts[i] instead of ts[i] (LD3's
    decoupled time steps, Tong et al. 2024); the step itself still runs ts[i] -> ts[i+1].
    `cond` is passed to the denoiser (class labels, embeddings). The update arithmetic runs in
    at least float32; the result is cast back to x's dtype.
    """
    solver = get_solver(solver) if isinstance(solver, str) else solver
    ts = validate_grid(ts)
    if coeffs is not None and len(coeffs) != ts.numel() - 1:
        raise ValueError(f"coeffs has {len(coeffs)} rows for {ts.numel() - 1} steps; fit it for this step count")
    check_eval_ts(eval_ts, ts, solver)
    plans = solver.plan(ts, denoiser.path)
    out_dtype = x.dtype
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    nfe = 0

    def denoise(x_in: Tensor, t: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        return solver.process_x0(denoiser(x_in, t, **cond).to(x_in.dtype))

    state = MultistepState(solver.history_size)
    steps = range(len(plans))
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"{solver.name}", unit="step")
    for i in steps:
        plan = plans[i]
        x0_hat = denoise(x, plan.t if eval_ts is None else eval_ts[i])
        update = plan.update(None if coeffs is None else coeffs[i])
        if plan.stages:  # singlestep solvers evaluate their intermediate points
            ms = [x0_hat]
            for stage in plan.stages:
                ms.append(denoise(combine(stage.x_coef, x, stage.m_coefs, ms), stage.t))
            x = apply_update(update, x, ms, generator)
        else:
            x = state.step(update, x, x0_hat, generator, corrector=plan.corrector)
        if callback is not None:
            callback(StepInfo(i, float(plan.t), float(plan.t_next), x, x0_hat, nfe))
    return SampleOutput(x.to(out_dtype), nfe)


def check_eval_ts(eval_ts: Tensor | None, ts: Tensor, solver: Solver) -> None:
    """Raise ValueError unless `eval_ts` is None or [n] finite times in (0, 1] for a multistep solver."""
    if eval_ts is None:
        return
    if solver.kind != "multistep":
        raise ValueError(f"eval_ts (decoupled evaluation times) needs a multistep solver, not {solver.name!r}")
    if eval_ts.ndim != 1 or eval_ts.numel() != ts.numel() - 1:
        raise ValueError(f"eval_ts has shape {tuple(eval_ts.shape)}; need one time per step, [{ts.numel() - 1}]")
    if not bool(torch.isfinite(eval_ts).all()) or bool((eval_ts <= 0).any()) or bool((eval_ts > 1).any()):
        raise ValueError(f"eval_ts must be finite times in (0, 1], got {eval_ts.tolist()}")


def reference_solution(
    denoiser: DenoiserLike, x: Tensor, t_start: float, t_end: float, num_steps: int = 2000, **cond: Any
) -> Tensor:
    """High-accuracy solution of the probability-flow ODE from t_start to t_end > 0 (classic RK4).

    Integrates y = x / sigma over lam, dy/dlam = e^lam x0_hat(sigma y, t(lam)), in float64 —
    a method independent of the DPM-Solver family, used as ground truth in tests/benchmarks.
    """
    path = denoiser.path
    lam_start, lam_end = path.lam(torch.tensor(t_start)), path.lam(torch.tensor(t_end))
    if not (torch.isfinite(lam_start) and torch.isfinite(lam_end)):
        raise ValueError("reference_solution needs 0 < sigma and 0 < alpha at both ends; use t in (0, 1)")
    h = (lam_end - lam_start) / num_steps
    _, sigma0 = path.alpha_sigma(torch.tensor(t_start))
    y = x.to(torch.float64) / sigma0

    def f(lam: Tensor, y: Tensor) -> Tensor:
        t = path.t_of_lam(lam)
        sigma = path.alpha_sigma(t)[1]
        return torch.exp(lam) * denoiser(sigma * y, t, **cond).to(torch.float64)

    lam = lam_start
    for _ in range(num_steps):
        k1 = f(lam, y)
        k2 = f(lam + h / 2, y + h / 2 * k1)
        k3 = f(lam + h / 2, y + h / 2 * k2)
        k4 = f(lam + h, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        lam = lam + h
    return (path.alpha_sigma(torch.tensor(t_end))[1] * y).to(x.dtype)
