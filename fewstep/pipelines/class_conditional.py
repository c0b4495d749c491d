"""`ClassConditionalPipeline`: class-conditional sampling with classifier-free guidance, any diffusers scheduler.

    import fewstep.pipelines.class_conditional  # registers the class with diffusers
    pipe = DiffusionPipeline.from_pretrained("assets/teachers/mnist_flow")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # or FewStepScheduler
    images = pipe(class_labels=[0, 1, 2], num_inference_steps=20, guidance_scale=2.0).images

The denoiser (`unet`) is any diffusers model called as `unet(x, timestep, class_labels=...)`
with a class embedding whose last index (`num_class_embeds - 1`) is the null class. Samples
that are not images (2-D points) are returned raw for output_type "np" / "pt".
The 2-D teachers' network, `ClassConditionalMLP`, lives in `fewstep.models.mlp`; it is
re-exported here because pipelines saved earlier name it as
["fewstep.pipelines.class_conditional", "ClassConditionalMLP"] in their model_index.json.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, ModelMixin  # noqa: F401  (see below)
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

# Pipelines saved before the MLP moved to fewstep.models name its component
# ["fewstep.pipelines.class_conditional", "ClassConditionalMLP"]: diffusers then looks up the class
# and its loadable base class (ModelMixin) on this module, so both must stay importable from here.
from ..models.mlp import ClassConditionalMLP, MLPOutput  # noqa: F401
from ..models.shapes import null_class, sample_shape  # noqa: F401  (imported from here by older code)


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


def register_with_diffusers(pipeline_class: type = ClassConditionalPipeline) -> None:
    """Expose `pipeline_class` as `diffusers.<its name>`.

    `DiffusionPipeline.from_pretrained(folder)` looks the saved `_class_name` up in the
    diffusers package only, so a folder saved from this class loads through the generic entry
    point once this module has been imported (`ClassConditionalPipeline.from_pretrained`
    always works).
    """
    import diffusers

    if getattr(diffusers, pipeline_class.__name__, None) is None:
        setattr(diffusers, pipeline_class.__name__, pipeline_class)


register_with_diffusers()

# MultiStudentPipeline and OneStepFlowPipeline build on this class; importing them here registers them
# whenever this module is.
from . import multi_student, one_step  # noqa: E402,F401
