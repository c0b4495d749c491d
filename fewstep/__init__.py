"""fewstep: few-step sampling, distillation and scoring for diffusion and flow models.

Conventions: t in [0, 1], t = 0 is data and t = 1 is noise; x_t = alpha(t) x0 + sigma(t) eps.

`import fewstep` needs only torch. Names that need diffusers (`FewStepScheduler`, ...) are
loaded on first access, so `from fewstep import FewStepScheduler` works and a saved pipeline's
`model_index.json` can name `["fewstep", "FewStepScheduler"]`.

`import fewstep` is also enough for `DiffusionPipeline.from_pretrained` to load fewstep's own
pipelines (`ClassConditionalPipeline`, `MultiStudentPipeline`, whose model_index.json names
them like diffusers classes): they are registered with diffusers as soon as diffusers is imported, before or after
fewstep, without importing diffusers here.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily).
_LAZY: dict[str, str] = {
    "FewStepScheduler": "fewstep.pipelines.scheduler",
    "ClassConditionalPipeline": "fewstep.pipelines.class_conditional",
    "MultiStudentPipeline": "fewstep.pipelines.multi_student",
    "MultiStudentModel": "fewstep.models.multi_student",
    "ClassConditionalMLP": "fewstep.models.mlp",
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


# ---------------------------------------------------------------------- diffusers registration

_PIPELINE_MODULES = ("fewstep.pipelines.class_conditional",)  # it imports (registers) multi_student too


def _register_pipelines() -> None:
    """Import the modules that register fewstep's pipelines in diffusers' namespace."""
    for module in _PIPELINE_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as error:  # a broken diffusers install must not break `import diffusers`
            warnings.warn(f"fewstep could not register its pipelines with diffusers: {error}", stacklevel=2)


class _RegisterWhenDiffusersLoads(importlib.abc.MetaPathFinder):
    """One-shot import hook: after the `diffusers` package has executed, register fewstep's pipelines."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "diffusers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("diffusers")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _register_pipelines()

        spec.loader.exec_module = exec_module
        return spec


if "diffusers" in sys.modules:
    _register_pipelines()
elif not any(isinstance(finder, _RegisterWhenDiffusersLoads) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenDiffusersLoads())
