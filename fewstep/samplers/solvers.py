"""Solvers as coefficient tables: DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095) and Heun.

Heun comes in two coordinate systems: `heun_edm` is EDM's Algorithm 1 (Karras et al. 2022) in
VE coordinates (x / alpha over sigma / alpha, = k-diffusion's `sample_heun`); `heun_flow` is the
same trapezoidal rule in rectified-flow coordinates (x / (alpha + sigma) over
sigma / (alpha + sigma)). `dpmpp_fast` is the reference DPM-Solver's "fast" singlestep method:
a budget of NFE evaluations split into 3S / 2S / 1 steps (`fast_step_orders`) so NFE is exact.

Every solver here is an exponential integrator in data prediction. One step from t to t'
(lam = log(alpha / sigma), h = lam' - lam) is

    x' = a x + b * sum_j w_j m_j  (+ c z for the SDE solver)

where m_j are x0_hat evaluations: for multistep solvers the history m_i, m_{i-1}, m_{i-2}
(newest first); for singlestep solvers the step's own stages m(x_i), m(x_s1), m(x_s2).
`a`, `b`, `c` and the analytic weights `w` depend only on the grid, so `plan()` computes them
once (differentiably, in float64); learned coefficients (LSD-style) replace `w`.

A step that lands on sigma = 0 (t = 0) is always first order: x' = x0_hat there
(h = inf, and no higher-order formula has a finite limit). A step starting at alpha = 0
(a flow at t = 1, lam = -inf) is first order too; its x0_hat still serves as history, placed
at the path's finite end lam(t_hi_finite) — what diffusers' flow grids do implicitly by
starting at t = 1 - 1/N (measured: 2M at 8 NFE on the flow benchmark, 0.128 -> 0.094 RMSE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .denoiser import dynamic_threshold
from .paths import NoisePath
from .update import StepUpdate


@dataclass
class Stage:
    """An intermediate evaluation point of a singlestep solver: x_s = a x + sum_j b_j m_j."""

    t: Tensor
    x_coef: Tensor
    m_coefs: Tensor  # [number of evaluations made so far in this step]


@dataclass
class StepPlan:
    """Coefficients of one step: x' = x_coef x + d_coef sum_j weights_j m_j + noise_coef z."""

    t: Tensor
    t_next: Tensor
    order: int
    x_coef: Tensor
    d_coef: Tensor
    weights: Tensor  # [order]; analytic weights sum to 1
    noise_coef: Tensor | None = None
    stages: list[Stage] = field(default_factory=list)
    #: applied to x' once x0_hat(x') is known, before the next step (UniC, `unipc.py`); None: no corrector
    corrector: StepUpdate | None = None

    @property
    def nfe(self) -> int:
        """Model evaluations this step makes (1 + its stages)."""
        return 1 + len(self.stages)

    def update(self, learned: Tensor | None = None) -> StepUpdate:
        """The step's update (x_coef, d_coef * weights, noise_coef); `learned` [>= order] replaces the weights."""
        weights = self.weights
        if learned is not None:
            if learned.numel() < self.order:
                raise ValueError(
                    f"learned weights for the step t = {float(self.t):.4g} -> {float(self.t_next):.4g} have "
                    f"{learned.numel()} entries; a step of order {self.order} needs {self.order}"
                )
            weights = learned[: self.order]
        return StepUpdate(self.x_coef, self.d_coef * weights, self.noise_coef)


def _phi1(h: Tensor) -> Tensor:
    """phi1(h) = expm1(-h); -1 at h = inf."""
    return torch.expm1(-h)


