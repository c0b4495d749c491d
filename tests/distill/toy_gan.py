"""A two-network toy objective for the loop's tests (and the worked example in docs/training.md).

A generator maps Gaussian noise z [B, 2] and a class label to a 2-D point; a critic scores
points. Two phases, each with its own optimizer: the critic learns real vs generated points
(logistic loss), then the generator learns to be scored as real (non-saturating GAN loss,
Goodfellow et al. 2014). Registered as `objective.name=toy_gan` on import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

from fewstep import batch_noise
from fewstep.models import ClassConditionalMLP
from fewstep.distill.objectives import Objective, Teacher, register_objective


@dataclass
class ToyGANOptions:
    critic_width: int = 32


@register_objective("toy_gan")
class ToyGAN(Objective):
    """Generator + critic on 2-D points; the loop averages, checkpoints and exports both."""

    Options = ToyGANOptions
    phases = ("critic", "generator")
    main_network = "generator"
    teacher_use = "none"

    def __init__(self, model: nn.Module, options: ToyGANOptions, teacher: Teacher | None = None) -> None:
        critic = ClassConditionalMLP(dim=2, width=options.critic_width, num_blocks=1,
                                     num_class_embeds=model.config.num_class_embeds)
        super().__init__({"generator": model, "critic": critic}, teacher)

    def param_groups(self, phase: str) -> list[dict[str, Any]]:
        return [{"params": list(self.networks[phase].parameters())}]

    def generate(self, generator_net: nn.Module, labels: Tensor, rng: torch.Generator) -> Tensor:
        z = batch_noise.randn((labels.shape[0], 2), rng, labels.device)  # per-sample: this process's rows
        return generator_net(z, torch.zeros_like(labels, dtype=torch.float32), class_labels=labels).sample

    def score(self, x: Tensor, labels: Tensor) -> Tensor:
        return self.networks["critic"](x, torch.zeros_like(labels, dtype=torch.float32), class_labels=labels).sample[:, 0]

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        real, labels = batch
        fake = self.generate(self.networks["generator"], labels, generator)
        if phase == "critic":
            return {"loss": (softplus(-self.score(real, labels)) + softplus(self.score(fake.detach(), labels))).mean()}
        return {"loss": softplus(-self.score(fake, labels)).mean()}

    @torch.no_grad()
    def sample(self, networks: dict[str, nn.Module], class_labels: Tensor, generator: torch.Generator, num_steps: int,
               guidance_scale: float = 1.0) -> Tensor:
        return self.generate(networks["generator"], class_labels, generator)

    def export(self, networks: dict[str, nn.Module], folder: Path) -> None:
        for name, network in networks.items():
            network.save_pretrained(str(Path(folder) / name))
