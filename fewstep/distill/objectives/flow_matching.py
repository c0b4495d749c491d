"""Rectified-flow / flow matching teacher (Liu et al. 2022; Lipman et al. 2022).

x_t = (1 - t) x0 + t eps, the network predicts v = eps - x0 at timestep t * N; t is uniform
or logit-normal (sigmoid of N(m, s^2), Esser et al. 2024, SD3).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fewstep.samplers import RectifiedFlowPath

from .base import DenoisingObjective


class FlowMatching(DenoisingObjective):
    """Conditional flow matching loss E ||v_theta(x_t, t, c) - (eps - x0)||^2."""

    def __init__(
        self,
        model: nn.Module,
        cfg_dropout: float = 0.1,
        time_sampling: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        num_train_timesteps: int = 1000,
        prediction_type: str | None = None,
    ) -> None:
        super().__init__(model, cfg_dropout)
        if prediction_type not in (None, "flow_prediction"):
            raise ValueError(f"flow_matching trains prediction_type 'flow_prediction', not {prediction_type!r}")
        if time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"time_sampling {time_sampling!r} is not valid; choose 'uniform' or 'logit_normal'")
        self.path = RectifiedFlowPath(num_train_timesteps)
        self.prediction_type = "flow_prediction"
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, logit_mean, logit_std

    def sample_times(self, batch_size: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        if self.time_sampling == "uniform":
            t = torch.rand(batch_size, generator=generator, device=device)
        else:
            t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(batch_size, generator=generator, device=device))
        t = t.double().cpu()
        return t, self.path.model_time(t).to(device=device, dtype=torch.float32)

    def scheduler(self) -> Any:
        """FlowMatchEulerDiscreteScheduler with shift 1 (the training path)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.path.num_train_timesteps, shift=1.0)
