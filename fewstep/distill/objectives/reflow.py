"""Reflow (Liu et al., ICLR 2023, "Flow straight and fast", arXiv 2209.03003): rectify a flow on its own couplings.

The teacher (frozen pretrained EMA weights) maps `num_noises` seeded noises eps to samples z
on a fine Euler grid; the student, started from the same weights, is trained by flow matching
on the straight lines between each pair: x_t = (1 - t) z + t eps, t ~ U(0, 1), target
velocity eps - z (t = 0 data, t = 1 noise). Unlike BOSS straightening it is not tied to a step
grid: one reflowed model serves every step count. `objective.spec` (optional) only chooses the
grid of the sample previews and of the exported scheduler.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .trajectory import TeacherTrajectoryObjective, load_flow_spec, spec_path

#: training times are drawn from [T_MIN, 1] (the flow is defined up to t = 1; t = 0 is the data itself).
T_MIN = 1e-3


class Reflow(TeacherTrajectoryObjective):
    """Flow matching on (noise, teacher sample) pairs: 2-rectified flow."""

    def __init__(self, model: nn.Module, spec: str | None = None, num_noises: int = 1024, fine_steps: int = 100,
                 num_train_timesteps: int = 1000, seed: int = 0, lora_rank: int = 0, preview_steps: int = 4) -> None:
        super().__init__(model, num_noises, fine_steps, num_train_timesteps, seed, lora_rank)
        if spec:
            self.ts = load_flow_spec(spec, self.path).ts
            self.spec_file = spec_path(spec)
        else:
            from fewstep.samplers import get_schedule

            self.ts = get_schedule("uniform", self.path, preview_steps)

    def keep_indices(self) -> list[int]:
        """The noise (first) and the teacher's sample (last)."""
        return [0, self.fine_steps]

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        pairs, labels = batch  # [B, 2, ...] (noise, sample), [B]
        noise, data = pairs[:, 0], pairs[:, 1]
        t = T_MIN + (1 - T_MIN) * torch.rand(noise.shape[0], generator=generator, device=noise.device, dtype=torch.float64)
        t_b = t.to(noise.dtype).reshape(-1, *[1] * (noise.ndim - 1))
        x_t = (1 - t_b) * data + t_b * noise
        return {"loss": self.velocity_loss(x_t, t, noise - data, labels)}
