"""Learned few-step samplers: fit a solver's time grid and/or per-step weights to a many-step teacher.

The continuous counterpart of LSD / LSD+ (Fu et al. 2025), in the spirit of LD3 (learned time
steps) and S4S (learned solver coefficients): the M-step student `sample(denoiser, x_T, ts,
solver, coeffs)` is differentiable in `ts` and `coeffs`, so both are fitted by Adam to match the
teacher's many-step output from the same noise. Optionally the student starts from a small
random ball around the teacher's noise (LD3's relaxation), which regularises the fit.

Grid parameterisation: the interior points are placed in log-SNR between the path's finite
ends by a softmax over M increments, so the grid stays strictly decreasing; the first point
(t = 1) and the last (t = 0) are fixed. Weights are the analytic DPM-Solver++ weights of the
current grid plus a learned correction that starts at zero. Evaluation times (optional,
LD3's "decoupled" time steps, Tong et al. 2024): step k asks the model about time t'_k whose
log-SNR is lam(t_k) + delta_k, delta starting at zero, while the solver still steps t_k -> t_{k+1}.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .denoiser import DenoiserLike
from .paths import NoisePath
from .sampling import sample
from .schedules import get_schedule
from .solvers import Solver, available_solvers, get_solver
from .spec import SamplerSpec


class LearnedGrid(nn.Module):
    """A strictly decreasing grid [M + 1] from t_start to 0 with learnable interior log-SNRs."""

    def __init__(self, path: NoisePath, init_ts: Tensor, learn: bool = True):
        super().__init__()
        self.path = path
        init_ts = init_ts.to(torch.float64)
        if float(init_ts[-1]) != 0.0:
            raise ValueError("learned grids end at t = 0 (final='zero'); build the initial grid with final='zero'")
        self.t_start = float(init_ts[0])
        self.lam_lo = float(path.lam(torch.tensor(path.t_hi_finite, dtype=torch.float64)))
        # one unit of log-SNR beyond the smallest trained time, so no interior point is pinned there
        self.lam_hi = float(path.lam(torch.tensor(path.t_lo_finite, dtype=torch.float64))) + 1.0
        interior = path.lam(init_ts[1:-1]).clamp(self.lam_lo, self.lam_hi)
        knots = torch.cat([torch.tensor([self.lam_lo], dtype=torch.float64), interior, torch.tensor([self.lam_hi], dtype=torch.float64)])
        increments = knots.diff().clamp(min=1e-4)
        self.logits = nn.Parameter(torch.log(increments), requires_grad=learn)

    def forward(self) -> Tensor:
        """The grid ts [M + 1] (differentiable in the interior points)."""
        fractions = torch.cumsum(torch.softmax(self.logits, dim=0), dim=0)[:-1]
        lams = self.lam_lo + fractions * (self.lam_hi - self.lam_lo)
        start = torch.tensor([self.t_start], dtype=torch.float64)
        return torch.cat([start, self.path.t_of_lam(lams), torch.zeros(1, dtype=torch.float64)])


class LearnedWeights(nn.Module):
    """Per-step weights = analytic weights of the current grid + a learned correction [M, order]."""

    def __init__(self, solver: Solver, num_steps: int, learn: bool = True):
        super().__init__()
        self.solver = solver
        self.delta = nn.Parameter(torch.zeros(num_steps, solver.order, dtype=torch.float64), requires_grad=learn)

    def forward(self, ts: Tensor, path: NoisePath) -> Tensor:
        """Weights [M, order] (rows padded with zeros beyond each step's order)."""
        rows = []
        for i, plan in enumerate(self.solver.plan(ts, path)):
            row = torch.zeros(self.solver.order, dtype=torch.float64)
            row = row.index_put((torch.arange(plan.order),), plan.weights + self.delta[i, : plan.order])
            rows.append(row)
        return torch.stack(rows)


class LearnedEvalTimes(nn.Module):
    """Model evaluation times [M]: the grid's times shifted by learned log-SNR offsets (zero at start)."""

    def __init__(self, path: NoisePath, num_steps: int, learn: bool = True):
        super().__init__()
        self.path = path
        self.delta = nn.Parameter(torch.zeros(num_steps, dtype=torch.float64), requires_grad=learn)

    def forward(self, ts: Tensor) -> Tensor:
        """eval_ts [M] for the grid ts [M + 1]; exactly ts[:-1] while every offset is zero."""
        t = ts[:-1].clamp(self.path.t_lo_finite, self.path.t_hi_finite)
        lam = self.path.lam(t)
        ratio = self.path.t_of_lam(lam + self.delta) / self.path.t_of_lam(lam)  # exactly 1 at delta = 0
        return (ts[:-1] * ratio).clamp(max=1.0)


@dataclass
class FitHistory:
    """Training curve and held-out errors (RMS over coordinates) before and after fitting."""

    losses: list[float] = field(default_factory=list)
    heldout_before: float = math.nan
    heldout_after: float = math.nan
    validation_before: float = math.nan  # of the analytic starting point (loss_fn on the held-back pairs)
    validation_error: float = math.nan  # of the kept sampler (loss_fn on the held-back pairs)
    #: whether the kept sampler beat the starting point (on the validation pairs; without a
    #: validation split: whether any iteration ran). False -> the spec is the unfitted start.
    improved: bool = False
    seconds: float = 0.0
    stopped_early: str = ""


def fittable_solvers() -> list[str]:
    """Solvers whose grid and weights `fit_sampler` learns: the deterministic multistep ones."""
    return available_solvers(kind="multistep", stochastic=False)


def teacher_outputs(
    denoiser: DenoiserLike, noise: Tensor, teacher_steps: int, teacher_solver: str = "dpmpp_3m", batch_size: int = 256, **cond: Any
) -> Tensor:
    """The teacher's many-step samples for `noise` [N, ...] (logSNR grid, no gradient)."""
    ts = get_schedule("logsnr", denoiser.path, teacher_steps)
    outs = []
    with torch.no_grad():
        for start in range(0, noise.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            outs.append(sample(denoiser, noise[sl], ts, teacher_solver, **{k: v[sl] for k, v in cond.items()}).x)
    return torch.cat(outs)


def _rms(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def check_time_gradient(denoiser: DenoiserLike, noise: Tensor, targets: Tensor, cond: dict[str, Tensor], what: str) -> None:
    """Raise ValueError unless the denoiser's output depends differentiably on t (probed once at t = 0.5).

    Learning a grid or evaluation times back-propagates through the model's time input; a
    denoiser that turns t into a Python float (or detaches it) gives no gradient, and the fit
    then wanders blindly (measured: loss 0.009 -> 1.8) while looking like it trains.
    """
    t = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    n = min(2, noise.shape[0])
    with torch.enable_grad():
        alpha, sigma = denoiser.path.alpha_sigma(t.detach())
        x = alpha.to(targets) * targets[:n] + sigma.to(noise) * noise[:n]
        out = denoiser(x, t, **{k: v[:n] for k, v in cond.items()})
        grad = None
        if out.requires_grad:
            probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            (grad,) = torch.autograd.grad((out.double() * probe.to(out.device)).sum(), t, allow_unused=True)
    if grad is None or not bool(torch.isfinite(grad)) or float(grad) == 0.0:
        found = "no gradient" if grad is None else f"a gradient of {float(grad):.3g}"
        raise ValueError(
            f"learning the {what} needs the denoiser's output to depend differentiably on t, but d output / d t at "
            f"t = 0.5 has {found}: the model (or a wrapper) most likely converts t to a Python float or detaches it. "
            f"Keep t a tensor through the model, or learn the solver weights only (learn='weights'; "
            f"`fewstep fit-sampler --learn weights` without --eval-times)"
        )


def _heldout_conditioning(heldout: tuple | None, cond: dict[str, Tensor]) -> dict[str, Tensor]:
    """The held-out noises' own conditioning (third element of `heldout`); required when `cond` is given."""
    if heldout is None:
        return {}
    if len(heldout) > 2:
        return dict(heldout[2])
    if cond:
        raise ValueError("heldout=(noise, targets) needs the held-out noises' own conditioning when cond is given: "
                         "pass heldout=(noise, targets, {'class_labels': labels_of_those_noises})")
    return {}


def fit_sampler(
    denoiser: DenoiserLike,
    num_steps: int,
    noise: Tensor,
    targets: Tensor,
    solver: str = "dpmpp_2m",
    learn: str = "both",
    init_schedule: str = "logsnr",
    iterations: int = 300,
    batch_size: int = 64,
    lr_grid: float = 0.05,
    lr_weights: float = 0.01,
    ball_radius: float = 0.0,
    heldout: tuple[Tensor, Tensor] | tuple[Tensor, Tensor, dict[str, Tensor]] | None = None,
    seed: int = 0,
    cond: dict[str, Tensor] | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    progress: bool = False,
    validation_fraction: float = 0.25,
    validate_every: int = 20,
    learn_eval_times: bool = False,
    lr_eval_times: float = 0.02,
) -> tuple[SamplerSpec, FitHistory]:
    """Fit an M-step sampler to teacher samples `targets` from `noise` [N, ...]; returns a spec and history.

    `heldout` = (noise, targets[, cond]) is scored before and after (never trained on or selected by).
    learn: "grid" (LD3-like), "weights" (S4S-like) or "both" (LSD+-like); `learn_eval_times` also
    decouples each step's model evaluation time from the grid (LD3's decoupling). A `validation_fraction`
    of the pairs is held back; every `validate_every` iterations the sampler with the lowest
    validation error so far is kept (the analytic starting point included), so fitting never
    returns something worse than where it started on data it did not train on.
    """
    if learn not in ("grid", "weights", "both"):
        raise ValueError(f"learn must be 'grid', 'weights' or 'both', got {learn!r}")
    if noise.shape != targets.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and targets {tuple(targets.shape)} must have the same shape")
    cond = cond or {}
    path = denoiser.path
    solver_obj = get_solver(solver, lower_order_final=True)
    if solver_obj.name not in fittable_solvers():
        raise ValueError(f"fit_sampler learns multistep ODE solvers: {', '.join(fittable_solvers())}; got {solver!r}")
    grid = LearnedGrid(path, get_schedule(init_schedule, path, num_steps, final="zero"), learn=learn in ("grid", "both"))
    weights = LearnedWeights(solver_obj, num_steps, learn=learn in ("weights", "both"))
    eval_times = LearnedEvalTimes(path, num_steps, learn=learn_eval_times)
    modules = {"grid": grid, "weights": weights, "eval_times": eval_times}
    rates = {"grid": (grid.logits, lr_grid), "weights": (weights.delta, lr_weights), "eval_times": (eval_times.delta, lr_eval_times)}
    groups = [{"params": [param], "lr": lr} for param, lr in rates.values() if param.requires_grad]
    optimizer = torch.optim.Adam(groups)
    loss_fn = loss_fn or (lambda a, b: (a - b).pow(2).mean())
    generator = torch.Generator().manual_seed(seed)
    history = FitHistory()

    def student(x: Tensor, c: dict[str, Tensor]) -> Tensor:
        ts = grid()
        eval_ts = eval_times(ts) if learn_eval_times else None
        return sample(denoiser, x, ts, solver_obj, coeffs=weights(ts, path), eval_ts=eval_ts, **c).x

    heldout_cond = _heldout_conditioning(heldout, cond)
    learned_times = [name for name, on in (("time grid", learn in ("grid", "both")), ("evaluation times", learn_eval_times)) if on]
    if learned_times:
        check_time_gradient(denoiser, noise, targets, cond, " and ".join(learned_times))

    def evaluate() -> float:
        if heldout is None:
            return math.nan
        with torch.no_grad():
            return _rms(student(heldout[0], heldout_cond), heldout[1])

    history.heldout_before = evaluate()
    num_val = int(noise.shape[0] * validation_fraction) if noise.shape[0] >= 8 else 0
    val = slice(noise.shape[0] - num_val, noise.shape[0])
    noise, targets, val_noise, val_targets = noise[: val.start], targets[: val.start], noise[val], targets[val]
    val_cond, cond = {k: v[val] for k, v in cond.items()}, {k: v[: val.start] for k, v in cond.items()}

    def snapshot() -> dict[str, dict]:
        return {name: {k: v.detach().clone() for k, v in module.state_dict().items()} for name, module in modules.items()}

    def validation_error() -> float:
        if num_val == 0:
            return -float(len(history.losses))  # no validation split: keep the latest
        with torch.no_grad():
            return float(loss_fn(student(val_noise, val_cond), val_targets))

    best_state, best_val = snapshot(), validation_error()
    start_state, history.validation_before = best_state, (best_val if num_val else math.nan)
    last_good = best_state
    start = time.perf_counter()
    steps = range(iterations)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"fit {solver} ({learn}, M={num_steps})")
    for _ in steps:
        idx = torch.randint(0, noise.shape[0], (min(batch_size, noise.shape[0]),), generator=generator)
        x = noise[idx]
        if ball_radius > 0:
            x = x + ball_radius * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        loss = loss_fn(student(x, {k: v[idx] for k, v in cond.items()}), targets[idx])
        if not torch.isfinite(loss):
            history.stopped_early = f"non-finite loss at iteration {len(history.losses)}; kept the last good sampler"
            break
        optimizer.zero_grad()
        loss.backward()
        grads_ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for g in groups for p in g["params"])
        if not grads_ok:
            history.stopped_early = f"non-finite gradient at iteration {len(history.losses)}; kept the last good sampler"
            break
        last_good = snapshot()
        optimizer.step()
        history.losses.append(float(loss.detach()))
        if len(history.losses) % validate_every == 0 or len(history.losses) == iterations:
            error = validation_error()
            if error == error and error <= best_val:  # not NaN, and at least as good
                best_state, best_val = snapshot(), error
    if history.stopped_early and num_val == 0:
        best_state = last_good
    # "improved" means by more than round-off (1e-9 relative); otherwise return the start exactly
    history.improved = best_val < history.validation_before * (1 - 1e-9) if num_val else bool(history.losses)
    if not history.improved and num_val:
        best_state, best_val = start_state, history.validation_before
    for name, module in modules.items():
        module.load_state_dict(best_state[name])
    history.seconds = time.perf_counter() - start
    history.validation_error = best_val if num_val else math.nan
    history.heldout_after = evaluate()
    if not history.improved:
        import warnings

        seen = (f"validation error {history.validation_before:.4g} -> best {best_val:.4g}" if num_val
                else "no validation split and no completed iteration")
        warnings.warn(
            f"fit_sampler: fitting never beat the analytic starting point ({seen} over {len(history.losses)} "
            f"iteration(s){'; ' + history.stopped_early if history.stopped_early else ''}); the returned spec is the "
            f"unfitted {solver} on the {init_schedule} grid. Try more iterations, other learning rates, or learn "
            f"the weights only", stacklevel=2,
        )
    with torch.no_grad():
        ts = grid()
        coeffs = weights(ts, path)
        eval_ts = eval_times(ts) if learn_eval_times else None
    spec = SamplerSpec.from_grid(solver, ts, path, coeffs=coeffs, eval_ts=eval_ts, provenance={
        "method": "learned_sampler", "learn": learn, "learn_eval_times": learn_eval_times,
        "init_schedule": init_schedule, "iterations": len(history.losses),
        "ball_radius": ball_radius, "heldout_rmse_before": history.heldout_before,
        "heldout_rmse_after": history.heldout_after, "validation_before": history.validation_before,
        "validation_after": history.validation_error, "improved": history.improved,
        "fit_seconds": round(history.seconds, 2),
    })
    return spec, history
