"""Reflow (Liu et al., ICLR 2023, "Flow straight and fast", arXiv 2209.03003): a flow on a teacher's coupling.

The teacher (frozen pretrained EMA weights, on its own path: a flow or a VP / DDPM model) maps
`num_noises` seeded noises eps to samples z by its probability-flow ODE on a fine grid; the
student, a rectified flow started from the same weights, is trained by flow matching on that
coupling: x_t = alpha(t) z + sigma(t) eps on the flow path (alpha = 1 - t, sigma = t),
t ~ U(T_MIN, 1), target `from_x0_eps(z, eps, alpha, sigma, "flow_prediction")` = eps - z
(t = 0 data, t = 1 noise). With a flow teacher this is 2-rectified flow; with a VP teacher it
turns the teacher's ODE pairs into a flow student. Unlike BOSS straightening it is not tied
to a step grid; `objective.spec` (optional) only chooses the grid of the sample previews and
of the exported scheduler.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fewstep.samplers import get_schedule

from .base import Teacher, register_objective
from .trajectory import TeacherTrajectoryObjective, TrajectoryOptions, load_flow_spec, spec_path

#: Euler steps of the previews when no spec is given.
PREVIEW_STEPS = 4


@register_objective("reflow")
class Reflow(TeacherTrajectoryObjective):
    """Flow matching on (noise, teacher sample) pairs: 2-rectified flow, or a flow student of a VP teacher."""

    def __init__(self, model: nn.Module, options: TrajectoryOptions, teacher: Teacher | None) -> None:
        super().__init__(model, options, teacher)
        if options.spec:
            self.ts = load_flow_spec(options.spec, self.path).ts
            self.spec_file = spec_path(options.spec)
        else:
            self.ts = get_schedule("uniform", self.path, PREVIEW_STEPS)

    def keep_indices(self) -> list[int]:
        """The noise (first) and the teacher's sample (last)."""
        return [0, self.fine_steps]

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        pairs, labels = batch  # [B, 2, ...] (noise, sample), [B]
        return {"loss": self.coupling_loss(pairs[:, 1], pairs[:, 0], labels, generator)}
