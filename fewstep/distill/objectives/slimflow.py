"""SlimFlow (Zhu, Liu, Liu, ECCV 2024, arXiv 2407.12718): small one-step students from a rectified-flow teacher.

Two objectives, run one after the other (t = 0 data, t = 1 noise; a flow's velocity is noise - data):

1. `slimflow_reflow` — *annealing reflow*. A student of any size (a narrower `UNet2DModel`, or the
   MLP for 2-D data), randomly initialised, is trained by flow matching on the teacher's
   (noise z, ODE sample x) pairs, but its noise is `sqrt(1 - beta^2) z + beta eps` with fresh
   eps ~ N(0, I) (still N(0, I) per coordinate) and beta falling linearly from `beta_start` to
   `beta_end` over the first `anneal_steps`: training starts as ordinary flow matching (beta = 1,
   the data paired with unrelated noise) and ends as reflow on the teacher's coupling (beta = 0).
   `flip` flips image and paired noise horizontally together (off by default: a flipped digit is
   another symbol).
2. `slimflow_distill` — *flow-guided distillation* of that small 2-rectified flow (the teacher of
   this stage, frozen EMA weights; the student starts from the same weights) into one step:
   the student's one-step sample x_hat = z - v(z, 1) is pulled to the pair's sample x (one-step
   loss) and to a two-step target: with s ~ U[guide_t_min, guide_t_max], x' = z - s sg(v(z, 1))
   (the student's straight line, a fraction s of the way to the data), and the frozen flow
   finishes from x' at time 1 - s in one Euler step (for a flow that is its x0 prediction):
   target = sg(x' - (1 - s) v_teacher(x', 1 - s)). Distances: L2 or pseudo-Huber (the paper
   uses LPIPS, whose VGG weights cannot be fetched offline).

Both objectives read their pairs from the shared generator (`fewstep.distill.teacher_pairs`):
any fewstep solver (`teacher_solver`, `fine_steps`) or sampler spec (`teacher_spec`), stored in
`pairs_dir` so stage 2 and other runs reuse them. Both export a `OneStepFlowPipeline` (one
Euler step by default; more steps integrate the student's flow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fewstep import batch_noise
from fewstep.pipelines.class_conditional import null_class, sample_shape
from fewstep.samplers import NetworkDenoiser, get_schedule

from ..teacher_pairs import PairRecipe
from .base import Teacher, check_teacher_kind, register_objective, sample_class_conditional
from .trajectory import PairOptions, TeacherPairObjective

DISTANCES = ("l2", "pseudo_huber")


@dataclass
class SlimFlowPairOptions(PairOptions):
    """Where SlimFlow's pairs come from: by default 4,096 DPM-Solver++(2M) solves of 16 steps, or a sampler spec."""

    num_noises: int = 4096
    fine_steps: int = 16
    teacher_solver: str = "dpmpp_2m"
    teacher_spec: str | None = None  # a sampler spec (BOSS, learned) fixing the teacher's solver and grid instead
    teacher_guidance: float = 1.0  # the teacher's CFG scale while making pairs (baked into the student)


@dataclass
class AnnealingReflowOptions(SlimFlowPairOptions):
    """Options of `slimflow_reflow` (annealing reflow)."""

    anneal_steps: int = 1000  # beta goes linearly from beta_start to beta_end over these steps, then stays
    beta_start: float = 1.0  # 1: fresh noise (flow matching); 0: the paired noise (reflow)
    beta_end: float = 0.0
    flip: bool = False  # flip image and paired noise horizontally together (p = 0.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("beta_start", "beta_end"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"objective.{key} must lie in [0, 1] (the weight of fresh noise), got {getattr(self, key)}")
        if self.anneal_steps < 0:
            raise ValueError(f"objective.anneal_steps must be >= 0 (0: beta_end from the start), got {self.anneal_steps}")


@dataclass
class FlowGuidedOptions(SlimFlowPairOptions):
    """Options of `slimflow_distill` (flow-guided distillation)."""

    pairs_teacher: str | None = None  # the pipeline whose pairs are used (default: model.teacher, the 2-rectified flow)
    guidance_weight: float = 1.0  # weight of the two-step term (0: one-step loss only)
    guide_t_min: float = 0.2
    guide_t_max: float = 0.8
    distance: str = "l2"  # l2 | pseudo_huber
    huber_c: float | None = None  # pseudo-Huber c (default 0.00054 sqrt(d), Song & Dhariwal 2023)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.distance not in DISTANCES:
            raise ValueError(f"objective.distance={self.distance!r} is not a distance; choose one of {', '.join(DISTANCES)} "
                             "(LPIPS needs VGG weights that fewstep cannot download)")
        if not 0.0 < self.guide_t_min <= self.guide_t_max < 1.0:
            raise ValueError(f"need 0 < objective.guide_t_min <= objective.guide_t_max < 1, got {self.guide_t_min} and "
                             f"{self.guide_t_max}")
        if self.guidance_weight < 0 or (self.huber_c is not None and self.huber_c <= 0):
            raise ValueError("objective.guidance_weight must be >= 0 and objective.huber_c > 0")


