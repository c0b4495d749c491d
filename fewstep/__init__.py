"""fewstep: few-step sampling, distillation and scoring for diffusion and flow models.

Conventions: t in [0, 1], t = 0 is data and t = 1 is noise; x_t = alpha(t) x0 + sigma(t) eps.

`import fewstep` needs only torch. Names that need diffusers (`FewStepScheduler`, ...) are
loaded on first access, so `from fewstep import FewStepScheduler` works and a saved pipeline's
`model_index.json` can name `["fewstep", "FewStepScheduler"]`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily).
_LAZY: dict[str, str] = {
    "FewStepScheduler": "fewstep.pipelines.scheduler",
    "ClassConditionalPipeline": "fewstep.pipelines.class_conditional",
    "ClassConditionalMLP": "fewstep.pipelines.class_conditional",
    # diffusers' DiffusionPipeline.from_pretrained looks these base classes up on the
    # component's library to decide how to load a component saved from it.
    "SchedulerMixin": "diffusers",
    "ModelMixin": "diffusers",
    "DiffusionPipeline": "diffusers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fewstep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
