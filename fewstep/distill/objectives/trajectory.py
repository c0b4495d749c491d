"""Objectives that fine-tune a pretrained flow model on its own ODE trajectories (BOSS straightening, reflow).

The teacher is the pretrained (EMA) network, frozen; it is integrated with Euler on a fine
uniform grid from `num_noises` seeded noises, and the subclass keeps the states it needs
(`keep_indices`). The student starts from the *same* weights — fully trainable, or frozen with
LoRA adapters (`peft`, Hu et al. 2021) on its linear and convolution layers when `lora_rank > 0`;
adapters are merged into the weights when the pipeline is exported.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from fewstep.pipelines.class_conditional import null_class, sample_shape
from fewstep.samplers import Denoiser, RectifiedFlowPath, get_schedule, sample
from fewstep.samplers.boss import teacher_trajectories
from fewstep.samplers.spec import SamplerSpec

from .base import Objective

#: teacher trajectories integrated per batch while building the dataset.
TRAJECTORY_BATCH = 256


def add_lora(model: nn.Module, rank: int, alpha: float | None = None) -> nn.Module:
    """Freeze `model` and inject LoRA adapters (peft) of `rank` into its Linear / Conv2d layers, in place."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as error:  # pragma: no cover - peft is in the `lora` / `test` extras
        raise ImportError("objective.lora_rank > 0 needs peft: pip install 'fewstep[lora]'") from error
    targets = sorted({name for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))
                      and name and "class_embedding" not in name})
    if not targets:
        raise ValueError(f"{type(model).__name__} has no Linear / Conv2d layers to adapt with LoRA")
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=targets,
                        init_lora_weights=True)
    model.requires_grad_(False)
    inject_adapter_in_model(config, model)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """A copy of `model` with every LoRA adapter merged into its base layer and removed (plain diffusers model)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = copy.deepcopy(model)
    for name, module in list(merged.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent_name) if parent_name else merged, child, module.get_base_layer())
    return merged.requires_grad_(True)


def has_lora(model: nn.Module) -> bool:
    """True if `model` carries peft adapters."""
    return any("lora_" in name for name, _ in model.named_parameters())


class TeacherTrajectoryObjective(Objective):
    """Base: frozen teacher copy, teacher states on a fine grid as the dataset, Euler previews on `self.ts`."""

    def __init__(self, model: nn.Module, num_noises: int = 1024, fine_steps: int = 100,
                 num_train_timesteps: int = 1000, seed: int = 0, lora_rank: int = 0) -> None:
        super().__init__({"model": model})
        if num_noises < 1 or fine_steps < 2:
            raise ValueError(f"need num_noises >= 1 and fine_steps >= 2, got {num_noises} and {fine_steps}")
        self.path = RectifiedFlowPath(num_train_timesteps)
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)  # the same (EMA) weights as the student
        if lora_rank > 0:
            add_lora(model, lora_rank)
        self.num_noises, self.fine_steps, self.seed = num_noises, fine_steps, seed
        self.fine_ts = get_schedule("uniform", self.path, fine_steps)
        self.ts = self.fine_ts  # the grid previews and the exported scheduler use; subclasses narrow it
        self.spec_file: str | None = None

    @abstractmethod
    def keep_indices(self) -> list[int]:
        """Positions on the fine grid whose teacher states the dataset stores."""

    @torch.no_grad()
    def make_dataset(self) -> Dataset:
        """(teacher states at `keep_indices()` [N, k, ...], class labels [N]) for `num_noises` seeded noises."""
        keep = self.keep_indices()
        denoiser = Denoiser(self.teacher, self.path, "flow_prediction")
        generator = torch.Generator().manual_seed(self.seed)
        num_classes = null_class(self.teacher)
        states, labels = [], []
        for start in range(0, self.num_noises, TRAJECTORY_BATCH):
            count = min(TRAJECTORY_BATCH, self.num_noises - start)
            noise = torch.randn((count, *sample_shape(self.teacher)), generator=generator)
            batch_labels = torch.arange(start, start + count) % num_classes
            xs, _ = teacher_trajectories(denoiser, noise, self.fine_ts, class_labels=batch_labels)
            states.append(xs[keep].transpose(0, 1).float())
            labels.append(batch_labels)
        return TensorDataset(torch.cat(states), torch.cat(labels))

    def check_data(self, dataset: Dataset, num_classes: int) -> None:
        """The dataset is made here from the teacher; nothing to check."""

    def velocity_loss(self, x: Tensor, t: Tensor, target: Tensor, labels: Tensor) -> Tensor:
        """Mean squared error of the student's velocity at (x [B, ...], t [B]) against `target`."""
        timestep = self.path.model_time(t.cpu().double()).to(device=x.device, dtype=torch.float32)
        velocity = self.networks["model"](x, timestep, class_labels=labels).sample
        return torch.mean((velocity.float() - target.float()) ** 2)

    @torch.no_grad()
    def sample(self, network: nn.Module, class_labels: Tensor, generator: torch.Generator, num_steps: int,
               guidance_scale: float = 1.0) -> Tensor:
        """Euler on `self.ts` (the grid the network is being specialised to)."""
        x = torch.randn((class_labels.shape[0], *sample_shape(network)), generator=generator, device=class_labels.device)
        return sample(Denoiser(network, self.path, "flow_prediction"), x, self.ts, "ddim", class_labels=class_labels).x

    def exportable(self, network: nn.Module) -> nn.Module:
        """The network to save: LoRA adapters merged into plain weights."""
        return merge_lora(network) if has_lora(network) else network

    def scheduler(self) -> Any:
        """FewStepScheduler: with the spec when there is one (copied into the pipeline), else Euler."""
        from fewstep.pipelines.scheduler import FewStepScheduler

        if self.spec_file is not None:
            return FewStepScheduler(prediction_type="flow_prediction", num_train_timesteps=self.path.num_train_timesteps,
                                    spec=self.spec_file)
        return FewStepScheduler(prediction_type="flow_prediction", num_train_timesteps=self.path.num_train_timesteps,
                                solver="ddim", schedule="uniform")


def load_flow_spec(spec: str, path: RectifiedFlowPath) -> SamplerSpec:
    """A sampler spec made for a rectified-flow model on `path`, or a clear error."""
    loaded = SamplerSpec.load(spec)
    if loaded.path.get("type") != "rectified_flow":
        raise ValueError("this objective regresses a velocity: it needs a rectified-flow teacher and a spec made for it")
    loaded.check_compatible(path)
    return loaded


def spec_path(spec: str) -> str:
    """Absolute path of a spec file (the run may change directory before export)."""
    return str(Path(spec).resolve())