def _difference_weights(h: Tensor, stochastic: bool) -> tuple[Tensor, Tensor]:
    """(c1, c2): weights of D1 and D2 relative to D0's in DPM-Solver++ (ODE) or SDE-DPM-Solver++.

    ODE: c1 = phi2 / -phi1, c2 = phi3 / phi1 with phi1 = e^{-h} - 1, phi2 = phi1/h + 1,
    phi3 = phi2/h - 1/2. SDE (D0 weight alpha' v, v = 1 - e^{-2h}): c1 = (v/(-2h) + 1) / v,
    c2 = ((v - 2h)/(2h)^2 - 1/2) / v.
    """
    if stochastic:
        v = -torch.expm1(-2 * h)
        return (v / (-2 * h) + 1) / v, ((v - 2 * h) / (2 * h) ** 2 - 0.5) / v
    phi1 = _phi1(h)
    phi2 = phi1 / h + 1
    phi3 = phi2 / h - 0.5
    return -phi2 / phi1, phi3 / phi1


def _multistep_weights(
    order: int, h: Tensor, h0: Tensor | None, h1: Tensor | None, c1: Tensor | None = None, c2: Tensor | None = None
) -> Tensor:
    """DPM-Solver++ 1/2M/3M weights on (m_i, m_{i-1}, m_{i-2}) so that D = sum w_j m_j.

    D = m_i + c1 D1 (+ c2 D2) with diffusers' divided differences D1, D2 built from
    r0 = h0/h and r1 = h1/h; c1, c2 come from `_difference_weights` (2M "midpoint": c1 = 1/2).
    """
    one = torch.ones_like(h)
    if order == 1:
        return one.reshape(1)
    r0 = h0 / h
    if order == 2:
        return torch.stack([one + c1 / r0, -c1 / r0])
    r1 = h1 / h
    p = (c1 * (1 + r0 / (r0 + r1)) + c2 / (r0 + r1)) / r0
    q = (c1 * r0 + c2) / (r0 + r1) / r1
    return torch.stack([one + p, -p - q, q])


def history_lams(lams: Tensor, path: NoisePath) -> Tensor:
    """Log-SNRs at which past x0_hat are placed: -inf (alpha = 0) moves to lam(path.t_hi_finite)."""
    finite_end = path.lam(torch.tensor(path.t_hi_finite, dtype=torch.float64))
    return torch.where(torch.isneginf(lams), finite_end.to(lams), lams)


