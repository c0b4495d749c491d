"""The Objective interface: what a trainer computes, independent of how it is run.

An objective owns a *set* of networks (`self.networks`, e.g. a generator and its critic, or
K students), declares the optimizer parameter groups of each phase (e.g. "critic" then
"generator"; teachers have one phase, "main"), and computes
`loss(batch, step, generator, phase) -> {"loss": scalar, ...}`. It never touches accelerate:
the loop (`fewstep.distill.loop`) owns devices, `prepare`, accumulation, precision, EMA of
every network in `ema_networks`, checkpoints and logging, and swaps `self.networks[name]` for
its prepared (wrapped) copy: call a network (its forward), or run other methods of it through
`as_forward` (the wrapper's forward does the data-parallel work). Per-sample randomness is drawn
through `fewstep.batch_noise` with the loop's generator. A frozen teacher is not one of
`self.networks`: it arrives whole (`Teacher`: network, noise path, prediction type, scheduler
config) and is neither trained, averaged nor checkpointed.

Each objective declares its options once, as a dataclass (`Options`), and registers itself
by name with `@register_objective`; the config section `objective:` is validated against it
(an option the objective does not declare is an error that lists its options).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from fewstep import batch_noise
from fewstep.pipelines.class_conditional import null_class, sample_shape
from fewstep.pipelines.loading import LoadedTeacher as Teacher
from fewstep.samplers import CFGDenoiser, Denoiser, NoisePath, from_x0_eps, get_schedule, sample

#: points drawn per class for the scatter plot of 2-D samples.
POINTS_PER_CLASS = 250

#: name -> objective class; filled by `@register_objective`.
OBJECTIVES: dict[str, type["Objective"]] = {}


T = TypeVar("T")


def as_forward(network: nn.Module, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(module, *args, **kwargs)` run as the forward of `network`: a DDP / FSDP wrapper (or the bare module).

    Wrappers do their work around the forward: DDP prepares the backward's gradient all-reduce,
    FSDP gathers sharded weights. Calling another method of the wrapped module directly
    (`vae.encode(x)`) skips that; `as_forward(vae, lambda m, x: m.decode(m.encode(x)...), x)` does not.
    """
    inner = getattr(network, "module", network)
    own = inner.__dict__.get("forward")  # accelerate may have patched the instance's forward (autocast)
    inner.forward = lambda *a, **k: fn(inner, *a, **k)
    try:
        return network(*args, **kwargs)
    finally:
        if own is None:
            del inner.forward
        else:
            inner.forward = own


@dataclasses.dataclass
class NoOptions:
    """An objective without options."""


def register_objective(name: str) -> Callable[[type["Objective"]], type["Objective"]]:
    """Class decorator: make an objective available as `objective.name=<name>`."""

    def decorate(cls: type["Objective"]) -> type["Objective"]:
        if name in OBJECTIVES and OBJECTIVES[name] is not cls:
            raise ValueError(f"objective {name!r} is already registered by {OBJECTIVES[name].__name__}")
        if not (isinstance(cls.Options, type) and dataclasses.is_dataclass(cls.Options)):
            raise TypeError(f"{cls.__name__}.Options must be a dataclass of the objective's options")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return decorate


