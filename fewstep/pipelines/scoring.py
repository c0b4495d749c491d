"""Generate class-conditional images with any fewstep sampler, for scoring and paired comparisons.

Shared by `fewstep sample`, `fewstep demo` and the benchmark scripts: `generate_images` draws
the same noise and labels for every sampler (paired comparisons); `rms_pixel_error` compares
two samplers' images from that noise. Scoring them on MNIST features (FID, classifier
accuracy) is `fewstep.metrics.mnist.MnistScorer`.
"""

from __future__ import annotations


import torch
from torch import Tensor

from ..samplers.sampling import sample
from .loading import LoadedTeacher


def to_uint8(x: Tensor) -> Tensor:
    """Model samples in [-1, 1] -> uint8 images [N, C, H, W]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def rms_pixel_error(images: Tensor, reference: Tensor) -> float:
    """RMS difference of two uint8 image batches [N, C, H, W], in units of the [-1, 1] range."""
    return float((images.float() - reference.float()).div(127.5).pow(2).mean().sqrt())


def generate_images(
    teacher: LoadedTeacher,
    ts: Tensor,
    solver: str,
    num_images: int,
    seed: int = 0,
    batch_size: int = 250,
    coeffs: Tensor | None = None,
    guidance_scale: float = 1.0,
    device: str | torch.device = "cpu",
    eval_ts: Tensor | None = None,
) -> tuple[Tensor, Tensor, int]:
    """(uint8 images [N, C, H, W], labels [N], NFE per image) from the same seeded noise every call.

    `coeffs` / `eval_ts` come from a learned sampler spec (see `fewstep.samplers.sample`)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((num_images, *teacher.sample_shape), generator=generator)
    cond = teacher.class_labels(num_images)
    images, nfe = [], 0
    with torch.no_grad():
        for start in range(0, num_images, batch_size):
            sl = slice(start, start + batch_size)
            batch_cond = {k: v[sl].to(device) for k, v in cond.items()}
            denoiser = teacher.guided(guidance_scale)  # CFG with the null class (index num_classes)
            out = sample(denoiser, noise[sl].to(device), ts, solver, coeffs=coeffs, eval_ts=eval_ts, **batch_cond)
            images.append(to_uint8(out.x))
            nfe = out.nfe
    labels = cond.get("class_labels", torch.zeros(num_images, dtype=torch.long)).cpu()
    return torch.cat(images), labels, nfe
