"""Variance-preserving DDPM teacher (Ho et al. 2020) with epsilon or v prediction (Salimans & Ho 2022).

Integer timesteps k ~ U{0, ..., N-1}, t = (k + 1) / N on the diffusers beta schedule;
x_t = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fewstep.samplers import DiscreteVPPath

from .base import DenoisingObjective

VP_PREDICTIONS = ("epsilon", "v_prediction", "sample")


class VPDiffusion(DenoisingObjective):
    """Denoising score matching on the discrete VP path: E ||f_theta(x_t, k, c) - target||^2."""

    def __init__(
        self,
        model: nn.Module,
        cfg_dropout: float = 0.1,
        prediction_type: str | None = None,
        beta_schedule: str = "linear",
        num_train_timesteps: int = 1000,
    ) -> None:
        super().__init__(model, cfg_dropout)
        prediction_type = prediction_type or "epsilon"
        if prediction_type not in VP_PREDICTIONS:
            raise ValueError(f"vp_diffusion prediction_type {prediction_type!r} is not valid; choose one of {VP_PREDICTIONS}")
        self.path = DiscreteVPPath.from_betas(beta_schedule, num_train_timesteps)
        self.prediction_type = prediction_type
        self.beta_schedule = beta_schedule

    def sample_times(self, batch_size: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        n = self.path.num_train_timesteps
        k = torch.randint(0, n, (batch_size,), generator=generator, device=device)
        return (k.double().cpu() + 1) / n, k

    def scheduler(self) -> Any:
        """DPMSolverMultistepScheduler on the training betas and prediction type."""
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler(
            num_train_timesteps=self.path.num_train_timesteps,
            beta_schedule=self.beta_schedule,
            prediction_type=self.prediction_type,
        )
