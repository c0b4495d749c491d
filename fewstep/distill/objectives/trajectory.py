"""Objectives that train a student on a pretrained teacher's ODE trajectories (BOSS straightening, reflow).

The teacher arrives whole (network, noise path, prediction type, scheduler config); a frozen
copy of its (EMA) network is integrated with DDIM / Euler on a fine uniform grid of *its own*
path from `num_noises` seeded noises, and the subclass keeps the states it needs
(`keep_indices`). The student is a rectified flow that starts from the *same* weights — fully
trainable, or frozen with LoRA adapters (`peft`, Hu et al. 2021) on its linear and
convolution layers when `lora_rank > 0`; adapters are merged into the weights on export.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from fewstep.pipelines.class_conditional import null_class, sample_shape
from fewstep.samplers import Denoiser, RectifiedFlowPath, get_schedule
from fewstep.samplers.boss import teacher_trajectories
from fewstep.samplers.spec import SamplerSpec

from .base import Objective, Teacher, sample_class_conditional

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


@dataclass
class TrajectoryOptions:
    """Options shared by the objectives that learn from teacher trajectories (`boss_straighten`, `reflow`)."""

    spec: str | None = None  # a sampler spec (fewstep boss schedule --out): the grid to straighten / preview
    num_noises: int = 1024  # teacher trajectories stored
    fine_steps: int = 100  # the teacher's fine uniform grid (a BOSS spec must lie on it)
    lora_rank: int = 0  # > 0 trains LoRA adapters (peft) instead of every weight
    seed: int = 0  # the teacher's noises

    def __post_init__(self) -> None:
        if self.num_noises < 1 or self.fine_steps < 2:
            raise ValueError(f"need objective.num_noises >= 1 and objective.fine_steps >= 2, got {self.num_noises} "
                             f"and {self.fine_steps}")
        if self.lora_rank < 0:
            raise ValueError(f"objective.lora_rank must be >= 0 (0 trains every weight), got {self.lora_rank}")


class TeacherTrajectoryObjective(Objective):
    """Base: frozen teacher copy, teacher states on a fine grid as the dataset, Euler previews on `self.ts`."""

    Options = TrajectoryOptions
    teacher_use = "required"

    def __init__(self, model: nn.Module, options: TrajectoryOptions, teacher: Teacher | None) -> None:
        if teacher is None:
            raise ValueError(f"objective.name={self.name} learns from a teacher's trajectories: set "
                             "model.type=pretrained and model.pretrained=PIPELINE_FOLDER (e.g. assets/teachers/mnist_flow)")
        super().__init__({"model": model}, teacher)
        self.options = options
        self.path = RectifiedFlowPath(getattr(teacher.path, "num_train_timesteps", 1000))  # the student's path
        self.frozen = teacher.network.eval().requires_grad_(False)  # the teacher's (EMA) weights; model is a copy
        if options.lora_rank > 0:
            add_lora(model, options.lora_rank)
        self.num_noises, self.fine_steps, self.seed = options.num_noises, options.fine_steps, options.seed
        self.fine_ts = get_schedule("uniform", teacher.path, self.fine_steps)
        self.ts = self.fine_ts  # the grid previews and the exported scheduler use; subclasses narrow it
        self.spec_file: str | None = None

    def teacher_denoiser(self) -> Denoiser:
        """The frozen teacher as x0-predictor on its own path, with its own prediction type."""
        return Denoiser(self.frozen, self.teacher.path, self.teacher.prediction_type)

    @abstractmethod
    def keep_indices(self) -> list[int]:
        """Positions on the fine grid whose teacher states the dataset stores."""

    @torch.no_grad()
    def make_dataset(self, real_data: Any = None) -> Dataset:
        """(teacher states at `keep_indices()` [N, k, ...], class labels [N]) for `num_noises` seeded noises.

        `real_data` (the loop's builder of the config's dataset) is not used: the data is the teacher's.
        """
        keep = self.keep_indices()
        denoiser = self.teacher_denoiser()
        generator = torch.Generator().manual_seed(self.seed)
        num_classes = null_class(self.frozen)
        states, labels = [], []
        for start in range(0, self.num_noises, TRAJECTORY_BATCH):
            count = min(TRAJECTORY_BATCH, self.num_noises - start)
            noise = torch.randn((count, *sample_shape(self.frozen)), generator=generator)
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
    def sample(self, networks: dict[str, nn.Module], class_labels: Tensor, generator: torch.Generator, num_steps: int,
               guidance_scale: float = 1.0) -> Tensor:
        """Euler on `self.ts` (the grid the student is being specialised to)."""
        return sample_class_conditional(networks["model"], self.path, "flow_prediction", class_labels, generator,
                                        self.ts, "ddim")

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
