"""Training objectives, one file each, registered by name (`@register_objective`).

`OBJECTIVES` maps every name to its class; each class declares its options (`Options`, a
dataclass) once, and `fewstep.distill.config` validates the `objective:` section against it.
`build_objective(name, options, model, teacher)` builds one. Every module of this package is
imported here, so a new objective file registers itself without touching this one; objectives
elsewhere register when their module is imported (`fewstep train --import MODULE`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from torch import nn

from .base import OBJECTIVES, DenoisingObjective, NoOptions, Objective, Teacher, get_objective_class, register_objective
from .boss_straighten import BossStraighten
from .flow_matching import FlowMatching, FlowMatchingOptions
from .masked_diffusion import MaskedDiffusion, MaskedDiffusionOptions
from .reflow import Reflow
from .trajectory import TrajectoryOptions
from .vp_diffusion import VPDiffusion, VPDiffusionOptions


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def import_objective_modules(modules: list[str]) -> None:
    """Import modules that register objectives of their own (`fewstep train --import MODULE`)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"--import {module}: cannot import it ({error}); pass an importable module "
                             "(on PYTHONPATH or installed) that registers an objective") from error


def build_objective(name: str, options: Any, model: nn.Module, teacher: Teacher | None = None) -> Objective:
    """The objective registered as `name`, training `model` with `options` (its `Options` dataclass)."""
    return get_objective_class(name).build(model, options, teacher)


__all__ = [
    "OBJECTIVES", "BossStraighten", "DenoisingObjective", "FlowMatching", "FlowMatchingOptions", "MaskedDiffusion",
    "MaskedDiffusionOptions", "NoOptions", "Objective", "Reflow", "Teacher", "TrajectoryOptions", "VPDiffusion",
    "VPDiffusionOptions", "build_objective", "get_objective_class", "import_objective_modules", "register_objective",
]