@dataclass
class Solver:
    """A named step rule and its options; `plan(ts, path)` returns per-step coefficients."""

    name: str
    kind: str  # "multistep" | "singlestep"
    order: int
    stochastic: bool = False
    lower_order_final: bool = True
    euler_at_final: bool = False
    thresholding: bool = False
    threshold_quantile: float = 0.995
    sample_max_value: float = 1.0
    #: 3M only: 1.0 = the reference/diffusers formula (globally 2nd order), 2.0 = Taylor-exact.
    d2_scale: float = 1.0
    #: 2M only: "midpoint" or "heun" weighting of the first difference (diffusers' solver_type).
    solver_type: str = "midpoint"
    #: Heun solvers only: the coordinates of the trapezoidal rule, "edm" (VE) or "flow".
    heun: str | None = None
    #: dpmpp_fast: per-step orders split the NFE budget `nfe` as the reference DPM-Solver-fast does.
    fast: bool = False
    #: dpmpp_fast only: the NFE budget (None: the largest budget the grid's step count allows).
    nfe: int | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        if self.solver_type not in ("midpoint", "heun"):
            raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {self.solver_type!r}")
        if self.heun not in (None, "edm", "flow"):
            raise ValueError(f"heun must be 'edm' or 'flow', got {self.heun!r}")
        if self.nfe is not None and not self.fast:
            raise ValueError(f"nfe= (an NFE budget split into steps) is an option of dpmpp_fast, not of {self.name!r}")
        if self.nfe is not None and self.nfe < 1:
            raise ValueError(f"nfe must be at least 1, got {self.nfe}")

    @property
    def evals_per_step(self) -> int:
        """Model evaluations per (non-final) step."""
        return 1 if self.kind == "multistep" else (2 if self.heun else self.order)

    @property
    def history_size(self) -> int:
        """x0_hat evaluations a multistep state keeps (the order; one more with a corrector)."""
        return self.order

    def process_x0(self, x0: Tensor) -> Tensor:
        """Apply the x0_hat options (dynamic thresholding) to a denoiser output."""
        if self.thresholding:
            return dynamic_threshold(x0, self.threshold_quantile, self.sample_max_value)
        return x0

    def _difference_weights(self, order: int, h: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(c1, c2) for a multistep step of this order (see `_difference_weights`).

        2M with solver_type "midpoint" (the reference default) uses c1 = 1/2; 3M always uses
        the exact phi-ratios (as the reference and diffusers do), its D2 scaled by `d2_scale`:
        the reference D2 = h^2 x0''/2 misses the Taylor factor 2 (`d2_scale=2` restores global
        order 3, measured in tests/samplers/test_convergence.py).
        """
        if order == 1:
            return None, None
        c1, c2 = _difference_weights(h, self.stochastic)
        if order == 2 and self.solver_type == "midpoint":
            c1 = 0.5 * torch.ones_like(h)
        return c1, self.d2_scale * c2

    def multistep_weights(self, order: int, h: Tensor, h0: Tensor | None = None, h1: Tensor | None = None) -> Tensor:
        """Analytic weights [order, ...] on (m_i, m_{i-1}, m_{i-2}) of a multistep step of log-SNR length h.

        h0 = lam_i - lam_{i-1} and h1 = lam_{i-1} - lam_{i-2} are the previous steps (history
        placement as in `history_lams`); tensors broadcast, so whole tables of steps (BOSS's
        costs) get the solver's own weights.
        """
        return _multistep_weights(order, h, h0, h1, *self._difference_weights(order, h))

    # ------------------------------------------------------------------ planning

    def step_orders(self, lams: Tensor, start: int = 0) -> list[int]:
        """Order used at each step (lower order at the start, the end and at infinite lam).

        Sampling that begins at step `start` (img2img: `set_begin_index`) has no history before
        it, so its multistep orders ramp up from there. `lower_order_final` applies below 15
        steps in the whole grid (diffusers' rule; the DPM-Solver reference uses below 10).
        """
        n = lams.numel() - 1
        if not 0 <= start < n:
            raise ValueError(f"start must index a step of the grid (0 <= start < {n}), got {start}")
        orders = []
        short = n < 15  # diffusers' threshold for lower_order_final
        for i in range(n):
            finite_here = bool(torch.isfinite(lams[i]))
            finite_next = bool(torch.isfinite(lams[i + 1]))
            if i < start:
                order = 1  # never taken
            elif self.kind == "multistep":
                order = min(self.order, i - start + 1) if finite_here else 1
            else:
                order = self.order if finite_here else 1
            lower_final = self.kind == "multistep" and self.lower_order_final and short
            if not finite_next or (i == n - 1 and (self.euler_at_final or lower_final)):
                order = 1
            elif i == n - 2 and lower_final:
                order = min(order, 2)
            orders.append(order)
        if self.fast:
            return self._fast_orders(orders, start)
        return orders

    def num_steps_for(self, nfe: int, first_order_steps: int = 0) -> int:
        """dpmpp_fast: grid steps for an NFE budget; `first_order_steps` steps of the grid must be
        first order (1 evaluation each): one from t = 1 on a flow (alpha = 0), one to t = 0 (final="zero")."""
        return len(fast_step_orders(nfe - first_order_steps, self.order)) + first_order_steps

    def _fast_orders(self, orders: list[int], start: int) -> list[int]:
        """DPM-Solver-fast orders: the steps that must be first order (an end with infinite lam)
        cost one evaluation each; the rest of the budget is split by `fast_step_orders`."""
        forced = [i for i in range(start, len(orders)) if orders[i] == 1]
        free = [i for i in range(start, len(orders)) if orders[i] != 1]
        if self.nfe is None:  # the largest budget whose split has this many steps
            budget = max((b for b in range(1, 3 * len(free) + 1) if len(fast_step_orders(b, self.order)) == len(free)), default=0)
        else:
            budget = self.nfe - len(forced)
            split = fast_step_orders(budget, self.order) if budget >= 1 else []
            if len(split) != len(free):
                need = "no grid" if budget < 1 else f"a grid of {len(split) + len(forced)} steps"
                raise ValueError(
                    f"{self.name} with nfe={self.nfe} needs {need} here ({len(forced)} first-order step(s) at an end "
                    f"with alpha = 0 or sigma = 0, then orders {split}); got {len(orders) - start} steps. "
                    f"Build the grid with num_steps=solver.num_steps_for(nfe, first_order_steps={len(forced)})"
                )
        for i, order in zip(free, fast_step_orders(budget, self.order) if free else []):
            orders[i] = order
        return orders

    def plan(self, ts: Tensor, path: NoisePath, start: int = 0) -> list[StepPlan]:
        """Coefficients for every step of grid `ts` [n + 1] on `path` (float64, differentiable).

        `start`: the first step actually taken (multistep history begins there).
        """
        ts = ts.to(torch.float64)
        lams = path.lam(ts.detach())
        # grid points with infinite lam (t = 0, or alpha = 0 on a flow) are fixed: no gradient
        # flows through them (d lam / dt is infinite there), only through the interior points.
        ts = torch.where(torch.isfinite(lams), ts, ts.detach())
        alphas, sigmas = path.alpha_sigma(ts)
        lams = path.lam(ts)
        orders = self.step_orders(lams.detach(), start)
        if self.kind == "multistep":
            lams_history = history_lams(lams, path)
            return [self._multistep_step(i, orders[i], ts, alphas, sigmas, lams, lams_history) for i in range(len(orders))]
        return [self._singlestep_step(i, orders[i], ts, alphas, sigmas, lams, path) for i in range(len(orders))]

    def _multistep_step(self, i, order, ts, alphas, sigmas, lams, lams_history) -> StepPlan:
        h = lams[i + 1] - lams[i]
        h0 = lams[i] - lams_history[i - 1] if order >= 2 else None
        h1 = lams_history[i - 1] - lams_history[i - 2] if order >= 3 else None
        weights = self.multistep_weights(order, h, h0, h1)
        ratio = sigmas[i + 1] / sigmas[i]
        if self.stochastic:  # SDE-DPM-Solver++: x' = (s'/s) e^{-h} x + a'(1 - e^{-2h}) D + s' sqrt(1 - e^{-2h}) z
            noise_var = -torch.expm1(-2 * h)
            return StepPlan(
                ts[i], ts[i + 1], order, ratio * torch.exp(-h), alphas[i + 1] * noise_var, weights,
                noise_coef=sigmas[i + 1] * torch.sqrt(noise_var),
            )
        return StepPlan(ts[i], ts[i + 1], order, ratio, -alphas[i + 1] * _phi1(h), weights)

    def _singlestep_step(self, i, order, ts, alphas, sigmas, lams, path) -> StepPlan:
        alpha_n, sigma_n, sigma = alphas[i + 1], sigmas[i + 1], sigmas[i]
        if order == 1:  # DDIM / first-order DPM-Solver++
            h = lams[i + 1] - lams[i]
            return StepPlan(ts[i], ts[i + 1], 1, sigma_n / sigma, -alpha_n * _phi1(h), torch.ones_like(h).reshape(1))
        if self.heun:
            return self._heun_step(i, ts, alphas, sigmas)
        h = lams[i + 1] - lams[i]
        phi1 = _phi1(h)

        def stage_point(r: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            t_s = path.t_of_lam(lams[i] + r * h)
            alpha_s, sigma_s = path.alpha_sigma(t_s)
            return t_s, alpha_s, sigma_s, _phi1(r * h)

        if order == 2:  # DPM-Solver++(2S), r1 = 1/2
            r1 = 0.5
            t_s1, alpha_s1, sigma_s1, phi_s1 = stage_point(r1)
            stage = Stage(t_s1, sigma_s1 / sigma, (-alpha_s1 * phi_s1).reshape(1))
            weights = torch.stack([1 - 0.5 / r1 * torch.ones_like(h), 0.5 / r1 * torch.ones_like(h)])
            return StepPlan(ts[i], ts[i + 1], 2, sigma_n / sigma, -alpha_n * phi1, weights, stages=[stage])
        # DPM-Solver++(3S), r1 = 1/3, r2 = 2/3
        r1, r2 = 1.0 / 3.0, 2.0 / 3.0
        t_s1, alpha_s1, sigma_s1, phi_s1 = stage_point(r1)
        t_s2, alpha_s2, sigma_s2, phi_s2 = stage_point(r2)
        phi_22 = phi_s2 / (r2 * h) + 1
        phi2 = phi1 / h + 1
        stage1 = Stage(t_s1, sigma_s1 / sigma, (-alpha_s1 * phi_s1).reshape(1))
        corr = (r2 / r1) * alpha_s2 * phi_22
        stage2 = Stage(t_s2, sigma_s2 / sigma, torch.stack([-alpha_s2 * phi_s2 - corr, corr]))
        d_coef = -alpha_n * phi1
        m_coefs = torch.stack([d_coef - alpha_n * phi2 / r2, torch.zeros_like(h), alpha_n * phi2 / r2])
        return StepPlan(ts[i], ts[i + 1], 3, sigma_n / sigma, d_coef, m_coefs / d_coef, stages=[stage1, stage2])

    def _heun_step(self, i, ts, alphas, sigmas) -> StepPlan:
        """Heun's method (EDM Alg. 1, no churn): an Euler (= DDIM) stage, then the trapezoidal rule.

        "edm": y = x/alpha over rho = sigma/alpha (VE coordinates), as EDM and k-diffusion's
        `sample_heun`; "flow": y = x/(alpha+sigma) over rho = sigma/(alpha+sigma). With the
        Euler stage D1 = x0_hat(x) and D2 = x0_hat at the stage, both give
        y' = (rho'/rho) y + (1 - rho'/rho) ((2 rho' - rho) D1 + rho D2) / (2 rho').
        A step to sigma = 0 is Euler (first order, planned before this is called).
        """
        if self.heun == "edm":
            scale, scale_n = alphas[i], alphas[i + 1]
        else:
            scale, scale_n = alphas[i] + sigmas[i], alphas[i + 1] + sigmas[i + 1]
        rho, rho_n = sigmas[i] / scale, sigmas[i + 1] / scale_n
        d_rho = rho_n - rho
        x_coef = sigmas[i + 1] / sigmas[i]
        d_coef = -scale_n * d_rho / rho  # the Euler (= DDIM) weight on x0_hat
        euler = Stage(ts[i + 1], x_coef, d_coef.reshape(1))
        weights = torch.stack([(2 * rho_n - rho) / (2 * rho_n), rho / (2 * rho_n)])
        return StepPlan(ts[i], ts[i + 1], 2, x_coef, d_coef, weights, stages=[euler])


# ---------------------------------------------------------------------- registry

_SOLVER_SPECS: dict[str, dict] = {
    "ddim": dict(kind="multistep", order=1, summary="first order: DDIM = Euler = DPM-Solver++1"),
    "dpmpp_2m": dict(kind="multistep", order=2, summary="DPM-Solver++(2M), one evaluation per step"),
    "dpmpp_3m": dict(kind="multistep", order=3, summary="DPM-Solver++(3M) as in the reference code / diffusers"),
    "dpmpp_3m_o3": dict(
        kind="multistep", order=3, d2_scale=2.0, summary="DPM-Solver++(3M) with the Taylor-exact 2nd difference"
    ),
    "sde_dpmpp_1": dict(kind="multistep", order=1, stochastic=True, summary="SDE-DPM-Solver++(1) (first-order SDE step)"),
    "sde_dpmpp_2m": dict(kind="multistep", order=2, stochastic=True, summary="SDE-DPM-Solver++(2M)"),
    "sde_dpmpp_3m": dict(kind="multistep", order=3, stochastic=True, summary="SDE-DPM-Solver++(3M) as in diffusers"),
    "dpmpp_2s": dict(kind="singlestep", order=2, summary="DPM-Solver++(2S), 2 evaluations per step"),
    "dpmpp_3s": dict(kind="singlestep", order=3, summary="DPM-Solver++(3S), 3 evaluations per step"),
    "dpmpp_fast": dict(
        kind="singlestep", order=3, fast=True,
        summary="DPM-Solver-fast: an NFE budget split into 3S/2S/1 steps (the reference's singlestep method)",
    ),
    "heun_edm": dict(
        kind="singlestep", order=2, heun="edm",
        summary="Heun (EDM Alg. 1) in VE coordinates, as k-diffusion's sample_heun; 2 evaluations per step",
    ),
    "heun_flow": dict(
        kind="singlestep", order=2, heun="flow",
        summary="Heun's 2nd-order rule in rectified-flow coordinates, 2 evaluations per step",
    ),
}
_ALIASES = {"euler": "ddim", "dpmpp_1": "ddim", "dpmpp_2m_sde": "sde_dpmpp_2m"}
#: old names that still work, with a FutureWarning naming the new one
_DEPRECATED = {"heun": "heun_flow"}


def fast_step_orders(nfe: int, order: int = 3) -> list[int]:
    """Per-step orders of DPM-Solver-fast (Lu et al. 2022) for a budget of `nfe` evaluations.

    Order 3: as many 3rd-order steps as fit, the remainder spent on one 2nd- and/or 1st-order
    step: nfe = 3q -> [3] * (q - 1) + [2, 1]; 3q + 1 -> [3] * q + [1]; 3q + 2 -> [3] * q + [2].
    Order 2: [2] * (nfe // 2), plus [1] when nfe is odd. Order 1: [1] * nfe. sum(...) == nfe.
    """
    if nfe < 1:
        raise ValueError(f"an NFE budget must be at least 1, got {nfe}")
    if order == 1:
        return [1] * nfe
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    if order == 3:
        q, r = divmod(nfe, 3)
        return [3] * (q - 1) + [2, 1] if r == 0 else [3] * q + [r]
    raise ValueError(f"order must be 1, 2 or 3, got {order}")


def available_solvers(kind: str | None = None, stochastic: bool | None = None) -> list[str]:
    """Solver names accepted by `get_solver` (aliases: euler, dpmpp_1 -> ddim), in registry order.

    `kind` ("multistep": one model call per step, "singlestep") and `stochastic` (SDE solvers
    or ODE solvers) keep only the solvers of that kind, e.g. for a command's choices.
    """
    if kind not in (None, "multistep", "singlestep"):
        raise ValueError(f"kind must be 'multistep' or 'singlestep', got {kind!r}")
    return [
        name for name, spec in _SOLVER_SPECS.items()
        if kind in (None, spec["kind"]) and stochastic in (None, spec.get("stochastic", False))
    ]


def get_solver(name: str, **options) -> Solver:
    """A `Solver` by name; options: lower_order_final, euler_at_final, thresholding, ..."""
    if name in _DEPRECATED:
        import warnings

        warnings.warn(
            f"solver {name!r} is deprecated: it is now called {_DEPRECATED[name]!r} (Heun in rectified-flow "
            f"coordinates); 'heun_edm' is EDM's / k-diffusion's Heun", FutureWarning, stacklevel=2,
        )
        name = _DEPRECATED[name]
    key = _ALIASES.get(name, name)
    if key not in _SOLVER_SPECS:
        valid = available_solvers() + sorted(_ALIASES)
        raise ValueError(f"unknown solver {name!r}; valid: {valid}")
    spec = dict(_SOLVER_SPECS[key])
    cls = spec.pop("cls", Solver)  # a registered subclass (UniPC: unipc.py)
    if "corrector" in options and not hasattr(cls, "corrector"):
        with_corrector = [n for n, s in _SOLVER_SPECS.items() if hasattr(s.get("cls", Solver), "corrector")]
        raise ValueError(
            f"solver {key!r} takes no corrector: the UniC corrector follows a multistep UniP predictor; valid "
            f"combinations: {with_corrector} with corrector=True (default) or False"
        )
    return cls(name=key, **spec, **options)


StepCallback = Callable[..., None]