def beta_at(step: int, anneal_steps: int, beta_start: float = 1.0, beta_end: float = 0.0) -> float:
    """SlimFlow's annealing weight of fresh noise at `step`: linear from beta_start to beta_end over anneal_steps."""
    progress = 1.0 if anneal_steps == 0 else min(step / anneal_steps, 1.0)
    return beta_start + (beta_end - beta_start) * progress


def annealed_noise(paired: Tensor, fresh: Tensor, beta: float) -> Tensor:
    """sqrt(1 - beta^2) z_pair + beta eps [B, ...]: unit variance per coordinate for independent N(0, I) inputs."""
    return math.sqrt(max(1.0 - beta * beta, 0.0)) * paired + beta * fresh


def flip_pairs(noise: Tensor, data: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Flip image and its paired noise [B, C, H, W] horizontally together, each pair with probability 1/2."""
    flip = (batch_noise.rand((noise.shape[0],), generator, noise.device) < 0.5).reshape(-1, 1, 1, 1)
    return torch.where(flip, noise.flip(-1), noise), torch.where(flip, data.flip(-1), data)


def pseudo_huber_c(sample_dim: int) -> float:
    """The pseudo-Huber constant of improved consistency training: 0.00054 sqrt(d)."""
    return 0.00054 * math.sqrt(sample_dim)


def pair_distance(a: Tensor, b: Tensor, kind: str = "l2", c: float | None = None) -> Tensor:
    """Mean distance between samples a, b [B, ...]: squared error per coordinate, or sqrt(||a - b||^2 + c^2) - c."""
    if kind == "l2":
        return torch.mean((a.float() - b.float()) ** 2)
    diff = (a.float() - b.float()).flatten(1)
    c = pseudo_huber_c(diff.shape[1]) if c is None else c
    return torch.mean(torch.sqrt(diff.pow(2).sum(1) + c * c) - c)


def two_step_target(z: Tensor, velocity: Tensor, s: Tensor, guide: Any, labels: Tensor) -> Tensor:
    """SlimFlow's detached two-step target [B, ...]: from x' = z - s v, the guide flow's x0 at time 1 - s.

    z: noise [B, ...]; velocity: the student's v(z, 1) [B, ...]; s [B]: the fraction of the path the
    student covers; guide: an x0-predictor on a flow path taking per-sample times (`NetworkDenoiser`),
    whose x0 from x' at 1 - s is exactly one Euler step of its velocity to t = 0.
    """
    with torch.no_grad():
        s_b = s.to(z.dtype).reshape(-1, *[1] * (z.ndim - 1))
        x_mid = z - s_b * velocity.detach()
        return guide(x_mid, 1.0 - s.detach().cpu().double(), labels).detach()


def check_student(objective: str, model: nn.Module, teacher: Teacher) -> None:
    """The student must make the teacher's samples for the teacher's classes (before any pair is made)."""
    if tuple(sample_shape(model)) != tuple(teacher.sample_shape):
        raise ValueError(f"objective.name={objective}: the student makes samples of shape {tuple(sample_shape(model))} "
                         f"but the teacher makes {tuple(teacher.sample_shape)}; set model.in_channels / model.sample_size "
                         "(unet) or model.dim (mlp) to the teacher's")
    if null_class(model) != teacher.num_classes:
        raise ValueError(f"objective.name={objective}: the student has {null_class(model)} classes but the teacher "
                         f"{teacher.num_classes}; set model.num_classes={teacher.num_classes}")


class SlimFlowObjective(TeacherPairObjective):
    """Shared by both stages: a flow teacher, a student of the teacher's shape, (noise, sample) pairs, one-step export."""

    model_types = ("unet", "mlp", "pretrained")

    def __init__(self, model: nn.Module, options: SlimFlowPairOptions, teacher: Teacher | None) -> None:
        if teacher is None:
            raise ValueError(f"objective.name={self.name} distils a rectified-flow teacher: set model.teacher=PIPELINE_FOLDER "
                             "(e.g. assets/teachers/mnist_flow)")
        check_teacher_kind(self.name, teacher, "flow")
        check_student(self.name, model, teacher)
        super().__init__(model, options, teacher)

    def keep_indices(self) -> list[int]:
        """The noise (first) and the teacher's sample (last): the recipe's default."""
        return list(self.pair_recipe().keep)

    def pair_recipe(self) -> PairRecipe:
        """`teacher_spec` if given, else `teacher_solver` on the uniform `fine_steps` grid; with `teacher_guidance`."""
        opts = self.options
        if opts.teacher_spec:
            return PairRecipe.from_spec(opts.teacher_spec, self.pair_teacher().path, guidance_scale=opts.teacher_guidance,
                                        seed=opts.seed, shard_size=opts.shard_size)
        return PairRecipe(solver=opts.teacher_solver, ts=get_schedule("uniform", self.pair_teacher().path, opts.fine_steps),
                          guidance_scale=opts.teacher_guidance, seed=opts.seed, shard_size=opts.shard_size)

    @torch.no_grad()
    def sample(self, networks: dict[str, nn.Module], class_labels: Tensor, generator: torch.Generator, num_steps: int,
               guidance_scale: float = 1.0) -> Tensor:
        """Euler on the student's flow with `num_steps` uniform steps (1: the one-step generator)."""
        return sample_class_conditional(networks["model"], self.path, "flow_prediction", class_labels, generator,
                                        get_schedule("uniform", self.path, num_steps), "ddim")

    def scheduler(self) -> Any:
        """Euler (DDIM on a flow) on a uniform grid: one step is the one-step generator."""
        from fewstep.pipelines.scheduler import FewStepScheduler

        return FewStepScheduler(prediction_type="flow_prediction", num_train_timesteps=self.path.num_train_timesteps,
                                solver="ddim", schedule="uniform")

    def export(self, networks: dict[str, nn.Module], folder: Any) -> None:
        """Save the student (EMA weights) as a `OneStepFlowPipeline` (one step by default)."""
        from fewstep.pipelines.one_step import OneStepFlowPipeline

        OneStepFlowPipeline(unet=self.exportable(networks["model"]), scheduler=self.scheduler()).save_pretrained(str(folder))


@register_objective("slimflow_reflow")
class AnnealingReflow(SlimFlowObjective):
    """SlimFlow stage 1: flow matching whose noise anneals from fresh (beta = 1) to the teacher's paired noise (beta = 0)."""

    Options = AnnealingReflowOptions

    def beta(self, step: int) -> float:
        opts = self.options
        return beta_at(step, opts.anneal_steps, opts.beta_start, opts.beta_end)

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        states, labels = batch  # [B, 2, ...] (paired noise, teacher sample), [B]
        paired, data = states[:, 0], states[:, -1]
        if self.options.flip and data.ndim == 4:
            paired, data = flip_pairs(paired, data, generator)
        beta = self.beta(step)
        fresh = batch_noise.randn(paired.shape, generator, paired.device, paired.dtype)
        loss = self.coupling_loss(data, annealed_noise(paired, fresh, beta), labels, generator)
        return {"loss": loss, "beta": torch.tensor(beta)}


@register_objective("slimflow_distill")
class FlowGuidedDistillation(SlimFlowObjective):
    """SlimFlow stage 2: one-step loss on the pairs + the two-step term against the frozen small 2-rectified flow."""

    Options = FlowGuidedOptions

    def __init__(self, model: nn.Module, options: FlowGuidedOptions, teacher: Teacher | None) -> None:
        self._pairs_teacher: Teacher | None = None
        super().__init__(model, options, teacher)
        assert teacher is not None
        self.guide = NetworkDenoiser(teacher.network, teacher.path, teacher.prediction_type)

    def pair_teacher(self) -> Teacher:
        """`pairs_teacher` when set (e.g. the large teacher whose stage-1 pairs are reused), else the 2-rectified flow."""
        if self.options.pairs_teacher is None:
            return self.teacher
        if self._pairs_teacher is None:
            from fewstep.pipelines.loading import load_teacher

            device = next(self.teacher.network.parameters()).device  # the loop's device (teachers move there first)
            self._pairs_teacher = load_teacher(self.options.pairs_teacher, device)
            check_teacher_kind(self.name, self._pairs_teacher, "flow")
            check_student(self.name, self.networks["model"], self._pairs_teacher)
        return self._pairs_teacher

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        states, labels = batch  # [B, 2, ...] (noise, sample), [B]
        z, data = states[:, 0], states[:, -1]
        opts = self.options
        velocity = self.velocity(z, torch.ones(z.shape[0], dtype=torch.float64), labels)
        one_step = z - velocity
        one_step_loss = pair_distance(one_step, data, opts.distance, opts.huber_c)
        out = {"one_step": one_step_loss.detach()}
        loss = one_step_loss
        if opts.guidance_weight > 0:
            s = opts.guide_t_min + (opts.guide_t_max - opts.guide_t_min) * batch_noise.rand(
                (z.shape[0],), generator, z.device, torch.float64)
            target = two_step_target(z, velocity, s, self.guide, labels)
            two_step_loss = pair_distance(one_step, target, opts.distance, opts.huber_c)
            loss = loss + opts.guidance_weight * two_step_loss
            out["two_step"] = two_step_loss.detach()
        return {"loss": loss, **out}