def get_objective_class(name: str) -> type["Objective"]:
    """The registered objective class called `name`, or a ValueError listing the valid names."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective.name={name!r} is not an objective; choose one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


class Objective(ABC):
    """Base class of training objectives (teachers, distillation methods)."""

    #: the registered name (set by `@register_objective`).
    name: ClassVar[str] = ""
    #: the objective's options (a dataclass; its fields are the keys of the config's `objective:` section).
    Options: ClassVar[type] = NoOptions
    #: optimisation phases run in this order every step; one optimizer per distinct phase, and a phase
    #: listed n times (a critic updated n times per generator update) steps its optimizer n times.
    phases: tuple[str, ...] = ("main",)
    #: the network sampled for previews / evaluation and exported by default.
    main_network: str = "model"
    #: networks the loop keeps an EMA of (None: every network in `self.networks`).
    ema_networks: tuple[str, ...] | None = None
    #: "required": needs a pretrained teacher (model.type=pretrained); "optional"; or "none".
    teacher_use: ClassVar[str] = "optional"
    #: model.type values this objective trains (None: any but masked_transformer).
    model_types: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, networks: dict[str, nn.Module], teacher: Teacher | None = None) -> None:
        self.networks = networks
        self.teacher = teacher

    @classmethod
    def build(cls, model: nn.Module, options: Any, teacher: Teacher | None = None) -> "Objective":
        """The objective training `model` (built from the config's `model:` section) with `options`."""
        return cls(model, options, teacher)

    def ema_names(self) -> list[str]:
        """Names of the networks the loop averages (EMA), samples with and checkpoints the EMA of."""
        return list(self.networks) if self.ema_networks is None else list(self.ema_networks)

    def signature(self) -> dict[str, Any]:
        """JSON values a checkpoint must have been trained with to be resumed (e.g. a class partition); default none."""
        return {}

    def param_groups(self, phase: str) -> list[dict[str, Any]]:
        """Optimizer parameter groups of `phase` (default: every trainable parameter of the main network).

        A group may carry "lr_scale": its learning rate is then optim.lr x lr_scale.
        """
        return [{"params": [p for p in self.networks[self.main_network].parameters() if p.requires_grad]}]

    @abstractmethod
    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        """Losses of one micro-batch; "loss" (scalar) is back-propagated, the rest are logged."""

    @abstractmethod
    def sample(
        self, networks: dict[str, nn.Module], class_labels: Tensor, generator: torch.Generator, num_steps: int,
        guidance_scale: float = 1.0,
    ) -> Tensor:
        """Samples [B, *sample_shape] for `class_labels` [B] from `networks` (the EMA weights; previews, evaluation)."""

    def scheduler(self) -> Any:
        """The diffusers scheduler shipped with the exported pipeline (None: the export is not a pipeline)."""
        return None

    def check_data(self, dataset: Dataset, num_classes: int) -> None:
        """Raise ValueError if item shapes or the number of classes disagree with the model (class-conditional data)."""
        x, _ = dataset[0]
        model = self.networks[self.main_network]
        if tuple(x.shape) != sample_shape(model):
            raise ValueError(
                f"data items have shape {tuple(x.shape)} but the model makes {sample_shape(model)}; "
                "set model.dim (mlp) or model.in_channels / model.sample_size (unet) to match"
            )
        classes = getattr(dataset, "classes", None)
        if classes is not None and len(classes) > num_classes:
            raise ValueError(f"the dataset has {len(classes)} classes but model.num_classes={num_classes}; set model.num_classes={len(classes)}")

    def write_preview(self, sample_fn: Callable[[Tensor], Tensor], networks: dict[str, nn.Module], stem: Path,
                      num_classes: int, per_class: int) -> Path:
        """`stem`.png: an image grid with one row per class, or a scatter plot of 2-D points coloured by class."""
        from fewstep.distill.plots import save_samples_png

        images = len(sample_shape(networks[self.main_network])) == 3
        per_class = per_class if images else POINTS_PER_CLASS
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        samples = sample_fn(labels).float().cpu()
        return save_samples_png(samples, labels, stem.with_suffix(".png"), per_class)

    def exportable(self, network: nn.Module) -> nn.Module:
        """The network as it is saved (e.g. with adapters merged); default: itself."""
        return network

    def export(self, networks: dict[str, nn.Module], folder: Path) -> None:
        """Save the main network (EMA weights) with `scheduler()` as a `ClassConditionalPipeline` in `folder`."""
        from fewstep.pipelines.class_conditional import ClassConditionalPipeline

        network = self.exportable(networks[self.main_network])
        ClassConditionalPipeline(unet=network, scheduler=self.scheduler()).save_pretrained(str(folder))


def check_teacher_kind(objective: str, teacher: Teacher | None, kind: str) -> None:
    """Refuse a pretrained teacher on another kind of noise path ("flow" or "vp") than `objective` needs."""
    if teacher is not None and teacher.path.kind != kind:
        hint = "a flow pipeline (e.g. assets/teachers/mnist_flow)" if kind == "flow" else "a VP pipeline (e.g. assets/teachers/mnist_vp)"
        raise ValueError(
            f"objective.name={objective} needs a {kind} teacher, but model.pretrained is a {teacher.path.kind} model "
            f"(prediction_type {teacher.prediction_type!r}); use {hint}"
        )


class DenoisingObjective(Objective):
    """Teacher training: MSE between the network output and `from_x0_eps(x0, eps, alpha, sigma)`.

    Subclasses give the noise path and how training times are drawn (`sample_times`).
    Class labels are replaced by the null class with probability `cfg_dropout`, which trains
    the unconditional model for classifier-free guidance (Ho & Salimans 2022). With a
    pretrained teacher (model.type=pretrained) the network fine-tunes on the teacher's own
    noise path and prediction type.
    """

    path: NoisePath
    prediction_type: str

    def __init__(self, model: nn.Module, cfg_dropout: float = 0.1, teacher: Teacher | None = None) -> None:
        super().__init__({"model": model}, teacher)
        self.cfg_dropout = float(cfg_dropout)
        self.null_label = null_class(model)

    @abstractmethod
    def sample_times(self, batch_size: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        """(t [B] in (0, 1] float64 on CPU, model timesteps [B] on `device`)."""

    def drop_labels(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Labels [B] with each replaced by the null class with probability `cfg_dropout`."""
        drop = batch_noise.rand(labels.shape, generator, labels.device) < self.cfg_dropout
        return torch.where(drop, torch.full_like(labels, self.null_label), labels)

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        x0, labels = batch
        device = x0.device
        t, timestep = self.sample_times(x0.shape[0], generator, device)
        alpha, sigma = (v.to(device=device, dtype=x0.dtype).reshape(-1, *[1] * (x0.ndim - 1)) for v in self.path.alpha_sigma(t))
        eps = batch_noise.randn(x0.shape, generator, device, x0.dtype)
        x_t = alpha * x0 + sigma * eps
        output = self.networks["model"](x_t, timestep, class_labels=self.drop_labels(labels, generator)).sample
        target = from_x0_eps(x0, eps, alpha, sigma, self.prediction_type)
        return {"loss": torch.mean((output.float() - target.float()) ** 2)}

    @torch.no_grad()
    def sample(
        self, networks: dict[str, nn.Module], class_labels: Tensor, generator: torch.Generator, num_steps: int,
        guidance_scale: float = 1.0,
    ) -> Tensor:
        """DPM-Solver++(2M) on a logSNR-uniform grid (fewstep.samplers), with CFG if guidance_scale != 1."""
        return sample_class_conditional(networks["model"], self.path, self.prediction_type, class_labels, generator,
                                        get_schedule("logsnr", self.path, num_steps), "dpmpp_2m", guidance_scale)


def sample_class_conditional(network: nn.Module, path: NoisePath, prediction_type: str, class_labels: Tensor,
                             generator: torch.Generator, ts: Tensor, solver: str, guidance_scale: float = 1.0) -> Tensor:
    """Samples [B, *sample_shape] of a class-conditional network from seeded noise on grid `ts` (CFG if scale != 1)."""
    x = torch.randn((class_labels.shape[0], *sample_shape(network)), generator=generator, device=class_labels.device)
    denoiser: Any = Denoiser(network, path, prediction_type)
    if guidance_scale != 1.0:
        denoiser = CFGDenoiser(denoiser, guidance_scale, {"class_labels": torch.full_like(class_labels, null_class(network))})
    return sample(denoiser, x, ts, solver, class_labels=class_labels).x
