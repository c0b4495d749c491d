"""Load a saved pipeline (or a bare diffusers model) as a fewstep Denoiser, for CLI tools."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..samplers.denoiser import Denoiser
from ..samplers.paths import NoisePath


@dataclass
class LoadedTeacher:
    """A pipeline's network wrapped as a denoiser, with what a sampler needs to know about it."""

    network: nn.Module
    denoiser: Denoiser
    path: NoisePath
    prediction_type: str
    sample_shape: tuple[int, ...]
    num_classes: int  # 0 for unconditional models
    scheduler_config: dict
    source: str | None = None  # the pipeline folder it was loaded from
    default_steps: int | None = None  # the pipeline's own default step count (one-step students: 1)
    pipeline: Any = None  # the whole pipeline, when the network alone is not enough (music: text encoders, VAE)

    def fingerprint(self) -> str:
        """A short hash of the network's parameter names, shapes and value sums (identifies the teacher).

        Sums in float64, rounded to 6 significant digits, so the same weights on another device
        or in another dtype give the same fingerprint; cheap even for large networks.
        """
        digest = hashlib.sha256()
        for name, value in sorted(self.network.state_dict().items()):
            data = value.detach().to(torch.float64)
            digest.update(f"{name}{tuple(value.shape)}{float(data.sum()):.6g}{float(data.square().sum()):.6g}".encode())
        return digest.hexdigest()[:16]

    def provenance(self, pipeline_dir: str | Path) -> dict:
        """What a sampler spec records about the teacher it was made for."""
        return {"teacher": str(pipeline_dir), "teacher_fingerprint": self.fingerprint(),
                "sample_shape": list(self.sample_shape)}

    def spec_mismatch(self, provenance: dict) -> str | None:
        """Why a spec with this provenance was made for another teacher, or None if it matches (or is unknown)."""
        shape = provenance.get("sample_shape")
        if shape is not None and tuple(shape) != tuple(self.sample_shape):
            return f"it was made for samples of shape {tuple(shape)}, this teacher makes {tuple(self.sample_shape)}"
        fingerprint = provenance.get("teacher_fingerprint")
        if fingerprint is not None and fingerprint != self.fingerprint():
            return f"it was made for another teacher's weights ({provenance.get('teacher', 'unknown')})"
        return None

    def guided(self, guidance_scale: float = 1.0) -> nn.Module:
        """The denoiser with classifier-free guidance against the null class (itself at w = 1 or if unconditional)."""
        if guidance_scale == 1.0 or self.num_classes == 0:
            return self.denoiser
        return NullClassGuidance(self.denoiser, guidance_scale, self.num_classes)

    def class_labels(self, count: int, device: str | torch.device = "cpu") -> dict[str, Tensor]:
        """Conditioning for `count` samples: classes cycled 0..C-1, or nothing if unconditional."""
        if self.num_classes == 0:
            return {}
        return {"class_labels": torch.arange(count, device=device) % self.num_classes}


class NullClassGuidance(nn.Module):
    """Classifier-free guidance of a class-conditional denoiser against its null class, for any batch size."""

    def __init__(self, denoiser: nn.Module, guidance_scale: float, null_label: int) -> None:
        super().__init__()
        self.denoiser, self.path = denoiser, denoiser.path
        self.guidance_scale, self.null_label = float(guidance_scale), int(null_label)

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor) -> Tensor:
        from ..samplers import CFGDenoiser

        null = {"class_labels": torch.full_like(class_labels, self.null_label)}
        return CFGDenoiser(self.denoiser, self.guidance_scale, null)(x, t, class_labels=class_labels)


def load_teacher(pipeline_dir: str | Path, device: str | torch.device = "cpu") -> LoadedTeacher:
    """Load `pipeline_dir` (diffusers layout); its scheduler config fixes the path and prediction type."""
    import fewstep.pipelines  # noqa: F401  (registers ClassConditionalPipeline and MultiStudentPipeline)
    from diffusers import DiffusionPipeline

    from .class_conditional import null_class, sample_shape
    from .scheduler import FewStepScheduler

    folder = Path(pipeline_dir)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a saved pipeline (no model_index.json); pass a folder written by "
            "pipeline.save_pretrained(...), e.g. assets/teachers/mnist_flow"
        )
    pipe = DiffusionPipeline.from_pretrained(folder).to(device)
    network = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if network is None:
        raise ValueError(f"{folder}: the pipeline has no 'unet' or 'transformer' component to sample with")
    network.eval().requires_grad_(False)
    scheduler = FewStepScheduler.from_config(pipe.scheduler.config)
    prediction_type = scheduler.config.prediction_type
    try:
        num_classes = null_class(network)
    except ValueError:
        num_classes = 0
    return LoadedTeacher(
        network=network,
        denoiser=Denoiser(network, scheduler.path, prediction_type),
        path=scheduler.path,
        prediction_type=prediction_type,
        sample_shape=sample_shape(network),
        num_classes=num_classes,
        scheduler_config=dict(pipe.scheduler.config),
        source=str(pipeline_dir),
        default_steps=getattr(pipe, "default_inference_steps", None),
    )
