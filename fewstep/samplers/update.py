"""One solver update, shared by `sample()` and `FewStepScheduler.step`.

Every step of every solver here is

    x' = x_coef x + sum_j m_coefs[j] m_j  (+ noise_coef z,  z ~ N(0, I))

with m_j the step's x0_hat evaluations (a multistep solver's history, newest first, or a
singlestep solver's stages). `StepPlan.update()` gives the coefficients as float64 tensors
(differentiable: `sample()` learns grids and weights through them); `StepUpdate.to_floats()`
turns them into Python floats, which `FewStepScheduler` precomputes once per grid because a
float scale fuses into one multiply-add per term (diffusers' schedulers do the same).

A step may carry a corrector (UniC, `unipc.py`): another update of the same form, applied to
the new state by `MultistepState.step` at the next step, once x0_hat at that state is known —
so the correction costs no model call and both callers run it from the same code.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

Coef = Tensor | float


class StepUpdate(NamedTuple):
    """Coefficients of x' = x_coef x + sum_j m_coefs[j] m_j + noise_coef z: all tensors or all Python floats."""

    x_coef: Coef
    m_coefs: Tensor | Sequence[float]
    noise_coef: Coef | None = None

    def to_floats(self) -> "StepUpdate":
        """The same update with Python-float coefficients (no gradient; the scheduler's fast path)."""
        noise = None if self.noise_coef is None else float(self.noise_coef)
        return StepUpdate(float(self.x_coef), [float(c) for c in self.m_coefs], noise)


def _add_scaled(out: Tensor, coef: Coef, m: Tensor) -> Tensor:
    """out + coef * m: a 0-d tensor coefficient stays differentiable, a float fuses into one kernel."""
    return out + coef * m if isinstance(coef, Tensor) else out.add(m, alpha=coef)


def combine(x_coef: Coef, x: Tensor, m_coefs: Tensor | Sequence[float], ms: Sequence[Tensor]) -> Tensor:
    """x_coef * x + sum_j m_coefs[j] * ms[j], in x's dtype (extra entries of the longer list are ignored)."""
    if isinstance(x_coef, Tensor):
        x_coef, m_coefs = x_coef.to(x.dtype), m_coefs.to(x.dtype)
    out = x * x_coef
    for coef, m in zip(m_coefs, ms):
        out = _add_scaled(out, coef, m)
    return out


def apply_update(update: StepUpdate, x: Tensor, ms: Sequence[Tensor], generator: torch.Generator | None = None) -> Tensor:
    """One step x -> x' from the evaluations `ms` (newest first); the SDE noise is drawn from `generator`."""
    out = combine(update.x_coef, x, update.m_coefs, ms)
    if update.noise_coef is None:
        return out
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    noise_coef = update.noise_coef.to(x.dtype) if isinstance(update.noise_coef, Tensor) else update.noise_coef
    return _add_scaled(out, noise_coef, z)


class MultistepState:
    """A multistep solver's explicit state: its newest-first x0_hat history (at most `order` entries)
    and the corrector still to be applied to the current point (UniC), if any.

    `order` is the history length kept (`Solver.history_size`: one more than the solver's order
    when a corrector reads the new evaluation beside the predictor's p).
    """

    def __init__(self, order: int) -> None:
        self.order = order
        self.history: list[Tensor] = []
        self.pending: StepUpdate | None = None

    def reset(self) -> None:
        """Forget the history and any pending correction (a new grid, or a start mid-schedule)."""
        self.history = []
        self.pending = None

    def step(
        self, update: StepUpdate, x: Tensor, x0_hat: Tensor, generator: torch.Generator | None = None,
        corrector: StepUpdate | None = None,
    ) -> Tensor:
        """Push x0_hat into the history and take the step: the one multistep update of fewstep.

        x0_hat is the model's prediction at x. If the previous step left a corrector, x is first
        corrected with it (x <- x + its terms on the history, x0_hat included: no extra model
        call), then `update` steps from the corrected point. `corrector` is this step's own
        correction, kept until the next call brings x0_hat at the new point.
        """
        self.history = [x0_hat] + self.history[: self.order - 1]
        if self.pending is not None:
            x = apply_update(self.pending, x, self.history)
        self.pending = corrector
        return apply_update(update, x, self.history, generator)
