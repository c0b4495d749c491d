"""UniPC (Zhao et al. 2023, arXiv 2302.04867): the UniP predictor and UniC corrector as coefficient plans.

Data-prediction form (diffusers' `predict_x0=True`). One step t_i -> t_{i+1}, h = lam_{i+1} - lam_i,
m_0 = x0_hat(x_i) and m_k = x0_hat at t_{i-k} (the history, placed as `history_lams` places it),
r_k = (lam_{i-k} - lam_i) / h < 0, D_k = (m_k - m_0) / r_k:

    UniP-p:  x_{i+1} = (sigma'/sigma) x_i - alpha' phi1 m_0 - alpha' B(h) sum_{k<p} rho_k D_k
    UniC-p:  x^c_{i+1} = (sigma'/sigma) x_i - alpha' phi1 m_0 - alpha' B(h) (sum_{k<p} rho^c_k D_k + rho^c_p (m_{i+1} - m_0))

with phi1 = expm1(-h), B(h) = -h ("bh1") or expm1(-h) ("bh2"), and rho solving the order
conditions R rho = b (R[j, k] = r_k^j, with r = 1 for m_{i+1} in the corrector; b_j = j! h phi_{j+1}(h) / B(h)
up to sign, by the recurrence phi_{j+1} = (phi_j - 1/j!) / h of the paper's Algorithm 2). UniP-2
uses rho = 1/2 and UniC-1 rho^c = 1/2, as the reference does. m_{i+1} = x0_hat(x_{i+1}) is the model output the next step needs anyway, so
the corrector costs no model call; the corrected state replaces x_{i+1} before the next
predictor step, and m_{i+1} (evaluated at the uncorrected point) joins the history.

In fewstep's terms both are linear in (x_i, m's) with coefficients fixed by the grid, computed
once per step in float64 (differentiable). The corrector is stored as an increment on the
predicted state, `x^c = x_{i+1} + sum_j c_j m_j` over (m_{i+1}, m_i, m_{i-1}, ...) with
c = (UniC coefficients) - (UniP coefficients): mathematically the formula above, and it needs no
copy of x_i. Learned coefficients (`coeffs=`) replace the predictor's weights only (as for every
multistep solver); the corrector then adds its analytic increment on top of the learned
predictor, so learning still moves both the evaluation point and the final state.

Where the reference has no corrector, neither does this: not after the last step (no model call
follows), not where h is infinite (a step landing on t = 0, or starting at a flow's alpha = 0,
which are first order), and not after the steps listed in `disable_corrector`. `lower_order_final`
always caps step i at order n - i, as diffusers' UniPCMultistepScheduler does (not only below
15 steps as for DPM-Solver++).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .solvers import Solver, StepPlan, _phi1
from .update import StepUpdate

UNIPC_VARIANTS = ("bh1", "bh2")


def _order_conditions(h: Tensor, order: int, variant: str) -> tuple[Tensor, Tensor]:
    """(B(h), b [order]): the right-hand side of UniPC's order conditions R rho = b (data prediction)."""
    hh = -h
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    h_phi_k = torch.expm1(hh) / hh - 1
    factorial = 1.0
    b = []
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return b_h, torch.stack(b)


def _solve(rks: list[Tensor], b: Tensor) -> Tensor:
    """rho with sum_k rks[k]^j rho_k = b_j, j = 0 .. len(rks) - 1 (a small Vandermonde system)."""
    nodes = torch.stack(rks)
    matrix = torch.stack([nodes**j for j in range(len(rks))])
    return torch.linalg.solve(matrix, b[: len(rks)])


