"""Training objectives, one file each, registered by name (`@register_objective`).

`OBJECTIVES` maps every name to its class; each class declares its options (`Options`, a
dataclass) once, and `fewstep.distill.config` validates the `objective:` section against it.
`build_objective(name, options, model, teacher)` builds one.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import OBJECTIVES, DenoisingObjective, NoOptions, Objective, Teacher, get_objective_class, register_objective
from .boss_straighten import BossStraighten
from .flow_matching import FlowMatching, FlowMatchingOptions
from .masked_diffusion import MaskedDiffusion, MaskedDiffusionOptions
from .reflow import Reflow
from .trajectory import TrajectoryOptions
from .vp_diffusion import VPDiffusion, VPDiffusionOptions


def build_objective(name: str, options: Any, model: nn.Module, teacher: Teacher | None = None) -> Objective:
    """The objective registered as `name`, training `model` with `options` (its `Options` dataclass)."""
    return get_objective_class(name).build(model, options, teacher)


__all__ = [
    "OBJECTIVES", "BossStraighten", "DenoisingObjective", "FlowMatching", "FlowMatchingOptions", "MaskedDiffusion",
    "MaskedDiffusionOptions", "NoOptions", "Objective", "Reflow", "Teacher", "TrajectoryOptions", "VPDiffusion",
    "VPDiffusionOptions", "build_objective", "get_objective_class", "register_objective",
]
