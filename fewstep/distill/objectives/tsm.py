"""TSM, teacher score matching (MSD stage 0, Song et al. 2024, arXiv 2410.23274): a smaller network fitted to the teacher.

A student smaller than the teacher (built from `model:`, e.g. a UNet with narrower channels,
randomly initialised; `model.teacher` names the teacher) regresses the teacher's denoiser
outputs over noise levels: for real data x0 of the config's dataset, t ~ U[t_min, 1] and
x_t = alpha x0 + sigma eps on the *teacher's* path,

    loss = || f_student(x_t, t, c) - f_teacher(x_t, t, c) ||^2

in the teacher's own prediction type (labels dropped to the null class with probability
`cfg_dropout`, so the student keeps the teacher's unconditional branch). The result is a small
diffusion model on the teacher's path and parameterisation: a pipeline on its own, and the
initialisation of small MSD / DMD students (`model.type=pretrained`, `model.pretrained=` its
pipeline, `model.teacher=` the teacher). The paper reports that small students without it fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewstep import batch_noise
from fewstep.pipelines.class_conditional import null_class
from fewstep.samplers import NetworkDenoiser, get_schedule

from .base import Objective, Teacher, register_objective, sample_class_conditional
from .msd import check_teacher


@dataclass
class TSMOptions:
    """Options of `tsm`."""

    t_min: float = 0.001  # t ~ U[t_min, 1]
    cfg_dropout: float = 0.1  # labels replaced by the null class with this probability

    def __post_init__(self) -> None:
        if not 0 < self.t_min < 1:
            raise ValueError(f"objective.t_min must lie in (0, 1), got {self.t_min}")
        if not 0 <= self.cfg_dropout < 1:
            raise ValueError(f"objective.cfg_dropout must lie in [0, 1), got {self.cfg_dropout}")


@register_objective("tsm")
class TeacherScoreMatching(Objective):
    """Regress a (smaller) student's output on the frozen teacher's, on noised real data."""

    Options = TSMOptions
    teacher_use = "required"
    model_types = ("unet", "mlp", "pretrained")

    def __init__(self, model: nn.Module, options: TSMOptions, teacher: Teacher | None) -> None:
        teacher = check_teacher(self.name, teacher, model)
        super().__init__({"model": model}, teacher)
        self.options = options
        self.path, self.prediction_type = teacher.path, teacher.prediction_type
        self.teacher_denoiser = NetworkDenoiser(teacher.network, teacher.path, teacher.prediction_type)
        self.null_label = null_class(model)

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        x0, labels = batch[0], batch[1]
        device = x0.device
        u = batch_noise.rand((x0.shape[0],), generator, device, torch.float64).cpu()
        t = self.teacher_denoiser.snap(self.options.t_min + (1 - self.options.t_min) * u)
        eps = batch_noise.randn(x0.shape, generator, device, x0.dtype)
        x_t = self.teacher_denoiser.noise(x0, eps, t)
        drop = batch_noise.rand(labels.shape, generator, device) < self.options.cfg_dropout
        labels = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        with torch.no_grad():
            target = self.teacher_denoiser.raw(x_t, t, labels)
        student = NetworkDenoiser(self.networks["model"], self.path, self.prediction_type)
        return {"loss": F.mse_loss(student.raw(x_t, t, labels).float(), target.float())}

    @torch.no_grad()
    def sample(self, networks: dict[str, nn.Module], class_labels: Tensor, generator: torch.Generator, num_steps: int,
               guidance_scale: float = 1.0) -> Tensor:
        """DPM-Solver++(2M) on a logSNR-uniform grid of the teacher's path (the student is a diffusion model)."""
        return sample_class_conditional(networks["model"], self.path, self.prediction_type, class_labels, generator,
                                        get_schedule("logsnr", self.path, num_steps), "dpmpp_2m", guidance_scale)

    def scheduler(self) -> Any:
        """The teacher's scheduler (the student shares its path and parameterisation)."""
        from fewstep.pipelines.scheduler import FewStepScheduler

        return FewStepScheduler.from_config(self.teacher.scheduler_config)
