"""Training objectives, one file each; `build_objective(config, model)` picks one by name."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .base import DenoisingObjective, Objective
from .boss_straighten import BossStraighten
from .flow_matching import FlowMatching
from .masked_diffusion import MaskedDiffusion
from .reflow import Reflow
from .vp_diffusion import VPDiffusion


def _flow(model: nn.Module, cfg: Any) -> Objective:
    return FlowMatching(model, cfg.cfg_dropout, cfg.time_sampling, cfg.logit_mean, cfg.logit_std,
                        cfg.num_train_timesteps, cfg.prediction_type)


def _vp(model: nn.Module, cfg: Any) -> Objective:
    return VPDiffusion(model, cfg.cfg_dropout, cfg.prediction_type, cfg.beta_schedule, cfg.num_train_timesteps)


def _boss(model: nn.Module, cfg: Any) -> Objective:
    return BossStraighten(model, cfg.spec, cfg.num_noises, cfg.fine_steps, cfg.num_train_timesteps, lora_rank=cfg.lora_rank)


def _reflow(model: nn.Module, cfg: Any) -> Objective:
    return Reflow(model, cfg.spec, cfg.num_noises, cfg.fine_steps, cfg.num_train_timesteps, lora_rank=cfg.lora_rank)


def _masked(model: nn.Module, cfg: Any) -> Objective:
    return MaskedDiffusion(model, cfg.mask_eps)


OBJECTIVES: dict[str, Callable[[nn.Module, Any], Objective]] = {
    "flow_matching": _flow, "vp_diffusion": _vp, "boss_straighten": _boss, "reflow": _reflow, "masked_diffusion": _masked,
}


def build_objective(objective_config: Any, model: nn.Module) -> Objective:
    """The objective named `objective_config.name`, training `model`."""
    if objective_config.name not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective_config.name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[objective_config.name](model, objective_config)


__all__ = ["BossStraighten", "DenoisingObjective", "FlowMatching", "MaskedDiffusion", "OBJECTIVES", "Objective", "Reflow",
           "VPDiffusion", "build_objective"]
