"""The Objective interface: what a trainer computes, independent of how it is run.

An objective declares its networks (`self.networks`), the optimizer parameter groups of each
phase (e.g. "generator" / "critic"; teachers have one phase, "main"), and computes
`loss(batch, step, generator, phase) -> {"loss": scalar, ...}`. It never touches accelerate:
the loop (`fewstep.distill.loop`) owns devices, `prepare`, accumulation, precision, EMA,
checkpoints and logging, and swaps `self.networks[name]` for its prepared (wrapped) copy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from fewstep.pipelines.class_conditional import null_class, sample_shape
from fewstep.samplers import CFGDenoiser, Denoiser, NoisePath, from_x0_eps, get_schedule, sample


#: points drawn per class for the scatter plot of 2-D samples.
POINTS_PER_CLASS = 250


class Objective(ABC):
    """Base class of training objectives (teachers, distillation methods)."""

    #: optimisation phases run in this order every step, each with its own optimizer.
    phases: tuple[str, ...] = ("main",)
    #: the network the loop keeps an EMA of, samples from and exports as a pipeline.
    ema_network: str = "model"

    def __init__(self, networks: dict[str, nn.Module]) -> None:
        self.networks = networks

    def param_groups(self, phase: str) -> list[dict[str, Any]]:
        """Optimizer parameter groups of `phase` (default: every parameter of the EMA network)."""
        return [{"params": [p for p in self.networks[self.ema_network].parameters() if p.requires_grad]}]

    @abstractmethod
    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        """Losses of one micro-batch; "loss" (scalar) is back-propagated, the rest are logged."""

    @abstractmethod
    def sample(
        self, network: nn.Module, class_labels: Tensor, generator: torch.Generator, num_steps: int, guidance_scale: float = 1.0
    ) -> Tensor:
        """Samples [B, *sample_shape] for `class_labels` [B] (for sample grids and evaluation)."""

    @abstractmethod
    def scheduler(self) -> Any:
        """The diffusers scheduler shipped with the exported pipeline."""

    def check_data(self, dataset: Dataset, num_classes: int) -> None:
        """Raise ValueError if item shapes or the number of classes disagree with the model (class-conditional data)."""
        x, _ = dataset[0]
        model = self.networks[self.ema_network]
        if tuple(x.shape) != sample_shape(model):
            raise ValueError(
                f"data items have shape {tuple(x.shape)} but the model makes {sample_shape(model)}; "
                "set model.dim (mlp) or model.in_channels / model.sample_size (unet) to match"
            )
        classes = getattr(dataset, "classes", None)
        if classes is not None and len(classes) > num_classes:
            raise ValueError(f"the dataset has {len(classes)} classes but model.num_classes={num_classes}; set model.num_classes={len(classes)}")

    def write_preview(self, sample_fn: Callable[[Tensor], Tensor], network: nn.Module, stem: Path, num_classes: int,
                      per_class: int) -> Path:
        """`stem`.png: an image grid with one row per class, or a scatter plot of 2-D points coloured by class."""
        from fewstep.distill.plots import save_samples_png

        images = len(sample_shape(network)) == 3
        per_class = per_class if images else POINTS_PER_CLASS
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        samples = sample_fn(labels).float().cpu()
        return save_samples_png(samples, labels, stem.with_suffix(".png"), per_class)

    def exportable(self, network: nn.Module) -> nn.Module:
        """The network as it is saved (e.g. with adapters merged); default: itself."""
        return network

    def export(self, network: nn.Module, folder: Path) -> None:
        """Save `network` (EMA weights) with `scheduler()` as a `ClassConditionalPipeline` in `folder`."""
        from fewstep.pipelines.class_conditional import ClassConditionalPipeline

        ClassConditionalPipeline(unet=self.exportable(network), scheduler=self.scheduler()).save_pretrained(str(folder))


class DenoisingObjective(Objective):
    """Teacher training: MSE between the network output and `from_x0_eps(x0, eps, alpha, sigma)`.

    Subclasses give the noise path and how training times are drawn (`sample_times`).
    Class labels are replaced by the null class with probability `cfg_dropout`, which trains
    the unconditional model for classifier-free guidance (Ho & Salimans 2022).
    """

    path: NoisePath
    prediction_type: str

    def __init__(self, model: nn.Module, cfg_dropout: float = 0.1) -> None:
        super().__init__({"model": model})
        self.cfg_dropout = float(cfg_dropout)
        self.null_label = null_class(model)

    @abstractmethod
    def sample_times(self, batch_size: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        """(t [B] in (0, 1] float64 on CPU, model timesteps [B] on `device`)."""

    def drop_labels(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Labels [B] with each replaced by the null class with probability `cfg_dropout`."""
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < self.cfg_dropout
        return torch.where(drop, torch.full_like(labels, self.null_label), labels)

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        x0, labels = batch
        device = x0.device
        t, timestep = self.sample_times(x0.shape[0], generator, device)
        alpha, sigma = (v.to(device=device, dtype=x0.dtype).reshape(-1, *[1] * (x0.ndim - 1)) for v in self.path.alpha_sigma(t))
        eps = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
        x_t = alpha * x0 + sigma * eps
        output = self.networks["model"](x_t, timestep, class_labels=self.drop_labels(labels, generator)).sample
        target = from_x0_eps(x0, eps, alpha, sigma, self.prediction_type)
        return {"loss": torch.mean((output.float() - target.float()) ** 2)}

    @torch.no_grad()
    def sample(
        self, network: nn.Module, class_labels: Tensor, generator: torch.Generator, num_steps: int, guidance_scale: float = 1.0
    ) -> Tensor:
        """DPM-Solver++(2M) on a logSNR-uniform grid (fewstep.samplers), with CFG if guidance_scale != 1."""
        device = class_labels.device
        x = torch.randn((class_labels.shape[0], *sample_shape(network)), generator=generator, device=device)
        denoiser: Any = Denoiser(network, self.path, self.prediction_type)
        if guidance_scale != 1.0:
            denoiser = CFGDenoiser(denoiser, guidance_scale, {"class_labels": torch.full_like(class_labels, self.null_label)})
        ts = get_schedule("logsnr", self.path, num_steps)
        return sample(denoiser, x, ts, "dpmpp_2m", class_labels=class_labels).x