@dataclass
class UniPCSolver(Solver):
    """UniPC-p: the UniP-p predictor (B(h) = `variant`) and, with `corrector`, the UniC-p corrector."""

    variant: str = "bh2"
    corrector: bool = True
    #: step indices after which the corrector is skipped (diffusers' `disable_corrector`)
    disable_corrector: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in UNIPC_VARIANTS:
            raise ValueError(f"UniPC variant must be one of {UNIPC_VARIANTS}, got {self.variant!r}")
        if self.kind != "multistep" or self.stochastic:
            raise ValueError("UniPC is a deterministic multistep solver")
        if self.order < 1:
            raise ValueError(f"UniPC order must be >= 1, got {self.order}")
        self.disable_corrector = tuple(int(i) for i in self.disable_corrector)

    @property
    def history_size(self) -> int:
        """The corrector of an order-p step reads p + 1 model outputs (the new one and p before it)."""
        return self.order + 1 if self.corrector else self.order

    def step_orders(self, lams: Tensor, start: int = 0) -> list[int]:
        """min(order, steps taken + 1, steps left) as in diffusers' UniPC; 1 at infinite log-SNR."""
        n = lams.numel() - 1
        if not 0 <= start < n:
            raise ValueError(f"start must index a step of the grid (0 <= start < {n}), got {start}")
        orders = []
        for i in range(n):
            if i < start or not bool(torch.isfinite(lams[i])) or not bool(torch.isfinite(lams[i + 1])):
                orders.append(1)
                continue
            order = min(self.order, i - start + 1)
            if self.lower_order_final:
                order = min(order, n - i)
            if self.euler_at_final and i == n - 1:
                order = 1
            orders.append(order)
        return orders

    def plan(self, ts: Tensor, path, start: int = 0) -> list[StepPlan]:
        plans = super().plan(ts, path, start=start)
        if plans:
            plans[-1].corrector = None  # no model call follows the last step
        for i in self.disable_corrector:
            if 0 <= i < len(plans):
                plans[i].corrector = None
        for i in range(start):
            plans[i].corrector = None  # steps before a mid-schedule start are never taken
        return plans

    def _multistep_step(self, i, order, ts, alphas, sigmas, lams, lams_history) -> StepPlan:
        h = lams[i + 1] - lams[i]
        ratio = sigmas[i + 1] / sigmas[i]
        base = -alphas[i + 1] * _phi1(h)  # the first-order (DDIM) weight on m_0
        if not bool(torch.isfinite(h)):  # first order, no corrector (see the module docstring)
            return StepPlan(ts[i], ts[i + 1], 1, ratio, base, torch.ones_like(h).reshape(1))
        b_h, b = _order_conditions(h, order, self.variant)
        scale = -alphas[i + 1] * b_h
        rks = [(lams_history[i - k] - lams[i]) / h for k in range(1, order)]
        # predictor: coefficients on (m_0, m_1, .., m_{p-1})
        if order == 1:
            rho_p = h.new_zeros(0)
        elif order == 2:
            rho_p = 0.5 * torch.ones_like(h).reshape(1)
        else:
            rho_p = _solve(rks, b)
        history = [scale * rho_p[k - 1] / rks[k - 1] for k in range(1, order)]
        predictor = torch.stack([base - sum(history, torch.zeros_like(h))] + history)
        plan = StepPlan(ts[i], ts[i + 1], order, ratio, base, predictor / base)
        if not self.corrector:
            return plan
        # corrector: coefficients on (m_new, m_0, .., m_{p-1}), written as an increment on the predictor
        rho_c = 0.5 * torch.ones_like(h).reshape(1) if order == 1 else _solve(rks + [torch.ones_like(h)], b)
        c_history = [scale * rho_c[k - 1] / rks[k - 1] for k in range(1, order)]
        c_new = scale * rho_c[-1]
        c_0 = base - sum(c_history, torch.zeros_like(h)) - c_new
        corrected = torch.stack([c_new, c_0] + c_history)
        increment = corrected - torch.cat([torch.zeros_like(h).reshape(1), predictor])
        plan.corrector = StepUpdate(torch.ones_like(h), increment, None)
        return plan


def unipc_name(variant: str, order: int) -> str:
    """The registry name of UniPC-`order` with B(h) `variant`: unipc_bh2 (order 2), unipc_bh2_1, unipc_bh2_3."""
    return f"unipc_{variant}" if order == 2 else f"unipc_{variant}_{order}"


def _register() -> None:
    """Add the UniPC family to the solver registry (orders 1-3, B(h) = bh1 / bh2)."""
    from .solvers import _SOLVER_SPECS

    for variant in UNIPC_VARIANTS:
        for order in (2, 3, 1):
            _SOLVER_SPECS[unipc_name(variant, order)] = dict(
                cls=UniPCSolver, kind="multistep", order=order, variant=variant,
                summary=f"UniPC-{order} ({variant}): UniP-{order} predictor + UniC-{order} corrector, one evaluation per step",
            )


_register()
