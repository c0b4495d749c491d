"""Variance-preserving DDPM teacher (Ho et al. 2020) with epsilon or v prediction (Salimans & Ho 2022).

Integer timesteps k ~ U{0, ..., N-1}, t = (k + 1) / N on the diffusers beta schedule;
x_t = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fewstep import batch_noise
from fewstep.samplers import DiscreteVPPath

from .base import DenoisingObjective, Teacher, check_teacher_kind, register_objective

VP_PREDICTIONS = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass
class VPDiffusionOptions:
    """Options of `objective.name=vp_diffusion`."""

    prediction_type: str = "epsilon"  # epsilon | v_prediction | sample
    beta_schedule: str = "linear"
    num_train_timesteps: int = 1000
    cfg_dropout: float = 0.1  # probability of replacing the label by the null class

    def __post_init__(self) -> None:
        if self.prediction_type not in VP_PREDICTIONS:
            raise ValueError(f"vp_diffusion prediction_type {self.prediction_type!r} is not valid; choose one of {VP_PREDICTIONS}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"objective.beta_schedule={self.beta_schedule!r} is not valid; choose one of: {', '.join(BETA_SCHEDULES)}")
        if not 0 <= self.cfg_dropout < 1:
            raise ValueError(f"objective.cfg_dropout must lie in [0, 1), got {self.cfg_dropout}")


@register_objective("vp_diffusion")
class VPDiffusion(DenoisingObjective):
    """Denoising score matching on the discrete VP path: E ||f_theta(x_t, k, c) - target||^2.

    With a pretrained VP teacher the path and prediction type are the teacher's (fine-tuning).
    """

    Options = VPDiffusionOptions

    def __init__(self, model: nn.Module, options: VPDiffusionOptions | None = None, teacher: Teacher | None = None) -> None:
        options = options or VPDiffusionOptions()
        super().__init__(model, options.cfg_dropout, teacher)
        check_teacher_kind(self.name, teacher, "vp")
        if teacher is not None:
            self.path, self.prediction_type = teacher.path, teacher.prediction_type
            self.scheduler_config = dict(teacher.scheduler_config)
        else:
            self.path = DiscreteVPPath.from_betas(options.beta_schedule, options.num_train_timesteps)
            self.prediction_type = options.prediction_type
            self.scheduler_config = {"num_train_timesteps": options.num_train_timesteps,
                                     "beta_schedule": options.beta_schedule, "prediction_type": options.prediction_type}

    def sample_times(self, batch_size: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        n = self.path.num_train_timesteps
        k = batch_noise.randint(0, n, (batch_size,), generator, device)
        return (k.double().cpu() + 1) / n, k

    def scheduler(self) -> Any:
        """DPMSolverMultistepScheduler on the training schedule and prediction type (the teacher's, when fine-tuning)."""
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler.from_config(self.scheduler_config, prediction_type=self.prediction_type)
