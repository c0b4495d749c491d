"""`ClassConditionalPipeline`: class-conditional sampling with classifier-free guidance, any diffusers scheduler.

    import fewstep.pipelines.class_conditional  # registers the class with diffusers
    pipe = DiffusionPipeline.from_pretrained("assets/teachers/mnist_flow")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # or FewStepScheduler
    images = pipe(class_labels=[0, 1, 2], num_inference_steps=20, guidance_scale=2.0).images

The denoiser (`unet`) is any diffusers model called as `unet(x, timestep, class_labels=...)`
with a class embedding whose last index (`num_class_embeds - 1`) is the null class. Samples
that are not images (2-D points) are returned raw for output_type "np" / "pt".
`ClassConditionalMLP` is the 2-D teachers' network (defined here so that loading a saved
pipeline needs only this module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from diffusers import ConfigMixin, DiffusionPipeline, ImagePipelineOutput, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn


@dataclass
class MLPOutput(BaseOutput):
    """Network output `sample` [B, dim]."""

    sample: Tensor


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP block: h + W2 silu(W1 silu(LN(h)))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)


class ClassConditionalMLP(ModelMixin, ConfigMixin):
    """Residual MLP denoiser for low-dimensional data: (x [B, dim], timestep [B] or scalar, class_labels [B]) -> [B, dim].

    The timestep is in the model's own units (integer DDPM steps or t * 1000 for flows) and
    goes through diffusers' sinusoidal `Timesteps` + `TimestepEmbedding`; the class embedding
    is added to the hidden state. Labels default to the null class (`num_class_embeds - 1`).
    """

    @register_to_config
    def __init__(self, dim: int = 2, width: int = 256, num_blocks: int = 4, num_class_embeds: int = 9) -> None:
        super().__init__()
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(width, width)
        self.class_embedding = nn.Embedding(num_class_embeds, width)
        self.input = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(num_blocks))
        self.output = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample (without the batch dimension)."""
        return (self.config.dim,)

    def forward(
        self, sample: Tensor, timestep: Tensor | float, class_labels: Tensor | None = None, return_dict: bool = True
    ) -> MLPOutput | tuple[Tensor]:
        batch = sample.shape[0]
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(batch)
        temb = self.time_embedding(self.time_proj(timestep).to(sample.dtype))
        if class_labels is None:
            class_labels = torch.full((batch,), self.config.num_class_embeds - 1, device=sample.device, dtype=torch.long)
        h = self.input(sample) + temb + self.class_embedding(class_labels)
        for block in self.blocks:
            h = block(h)
        out = self.output(h)
        return MLPOutput(sample=out) if return_dict else (out,)



def null_class(model: nn.Module) -> int:
    """Index of the null (unconditional) class of a model: `config.num_class_embeds - 1`."""
    num = getattr(model.config, "num_class_embeds", None)
    if not num:
        raise ValueError(
            f"{type(model).__name__} has no class embedding (config.num_class_embeds); "
            "build it with num_class_embeds = num_classes + 1 (the last index is the null class)"
        )
    return int(num) - 1


def sample_shape(model: nn.Module) -> tuple[int, ...]:
    """Shape of one sample: `model.sample_shape` if defined, else (in_channels, H, W) from the config."""
    shape = getattr(model, "sample_shape", None)
    if shape is not None:
        return tuple(shape)
    config: Any = model.config
    size = config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (config.in_channels, h, w)


class ClassConditionalPipeline(DiffusionPipeline):
    """Class-conditional generation with classifier-free guidance (Ho & Salimans 2022) and a swappable scheduler."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: Any, scheduler: Any) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def _labels(self, class_labels: int | Sequence[int] | Tensor | None, batch_size: int | None) -> Tensor:
        """Class labels [B] on the pipeline device; None means the null class (unconditional)."""
        null = null_class(self.unet)
        if class_labels is None:
            labels = torch.full((batch_size or 1,), null, dtype=torch.long)
        else:
            labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
            if batch_size is not None and labels.numel() == 1:
                labels = labels.expand(batch_size)
        if labels.numel() == 0 or bool(((labels < 0) | (labels > null)).any()):
            raise ValueError(f"class_labels must lie in [0, {null - 1}] (or {null}, the null class); got {labels.tolist()}")
        return labels.to(self.device)

    def _model_output(self, x: Tensor, t: Tensor, labels: Tensor, guidance_scale: float) -> Tensor:
        """One guided network evaluation: out_u + w (out_c - out_u), batched into a single call."""
        if guidance_scale == 1.0:
            x_in, labels_in = x, labels
        else:
            x_in, labels_in = torch.cat([x, x]), torch.cat([torch.full_like(labels, null_class(self.unet)), labels])
        if hasattr(self.scheduler, "scale_model_input"):
            x_in = self.scheduler.scale_model_input(x_in, t)
        timestep = t.to(self.device).expand(x_in.shape[0])
        out = self.unet(x_in.to(self.unet.dtype), timestep, class_labels=labels_in).sample.to(x.dtype)
        if guidance_scale == 1.0:
            return out
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | Sequence[int] | Tensor | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        batch_size: int | None = None,
        latents: Tensor | None = None,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Sample one item per class label; `output_type` "pil" | "np" (NHWC in [0, 1]) | "pt" (NCHW in [0, 1]).

        `batch_size` repeats a single label; `latents` [B, ...] replaces the initial noise;
        `timesteps` / `sigmas` are passed to `scheduler.set_timesteps` when it accepts them.
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type {output_type!r} is not valid; choose 'pil', 'np' or 'pt'")
        labels = self._labels(class_labels, batch_size)
        shape = (labels.shape[0], *sample_shape(self.unet))
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        x = latents.to(self.device, torch.float32) * getattr(self.scheduler, "init_noise_sigma", 1.0)
        extra = {k: v for k, v in (("timesteps", timesteps), ("sigmas", sigmas)) if v is not None}
        if extra:
            self.scheduler.set_timesteps(device=self.device, **extra)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            out = self._model_output(x, t, labels, guidance_scale)
            x = self.scheduler.step(out, t, x, generator=generator).prev_sample
        samples = self._postprocess(x, output_type)
        return ImagePipelineOutput(images=samples) if return_dict else (samples,)

    @staticmethod
    def _postprocess(x: Tensor, output_type: str) -> Any:
        """Images ([B, C, H, W]) map [-1, 1] -> [0, 1]; other samples (e.g. [B, 2] points) stay raw."""
        if x.ndim != 4:
            if output_type == "pil":
                raise ValueError(f"samples of shape {tuple(x.shape[1:])} are not images; use output_type='np' or 'pt'")
            return x.cpu() if output_type == "pt" else x.cpu().numpy()
        images = (x / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images.cpu()
        images = images.cpu().permute(0, 2, 3, 1).float().numpy()
        return images if output_type == "np" else DiffusionPipeline.numpy_to_pil(images)


def register_with_diffusers() -> None:
    """Expose the pipeline as `diffusers.ClassConditionalPipeline`.

    `DiffusionPipeline.from_pretrained(folder)` looks the saved `_class_name` up in the
    diffusers package only, so a folder saved from this class loads through the generic entry
    point once this module has been imported (`ClassConditionalPipeline.from_pretrained`
    always works).
    """
    import diffusers

    if getattr(diffusers, ClassConditionalPipeline.__name__, None) is None:
        setattr(diffusers, ClassConditionalPipeline.__name__, ClassConditionalPipeline)


register_with_diffusers()
