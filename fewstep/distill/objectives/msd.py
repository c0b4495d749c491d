"""MSD (Song et al. 2024, arXiv 2410.23274): K one-step students by distribution matching (DMD / DMD2), routed by class.

The teacher's classes are split into K disjoint, balanced groups (`fewstep.distill.partitions`);
student k learns to generate its group's classes in one step (or at a fixed list of times,
DMD2's few-step variant) by DMD's distribution matching (Yin et al. 2024, arXiv 2311.18828):

- generator: x = G_k(z, c), the student's x0 prediction at t = 1 from pure noise z (in the
  teacher's parameterisation: a student is a network like the teacher's, by default a copy of
  it; a smaller one comes from `model:` or from TSM, `objective.name=tsm`);
- real score: the frozen teacher's x0 at x_t = alpha x + sigma eps, with classifier-free guidance
  `guidance_scale` (the student then needs none);
- fake score: critic k, a trainable copy of the teacher, trained by denoising on G_k's samples,
  `critic_steps` updates per generator update (the two time-scale rule; the loop's phases);
- generator loss: `0.5 ||x - sg(x - grad)||^2` with grad = (x0_fake - x0_real) / mean|x - x0_real|;
- options: DMD1's regression on teacher ODE pairs of *all* classes (`regression_weight`), and
  DMD2's GAN head on the critic's bottleneck features, trained on real data of the group
  (`gan_weight`, non-saturating).

`num_students=1` is plain DMD2 (also registered as `objective.name=dmd`). All students train in
every step (each on `batch_per_student` samples of its own classes), so with several processes
each process runs every student on its share and accelerate averages the gradients
(data-parallel per student; see docs/training.md).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from fewstep import batch_noise
from fewstep.pipelines.class_conditional import null_class, sample_shape
from fewstep.samplers import NetworkDenoiser, renoising_sample

from .. import distribution_matching
from ..distribution_matching import (
    DiscriminatorHead, FeatureTap, feature_width, gan_discriminator_loss, gan_generator_loss,
)
from ..partitions import PARTITIONS, check_group_count, partition_classes, routing_table
from ..teacher_pairs import PairRecipe, teacher_pair_dataset
from .base import Objective, Teacher, register_objective

#: teacher solver of the regression pairs (DMD1).
PAIR_SOLVER = "dpmpp_2m"


@dataclass
class DistributionMatchingOptions:
    """Options of `msd` / `dmd` (see the module docstring; defaults sized for CPU)."""

    num_students: int = 1  # K: groups of classes, one student each
    partition: str = "contiguous"  # contiguous | random | similarity (of the teacher's class means)
    partition_seed: int = 0  # partition=random
    guidance_scale: float = 1.0  # the teacher's CFG scale in the real score
    critic_steps: int = 2  # critic (fake score) updates per generator update; DMD2 uses 5
    critic_lr_scale: float = 1.0  # critic LR = optim.lr * critic_lr_scale
    batch_per_student: int = 32  # generated samples per student per micro-batch
    t_min: float = 0.02  # DM / critic times t ~ U[t_min, t_max]
    t_max: float = 0.98
    student_times: list[float] = field(default_factory=lambda: [1.0])  # times G is evaluated at; [1.0] = one step
    regression_weight: float = 0.0  # DMD1: L2 to teacher ODE pairs of all classes (0: off)
    regression_pairs: int = 512
    regression_steps: int = 16  # the teacher's DPM-Solver++(2M) steps for the pairs
    gan_weight: float = 0.0  # DMD2: generator's non-saturating GAN loss weight (0: off)
    gan_critic_weight: float = 1.0  # weight of the discriminator loss in the critic's loss
    seed: int = 0  # pair noises and the similarity partition's probe noise

    def __post_init__(self) -> None:
        if self.num_students < 1:
            raise ValueError(f"objective.num_students must be >= 1, got {self.num_students}")
        if self.partition not in PARTITIONS:
            raise ValueError(f"objective.partition={self.partition!r} is not a partition; choose one of {', '.join(PARTITIONS)}")
        if self.critic_steps < 1:
            raise ValueError(f"objective.critic_steps must be >= 1 (the critic must follow the generator), got {self.critic_steps}")
        if not 0 < self.t_min < self.t_max <= 1:
            raise ValueError(f"need 0 < objective.t_min < objective.t_max <= 1, got {self.t_min} and {self.t_max}")
        times = [float(t) for t in self.student_times]
        if not times or times[0] != 1.0 or any(b >= a for a, b in zip(times, times[1:])) or times[-1] <= 0:
            raise ValueError(f"objective.student_times must start at 1.0 and decrease inside (0, 1], got {self.student_times}")
        self.student_times = times
        for key in ("batch_per_student", "regression_pairs", "regression_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"objective.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("regression_weight", "gan_weight", "gan_critic_weight", "critic_lr_scale"):
            if getattr(self, key) < 0:
                raise ValueError(f"objective.{key} must be >= 0, got {getattr(self, key)}")


@register_objective("msd")
class MultiStudentDistillation(Objective):
    """K students, one per class group, each distilled by DMD2 against its own critic (see the module docstring)."""

    Options = DistributionMatchingOptions
    teacher_use = "required"
    model_types = ("pretrained", "unet", "mlp")

    def __init__(self, model: nn.Module, options: DistributionMatchingOptions, teacher: Teacher | None) -> None:
        teacher = check_teacher(self.name, teacher, model)
        self.options = options
        self.num_classes = teacher.num_classes
        check_group_count(self.num_classes, options.num_students)
        self.groups = partition_classes(self.num_classes, options.num_students, options.partition, options.partition_seed,
                                        class_means(teacher, options.seed) if options.partition == "similarity" else None)
        self.routing = routing_table(self.groups, self.num_classes)
        networks: dict[str, nn.Module] = {}
        for k in range(options.num_students):
            networks[student_name(k)] = model if k == 0 else copy.deepcopy(model)
        for k in range(options.num_students):
            networks[critic_name(k)] = copy.deepcopy(teacher.network).requires_grad_(True).train()
            if options.gan_weight > 0:
                networks[head_name(k)] = DiscriminatorHead(feature_width(teacher.network))
        super().__init__(networks, teacher)
        self.phases = ("critic",) * options.critic_steps + ("generator",)
        self.main_network = student_name(0)
        self.ema_networks = tuple(student_name(k) for k in range(options.num_students))
        self.path, self.prediction_type = teacher.path, teacher.prediction_type
        self.real = NetworkDenoiser(teacher.network, teacher.path, teacher.prediction_type)
        self.null_label = teacher.num_classes
        self.taps = {k: FeatureTap(networks[critic_name(k)]) for k in range(options.num_students)} if options.gan_weight > 0 else {}
        self.student_times = torch.tensor(options.student_times, dtype=torch.float64)
        self.has_pairs = options.regression_weight > 0

    # -- data ----------------------------------------------------------------------------

    def make_dataset(self, real_data: Callable[[], Dataset]) -> Dataset:
        """The config's dataset (real images of every class, for the GAN head), with teacher pairs when regressing."""
        real = real_data()
        if not self.has_pairs:
            return real
        noise, samples, labels = self.teacher_pairs()
        return PairedDataset(real, TensorDataset(noise, samples, labels))

    def teacher_pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """(noise, teacher ODE sample, label) for `regression_pairs` seeded noises, classes cycled (DMD1's dataset).

        Made by the shared teacher-pair generator (`fewstep.distill.teacher_pairs`): the guided
        teacher's DPM-Solver++(2M) on a logSNR grid of `regression_steps`.
        """
        opts, teacher = self.options, self.teacher
        assert teacher is not None
        recipe = PairRecipe.from_solver(PAIR_SOLVER, teacher.path, opts.regression_steps, schedule="logsnr",
                                        guidance_scale=opts.guidance_scale, seed=opts.seed)
        states, labels = teacher_pair_dataset(teacher, recipe, opts.regression_pairs, progress=False).tensors
        return states[:, 0], states[:, 1], labels

    def check_data(self, dataset: Dataset, num_classes: int) -> None:
        """Real items must have the teacher's sample shape and labels inside its classes (GAN head's real data)."""
        item = dataset[0]
        shape = tuple(item[0].shape)
        if self.teacher is not None and shape != tuple(self.teacher.sample_shape):
            raise ValueError(f"data items have shape {shape} but the teacher makes {tuple(self.teacher.sample_shape)}; "
                             "set data.name to the teacher's data (e.g. mnist for the MNIST teachers)")
        classes = getattr(dataset, "classes", None)
        if classes is not None and len(classes) > self.num_classes:
            raise ValueError(f"the dataset has {len(classes)} classes but the teacher {self.num_classes}")

    # -- generation ----------------------------------------------------------------------

    def student(self, k: int, networks: dict[str, nn.Module] | None = None) -> NetworkDenoiser:
        """Student k as an x0-predictor on the teacher's path."""
        return NetworkDenoiser((networks or self.networks)[student_name(k)], self.path, self.prediction_type)

    def draw_labels(self, k: int, count: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """`count` labels drawn uniformly from group k."""
        group = torch.tensor(self.groups[k], device=device)
        return group[batch_noise.randint(0, len(self.groups[k]), (count,), generator, device)]

    def draw_times(self, count: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """t ~ U[t_min, t_max] [count] (float64 CPU), snapped to a discrete teacher's grid."""
        u = batch_noise.rand((count,), generator, device, torch.float64).cpu()
        return self.real.snap(self.options.t_min + (self.options.t_max - self.options.t_min) * u)

    def generate(self, student: NetworkDenoiser, labels: Tensor, z: Tensor, generator: torch.Generator | None,
                 train_step: int | None = None) -> Tensor:
        """Samples [B, ...] from noise z at `student_times` (`fewstep.samplers.renoising_sample`).

        `train_step` None runs every time (inference); else the gradient flows through the
        evaluation at time index `train_step` only (DMD2's backward simulation).
        """
        return renoising_sample(student, z, self.student_times, labels, generator, train_step)

    def _train_samples(self, k: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        """(x = G_k(z, c) [B, ...], labels [B]) for one training micro-batch of student k."""
        count = self.options.batch_per_student
        labels = self.draw_labels(k, count, generator, device)
        z = batch_noise.randn((count, *self.teacher.sample_shape), generator, device)
        step = int(torch.randint(len(self.student_times), (1,), generator=generator, device=device))
        return self.generate(self.student(k), labels, z, generator, step), labels

    # -- losses --------------------------------------------------------------------------

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        device = batch[0].device
        logs: dict[str, Tensor] = {}
        total = torch.zeros((), device=device)
        for k in range(self.options.num_students):
            terms = self.critic_loss(k, batch, generator) if phase == "critic" else self.generator_loss(k, batch, generator)
            for name, value in terms.items():
                if name == "loss":
                    total = total + value
                else:
                    logs[name] = logs.get(name, 0) + value.detach() / self.options.num_students
        return {"loss": total, **logs}

    def critic_loss(self, k: int, batch: Any, generator: torch.Generator) -> dict[str, Tensor]:
        """Critic k: denoising loss on G_k's samples (+ the GAN discriminator loss on real data of group k)."""
        device = batch[0].device
        with torch.no_grad():
            x, labels = self._train_samples(k, generator, device)
        critic = NetworkDenoiser(self.networks[critic_name(k)], self.path, self.prediction_type)
        t = self.draw_times(x.shape[0], generator, device)
        eps = batch_noise.randn(x.shape, generator, device, x.dtype)
        x_t = critic.noise(x, eps, t)
        if self.options.gan_weight <= 0:
            denoise = F.mse_loss(critic.raw(x_t, t, labels).float(), critic.target(x, eps, t).float())
            return {"loss": denoise, "critic_loss": denoise}
        # times and noise are drawn for every real row, then group k's rows kept: the draws do not
        # depend on how many of a process's rows belong to the group
        real, real_labels, mask = self.group_items(k, batch)
        t_real = self.draw_times(mask.shape[0], generator, device)[mask.cpu()]
        eps_real = batch_noise.randn(batch[0].shape, generator, device, real.dtype)[mask]
        real_t = critic.noise(real, eps_real, t_real)
        out = critic.raw(torch.cat([x_t, real_t]), torch.cat([t, t_real]), torch.cat([labels, real_labels]))
        logits = self.networks[head_name(k)](self.taps[k].take())
        denoise = F.mse_loss(out[: x.shape[0]].float(), critic.target(x, eps, t).float())
        expected = mask.shape[0] * len(self.groups[k]) / self.num_classes  # group k's rows in a batch, on average
        disc = gan_discriminator_loss(logits[: x.shape[0]], logits[x.shape[0]:], real_count=expected)
        return {"loss": denoise + self.options.gan_critic_weight * disc, "critic_loss": denoise, "gan_d": disc}

    def generator_loss(self, k: int, batch: Any, generator: torch.Generator) -> dict[str, Tensor]:
        """Student k: the DM surrogate (+ GAN generator loss, + regression on teacher pairs)."""
        device = batch[0].device
        x, labels = self._train_samples(k, generator, device)
        t = self.draw_times(x.shape[0], generator, device)
        eps = batch_noise.randn(x.shape, generator, device, x.dtype)
        critic = NetworkDenoiser(self.networks[critic_name(k)], self.path, self.prediction_type)
        with torch.no_grad():
            x_t = critic.noise(x.detach(), eps, t)
            x0_real = self.real(x_t, t, labels, self.options.guidance_scale, self.null_label)
            x0_fake = critic(x_t, t, labels)
        loss, terms = distribution_matching.distribution_matching_loss(x, x0_real, x0_fake)
        if self.options.gan_weight > 0:
            with frozen(self.networks[critic_name(k)], self.networks[head_name(k)]):  # gradient reaches x only
                critic.raw(critic.noise(x, eps, t), t, labels)
                gan = gan_generator_loss(self.networks[head_name(k)](self.taps[k].take()))
            loss = loss + self.options.gan_weight * gan
            terms["gan_g"] = gan.detach()
        if self.has_pairs:
            noise, target, pair_labels = batch[2], batch[3], batch[4]
            fitted = self.generate(self.student(k), pair_labels, noise, generator, train_step=0)
            regression = F.mse_loss(fitted.float(), target.float())
            loss = loss + self.options.regression_weight * regression
            terms["regression"] = regression.detach()
        return {"loss": loss, **terms}

    def group_items(self, k: int, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        """(items, labels, mask [B]): the real items of the micro-batch whose labels belong to group k (possibly none)."""
        x, labels = batch[0], batch[1]
        mask = torch.isin(labels, torch.tensor(self.groups[k], device=labels.device))
        return x[mask], labels[mask], mask

    def signature(self) -> dict[str, Any]:
        """A run resumes only with the same students: the routing table and the student times."""
        return {"routing": list(self.routing), "student_times": list(self.options.student_times)}

    def param_groups(self, phase: str) -> list[dict[str, Any]]:
        """Critic phase: every critic (and GAN head) at lr x critic_lr_scale; generator phase: every student."""
        if phase == "critic":
            names = [n for n in self.networks if n.startswith(("critic_", "head_"))]
            params = [p for n in names for p in self.networks[n].parameters() if p.requires_grad]
            return [{"params": params, "lr_scale": self.options.critic_lr_scale}]
        return [{"params": [p for k in range(self.options.num_students) for p in self.networks[student_name(k)].parameters()
                            if p.requires_grad]}]

    # -- sampling and export -------------------------------------------------------------

    @torch.no_grad()
    def sample(self, networks: dict[str, nn.Module], class_labels: Tensor, generator: torch.Generator, num_steps: int,
               guidance_scale: float = 1.0) -> Tensor:
        """Each label's student from seeded noise at `student_times` (num_steps and guidance_scale are the training's)."""
        z = torch.randn((class_labels.shape[0], *self.teacher.sample_shape), generator=generator, device=class_labels.device)
        return self.route(networks, class_labels, z, generator)

    def route(self, networks: dict[str, nn.Module], labels: Tensor, z: Tensor, generator: torch.Generator | None) -> Tensor:
        """Samples [B, ...] for labels [B] from noise z, each row generated by its class's student."""
        out = torch.empty_like(z)
        owner = torch.tensor(self.routing, device=labels.device)[labels]
        for k in range(self.options.num_students):
            rows = torch.nonzero(owner == k).squeeze(1)
            if rows.numel():
                out[rows] = self.generate(self.student(k, networks), labels[rows], z[rows], generator).to(out.dtype)
        return out

    def scheduler(self) -> Any:
        """The teacher's scheduler as a FewStepScheduler (one step from t = 1 returns the students' x0)."""
        from fewstep.pipelines.scheduler import FewStepScheduler

        return FewStepScheduler.from_config(self.teacher.scheduler_config)

    def export(self, networks: dict[str, nn.Module], folder: Any) -> None:
        """Save the EMA students as a `MultiStudentPipeline` (routing table in the unet's config)."""
        from fewstep.models import MultiStudentModel
        from fewstep.pipelines.multi_student import MultiStudentPipeline

        students = [networks[student_name(k)] for k in range(self.options.num_students)]
        router = MultiStudentModel.from_students(students, self.routing)
        pipeline = MultiStudentPipeline(unet=router, scheduler=self.scheduler(), student_times=self.options.student_times)
        pipeline.save_pretrained(str(folder))


@register_objective("dmd")
class DistributionMatching(MultiStudentDistillation):
    """DMD2 with one student for every class: `msd` with num_students=1 (the default)."""


@contextlib.contextmanager
def frozen(*networks: nn.Module) -> Iterator[None]:
    """Parameters of `networks` do not require gradients inside the block (restored after)."""
    params = [p for net in networks for p in net.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def student_name(k: int) -> str:
    return f"student_{k}"


def critic_name(k: int) -> str:
    return f"critic_{k}"


def head_name(k: int) -> str:
    return f"head_{k}"


def check_teacher(objective: str, teacher: Teacher | None, model: nn.Module) -> Teacher:
    """The teacher, after checking it is class-conditional and makes the student's sample shape."""
    if teacher is None:
        raise ValueError(f"objective.name={objective} distils a teacher: set model.type=pretrained and "
                         "model.pretrained=PIPELINE_FOLDER (or model.teacher=PIPELINE_FOLDER for a smaller student)")
    if teacher.num_classes == 0:
        raise ValueError(f"objective.name={objective} routes by class, but the teacher is not class-conditional "
                         "(its network has no class embedding); use a class-conditional teacher such as assets/teachers/mnist_flow")
    if tuple(sample_shape(model)) != tuple(teacher.sample_shape):
        raise ValueError(f"the student makes samples of shape {tuple(sample_shape(model))} but the teacher "
                         f"{tuple(teacher.sample_shape)}; set model.in_channels / model.sample_size (unet) or model.dim (mlp) "
                         "to the teacher's")
    try:
        student_classes = null_class(model)
    except ValueError:
        student_classes = 0
    if student_classes < teacher.num_classes:
        raise ValueError(f"the student embeds {student_classes} classes but the teacher has {teacher.num_classes}; "
                         f"set model.num_classes={teacher.num_classes}")
    return teacher


@torch.no_grad()
def class_means(teacher: Teacher, seed: int, probes: int = 16) -> Tensor:
    """The teacher's class means [C, ...]: its x0 prediction at t = 1 (E[x0 | c]) averaged over `probes` noises."""
    denoiser = NetworkDenoiser(teacher.network, teacher.path, teacher.prediction_type)
    device = next(teacher.network.parameters()).device
    z = torch.randn((probes, *teacher.sample_shape), generator=torch.Generator().manual_seed(seed)).to(device)
    t = torch.ones(probes, dtype=torch.float64)
    return torch.stack([denoiser(z, t, torch.full((probes,), c, device=device)).mean(0).cpu()
                        for c in range(teacher.num_classes)])


class PairedDataset(Dataset):
    """Real items (x, label) zipped with teacher pairs (noise, sample, label), the pairs cycled."""

    def __init__(self, real: Dataset, pairs: Dataset) -> None:
        self.real, self.pairs = real, pairs

    def __len__(self) -> int:
        return len(self.real)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        x, label = self.real[index]
        return (x, label, *self.pairs[index % len(self.pairs)])
