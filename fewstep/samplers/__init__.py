"""Learning-free and learned few-step sampling on any noise path (torch only).

    from fewstep.samplers import RectifiedFlowPath, GaussianMixture, get_schedule, get_solver, sample
    path = RectifiedFlowPath()
    denoiser = GaussianMixture.random(4, 2).denoiser(path)    # or Denoiser(model, path, "flow_prediction")
    ts = get_schedule("logsnr", path, num_steps=8)
    x0, nfe = sample(denoiser, torch.randn(16, 2), ts, get_solver("dpmpp_2m"))
"""

from .denoiser import (
    CFGDenoiser, Denoiser, DenoiserLike, NetworkDenoiser, ThresholdedDenoiser, dynamic_threshold, renoising_sample,
)
from .mixture import GaussianMixture, MixtureDenoiser, MixtureModel
from .parameterization import PREDICTION_TYPES, from_x0_eps, to_x0, to_x0_eps
from .paths import ContinuousVPPath, DiscreteVPPath, NoisePath, RectifiedFlowPath, path_from_config
from .sampling import SampleOutput, StepInfo, reference_solution, sample
from .schedules import available_schedules, get_schedule, validate_grid
from .solvers import Solver, StepPlan, available_solvers, get_solver
from .unipc import UniPCSolver  # registers the unipc_* solvers
from .update import MultistepState, StepUpdate, apply_update

__all__ = [
    "CFGDenoiser", "ContinuousVPPath", "Denoiser", "DenoiserLike", "DiscreteVPPath", "GaussianMixture",
    "MixtureDenoiser", "MixtureModel", "MultistepState", "NoisePath", "PREDICTION_TYPES", "RectifiedFlowPath", "SampleOutput",
    "Solver", "StepInfo", "StepPlan", "StepUpdate", "ThresholdedDenoiser", "UniPCSolver", "apply_update", "available_schedules",
    "available_solvers", "dynamic_threshold", "from_x0_eps", "get_schedule", "get_solver", "path_from_config", "reference_solution",
    "renoising_sample", "sample", "to_x0", "to_x0_eps", "validate_grid",
]
