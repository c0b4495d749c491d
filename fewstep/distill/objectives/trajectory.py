"""Objectives that train a student on a pretrained teacher's ODE trajectories (BOSS straightening, reflow, SlimFlow).

The teacher arrives whole (network, noise path, prediction type, scheduler config); a frozen
copy of its (EMA) network is integrated by `teacher_solver` (default DDIM / Euler) on a uniform
grid of *its own* path from `num_noises` seeded noises, and the subclass keeps the states it
needs (`keep_indices`). The solves are made by `fewstep.distill.teacher_pairs` (one generator
for every such objective; stored as resumable safetensors shards in `pairs_dir`, or in memory).
In BOSS straightening and reflow the student is a rectified flow that starts from the *same* weights — fully
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
from torch.utils.data import Dataset

from fewstep import batch_noise
from fewstep.samplers import Denoiser, NetworkDenoiser, RectifiedFlowPath, get_schedule, get_solver
from fewstep.samplers.spec import SamplerSpec

from ..teacher_pairs import PairRecipe, teacher_pair_dataset

from .base import Objective, Teacher, sample_class_conditional

#: training times of flow matching on a coupling are drawn from [T_MIN, 1] (t = 0 is the data itself).
T_MIN = 1e-3

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
class PairOptions:
    """Options of the teacher pairs an objective learns from (`fewstep.distill.teacher_pairs`)."""

    num_noises: int = 1024  # teacher solves stored
    fine_steps: int = 100  # the teacher's steps on a uniform grid (BOSS: the fine grid its spec lies on)
    teacher_solver: str = "ddim"  # the fewstep solver of the teacher's solves (ddim = Euler for a flow)
    pairs_dir: str | None = None  # store / reuse the pairs as safetensors shards there (None: in memory)
    shard_size: int = 1024  # pairs per shard
    seed: int = 0  # the teacher's noises

    def __post_init__(self) -> None:
        if self.num_noises < 1 or self.fine_steps < 1 or self.shard_size < 1:
            raise ValueError(f"need objective.num_noises, objective.fine_steps and objective.shard_size >= 1, got "
                             f"{self.num_noises}, {self.fine_steps} and {self.shard_size}")
        get_solver(self.teacher_solver)  # a clear error naming the solvers


@dataclass
class TrajectoryOptions(PairOptions):
    """Options shared by the objectives that learn from teacher trajectories (`boss_straighten`, `reflow`)."""

    spec: str | None = None  # a sampler spec (fewstep boss schedule --out): the grid to straighten / preview
    lora_rank: int = 0  # > 0 trains LoRA adapters (peft) instead of every weight

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fine_steps < 2:
            raise ValueError(f"need objective.fine_steps >= 2, got {self.fine_steps}")
        if self.lora_rank < 0:
            raise ValueError(f"objective.lora_rank must be >= 0 (0 trains every weight), got {self.lora_rank}")


class TeacherPairObjective(Objective):
    """Base: a frozen teacher whose solves (`keep_indices()` of its grid) are the dataset; a rectified-flow student."""

    teacher_use = "required"

    def __init__(self, model: nn.Module, options: PairOptions, teacher: Teacher | None) -> None:
        if teacher is None:
            raise ValueError(f"objective.name={self.name} learns from a teacher's trajectories: set "
                             "model.type=pretrained and model.pretrained=PIPELINE_FOLDER (e.g. assets/teachers/mnist_flow)")
        super().__init__({"model": model}, teacher)
        self.options = options
        self.path = RectifiedFlowPath(getattr(teacher.path, "num_train_timesteps", 1000))  # the student's path
        self.frozen = teacher.network.eval().requires_grad_(False)  # the teacher's (EMA) weights
        self.num_noises, self.fine_steps, self.seed = options.num_noises, options.fine_steps, options.seed
        self.fine_ts = get_schedule("uniform", teacher.path, self.fine_steps)

    def teacher_denoiser(self) -> Denoiser:
        """The frozen teacher as x0-predictor on its own path, with its own prediction type."""
        return Denoiser(self.frozen, self.teacher.path, self.teacher.prediction_type)

    @abstractmethod
    def keep_indices(self) -> list[int]:
        """Positions on the teacher's grid whose states the dataset stores."""

    def pair_teacher(self) -> Teacher:
        """The teacher whose solves are the data (default: the objective's teacher)."""
        return self.teacher

    def pair_recipe(self) -> PairRecipe:
        """How the teacher's solves are made: `teacher_solver` on the uniform `fine_steps` grid, `keep_indices()` kept."""
        opts = self.options
        return PairRecipe(solver=opts.teacher_solver, ts=self.fine_ts, keep=tuple(self.keep_indices()), seed=opts.seed,
                          shard_size=opts.shard_size)

    def make_dataset(self, real_data: Any = None) -> Dataset:
        """Teacher pairs (states [N, k, ...], labels [N]) for `num_noises` seeded noises, stored in `pairs_dir` if set.

        `real_data` (the loop's builder of the config's dataset) is not used: the data is the teacher's.
        """
        return teacher_pair_dataset(self.pair_teacher(), self.pair_recipe(), self.num_noises, self.options.pairs_dir)

    def check_data(self, dataset: Dataset, num_classes: int) -> None:
        """The dataset is made here from the teacher; nothing to check."""

    def student(self) -> NetworkDenoiser:
        """The student (the loop's current, possibly wrapped network) on its rectified-flow path."""
        return NetworkDenoiser(self.networks["model"], self.path, "flow_prediction")

    def velocity(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """The student's velocity [B, ...] at (x [B, ...], t [B] float64 on the CPU, t = 1 noise)."""
        return self.student().raw(x, t.cpu().double(), labels)

    def velocity_loss(self, x: Tensor, t: Tensor, target: Tensor, labels: Tensor) -> Tensor:
        """Mean squared error of the student's velocity at (x [B, ...], t [B]) against `target`."""
        return torch.mean((self.velocity(x, t, labels).float() - target.float()) ** 2)

    def coupling_loss(self, data: Tensor, noise: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Flow matching on a coupling (rectified flow): x_t on the student's path between data and its paired
        noise [B, ...], t ~ U(T_MIN, 1), regressing the path's velocity target (noise - data)."""
        t = T_MIN + (1 - T_MIN) * batch_noise.rand((data.shape[0],), generator, data.device, torch.float64)
        t = t.cpu()
        student = self.student()
        return self.velocity_loss(student.noise(data, noise, t), t, student.target(data, noise, t), labels)


class TeacherTrajectoryObjective(TeacherPairObjective):
    """Base: a student that starts from the teacher's weights (or LoRA on them), Euler previews on `self.ts`."""

    Options = TrajectoryOptions

    def __init__(self, model: nn.Module, options: TrajectoryOptions, teacher: Teacher | None) -> None:
        super().__init__(model, options, teacher)
        if options.lora_rank > 0:
            add_lora(model, options.lora_rank)
        self.ts = self.fine_ts  # the grid previews and the exported scheduler use; subclasses narrow it
        self.spec_file: str | None = None

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
