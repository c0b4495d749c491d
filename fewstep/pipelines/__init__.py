"""diffusers integration: FewStepScheduler (fewstep's solvers behind the scheduler contract) and the pipelines.

Importing this package registers `ClassConditionalPipeline`, `MultiStudentPipeline`, `OneStepFlowPipeline` and
`AceStepTurboPipeline` with diffusers, so `DiffusionPipeline.from_pretrained("assets/teachers/mnist_flow")` works
after `import fewstep.pipelines`.
diffusers is imported here, by the network classes in `fewstep.models` (diffusers models and
`ModelMixin` subclasses) and by what builds on them (`fewstep.metrics.mnist`, `fewstep.distill`);
`fewstep.samplers` never imports it (a test enforces that), and `import fewstep` alone does not.
"""

from . import class_conditional  # noqa: F401  (registers ClassConditionalPipeline with diffusers)
from .class_conditional import ClassConditionalPipeline
from .multi_student import MultiStudentPipeline
from .one_step import OneStepFlowPipeline
from .scheduler import FewStepScheduler
from .turbo import AceStepTurboPipeline

__all__ = ["AceStepTurboPipeline", "ClassConditionalPipeline", "FewStepScheduler", "MultiStudentPipeline",
           "OneStepFlowPipeline"]
