"""Rectified-flow / flow matching teacher (Liu et al. 2022; Lipman et al. 2022).

x_t = (1 - t) x0 + t eps, the network predicts v = eps - x0 at timestep t * N; t is uniform
or logit-normal (sigmoid of N(m, s^2), Esser et al. 2024, SD3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fewstep import batch_noise
from fewstep.samplers import RectifiedFlowPath

from .base import DenoisingObjective, Teacher, check_teacher_kind, register_objective

TIME_SAMPLINGS = ("uniform", "logit_normal")


@dataclass
class FlowMatchingOptions:
    """Options of `objective.name=flow_matching`."""

    time_sampling: str = "uniform"  # uniform | logit_normal (SD3, Esser et al. 2024)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    cfg_dropout: float = 0.1  # probability of replacing the label by the null class
    num_train_timesteps: int = 1000
    prediction_type: str = "flow_prediction"  # the only one a flow trains; stated for readable configs

    def __post_init__(self) -> None:
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"objective.time_sampling={self.time_sampling!r} is not valid; choose one of: {', '.join(TIME_SAMPLINGS)}")
        if self.prediction_type != "flow_prediction":
            raise ValueError(f"flow_matching trains prediction_type 'flow_prediction', not {self.prediction_type!r}")
        if not 0 <= self.cfg_dropout < 1:
            raise ValueError(f"objective.cfg_dropout must lie in [0, 1), got {self.cfg_dropout}")
        if self.logit_std <= 0:
            raise ValueError(f"objective.logit_std must be > 0, got {self.logit_std}")


@register_objective("flow_matching")
class FlowMatching(DenoisingObjective):
    """Conditional flow matching loss E ||v_theta(x_t, t, c) - (eps - x0)||^2."""

    Options = FlowMatchingOptions

    def __init__(self, model: nn.Module, options: FlowMatchingOptions | None = None, teacher: Teacher | None = None) -> None:
        options = options or FlowMatchingOptions()
        super().__init__(model, options.cfg_dropout, teacher)
        check_teacher_kind(self.name, teacher, "flow")
        self.path = teacher.path if teacher is not None else RectifiedFlowPath(options.num_train_timesteps)
        self.prediction_type = "flow_prediction"
        self.options = options

    def sample_times(self, batch_size: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        if self.options.time_sampling == "uniform":
            t = batch_noise.rand((batch_size,), generator, device)
        else:
            z = batch_noise.randn((batch_size,), generator, device)
            t = torch.sigmoid(self.options.logit_mean + self.options.logit_std * z)
        t = t.double().cpu()
        return t, self.path.model_time(t).to(device=device, dtype=torch.float32)

    def scheduler(self) -> Any:
        """FlowMatchEulerDiscreteScheduler with shift 1 (the training path)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.path.num_train_timesteps, shift=1.0)
