"""diffusers integration: FewStepScheduler, pipelines and models (the only place importing diffusers).

Importing this package registers `ClassConditionalPipeline` with diffusers, so
`DiffusionPipeline.from_pretrained("assets/teachers/mnist_flow")` works after `import fewstep.pipelines`.
"""

from . import class_conditional  # noqa: F401  (registers ClassConditionalPipeline with diffusers)
from .class_conditional import ClassConditionalMLP, ClassConditionalPipeline
from .scheduler import FewStepScheduler

__all__ = ["ClassConditionalMLP", "ClassConditionalPipeline", "FewStepScheduler"]
