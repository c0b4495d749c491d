"""`MultiStudentPipeline`: few-step class-conditional generation by K routed students (MSD, arXiv 2410.23274).

    import fewstep.pipelines  # registers the pipeline classes with diffusers
    pipe = DiffusionPipeline.from_pretrained("runs/mnist_msd/pipeline")
    images = pipe(class_labels=[3, 7, 7, 1]).images      # one network call per image, each label to its student
    pipe.routing                                          # [0, 0, 1, 1, ...]: class -> student

The `unet` is a `fewstep.models.MultiStudentModel` (the routing table is its config); the
scheduler is the teacher's (a `FewStepScheduler`). By default the pipeline samples the way the
students were trained: at `student_times` (its config; `[1.0]` = one step, where the step from
pure noise returns the students' x0), re-noising with fresh noise between the times (DMD2's
multi-step sampling). Another `num_inference_steps` runs the scheduler instead. Guidance is
distilled into the students: sample with `guidance_scale=1`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from diffusers import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from ..samplers import NetworkDenoiser, renoising_sample
from .class_conditional import ClassConditionalPipeline, register_with_diffusers, sample_shape


class MultiStudentPipeline(ClassConditionalPipeline):
    """`ClassConditionalPipeline` over a `MultiStudentModel`, sampling at the students' training times by default."""

    def __init__(self, unet: Any, scheduler: Any, student_times: Sequence[float] | None = None) -> None:
        super().__init__(unet=unet, scheduler=scheduler)
        self.register_to_config(student_times=[float(t) for t in (student_times or [1.0])])

    @property
    def routing(self) -> list[int]:
        """`routing[c]`: index of the student that generates class c."""
        return [int(k) for k in self.unet.config.routing]

    @property
    def default_inference_steps(self) -> int:
        """What `fewstep sample` uses when --steps is not given: the students' training times."""
        return len(self.student_times)

    @property
    def student_times(self) -> list[float]:
        """The times (t = 1 noise) the students were trained to be evaluated at."""
        return [float(t) for t in self.config.student_times]

    @torch.no_grad()
    def __call__(self, class_labels: Any = None, num_inference_steps: int | None = None, guidance_scale: float = 1.0,
                 generator: torch.Generator | None = None, output_type: str = "pil", return_dict: bool = True,
                 batch_size: int | None = None, latents: Tensor | None = None, **kwargs: Any) -> Any:
        """Samples at `student_times` (default), or with the scheduler for another `num_inference_steps`."""
        if guidance_scale != 1.0:
            raise ValueError("the students were distilled with the teacher's guidance built in; sample with guidance_scale=1")
        steps = len(self.student_times) if num_inference_steps is None else num_inference_steps
        if steps != len(self.student_times) or kwargs:
            return super().__call__(class_labels=class_labels, num_inference_steps=steps, generator=generator,
                                    output_type=output_type, return_dict=return_dict, batch_size=batch_size,
                                    latents=latents, **kwargs)
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type {output_type!r} is not valid; choose 'pil', 'np' or 'pt'")
        labels = self._labels(class_labels, batch_size)
        shape = (labels.shape[0], *sample_shape(self.unet))
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        x = latents if latents is not None else randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        x = self.student_sample(x.to(self.device, torch.float32), labels, generator)
        samples = self._postprocess(x, output_type)
        return ImagePipelineOutput(images=samples) if return_dict else (samples,)

    def student_sample(self, z: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x0 after the last of `student_times` from noise z [B, ...], re-noised between the times."""
        students = NetworkDenoiser(self.unet, self.scheduler.path, self.scheduler.config.prediction_type)
        return renoising_sample(students, z, torch.tensor(self.student_times, dtype=torch.float64), labels, generator)


register_with_diffusers(MultiStudentPipeline)
