"""`MultiStudentPipeline`: one-step class-conditional generation by K routed students (MSD, arXiv 2410.23274).

    import fewstep.pipelines  # registers the pipeline classes with diffusers
    pipe = DiffusionPipeline.from_pretrained("runs/mnist_msd/pipeline")
    images = pipe(class_labels=[3, 7, 7, 1]).images      # one network call per image, each label to its student
    pipe.routing                                          # [0, 0, 1, 1, ...]: class -> student

The `unet` is a `fewstep.models.MultiStudentModel` (the routing table is its config); the
scheduler is the teacher's (a `FewStepScheduler`), and one step from pure noise returns the
students' x0 prediction, so `num_inference_steps` defaults to 1. Guidance is distilled into the
students: sample with `guidance_scale=1`.
"""

from __future__ import annotations

from typing import Any

from .class_conditional import ClassConditionalPipeline, register_with_diffusers


class MultiStudentPipeline(ClassConditionalPipeline):
    """`ClassConditionalPipeline` over a `MultiStudentModel`, one step by default."""

    @property
    def routing(self) -> list[int]:
        """`routing[c]`: index of the student that generates class c."""
        return [int(k) for k in self.unet.config.routing]

    def __call__(self, class_labels: Any = None, num_inference_steps: int = 1, guidance_scale: float = 1.0, **kwargs: Any) -> Any:
        """As `ClassConditionalPipeline.__call__`, with one step by default (the students are one-step generators)."""
        if guidance_scale != 1.0:
            raise ValueError("the students were distilled with the teacher's guidance built in; sample with guidance_scale=1")
        return super().__call__(class_labels=class_labels, num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale, **kwargs)


register_with_diffusers(MultiStudentPipeline)
