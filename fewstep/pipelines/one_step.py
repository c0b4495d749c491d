"""`OneStepFlowPipeline`: a distilled rectified-flow student that generates in one step (SlimFlow, arXiv 2407.12718).

    import fewstep.pipelines  # registers the pipeline classes with diffusers
    pipe = DiffusionPipeline.from_pretrained("assets/students/mnist_flow_slimflow")
    images = pipe(class_labels=[3, 7, 1]).images                          # one network call: x0 = z - v(z, 1)
    images = pipe(class_labels=[3, 7, 1], num_inference_steps=4).images   # Euler on the student's flow

The `unet` predicts a velocity (t = 0 data, t = 1 noise); the scheduler is a `FewStepScheduler`
with Euler (DDIM on a flow) on a uniform grid, so one step from pure noise is the one-step
generator and more steps integrate the student's own flow. Any other scheduler can be swapped in
as usual. The teacher's guidance, if any, was built into the pairs the student learnt from: the
student has no unconditional branch, so it samples with `guidance_scale=1`.
"""

from __future__ import annotations

from typing import Any

from .class_conditional import ClassConditionalPipeline, register_with_diffusers


class OneStepFlowPipeline(ClassConditionalPipeline):
    """`ClassConditionalPipeline` for a one-step flow student: `num_inference_steps` defaults to 1."""

    #: what `fewstep sample` uses when --steps is not given.
    default_inference_steps = 1

    def __call__(self, class_labels: Any = None, num_inference_steps: int = 1, guidance_scale: float = 1.0,
                 **kwargs: Any) -> Any:
        """Samples in `num_inference_steps` (default 1) of the scheduler; see `ClassConditionalPipeline.__call__`."""
        if guidance_scale != 1.0:
            raise ValueError("a one-step flow student has no unconditional branch (the teacher's guidance, if any, is in "
                             "its training pairs); sample with guidance_scale=1")
        return super().__call__(class_labels=class_labels, num_inference_steps=num_inference_steps, **kwargs)


register_with_diffusers(OneStepFlowPipeline)
