"""Noise paths, parameterisations and schedules against closed forms and diffusers."""

import pytest
import torch
from diffusers import DDPMScheduler

from fewstep.samplers import (
    ContinuousVPPath, DiscreteVPPath, RectifiedFlowPath, from_x0_eps, get_schedule, path_from_config, to_x0_eps,
    validate_grid,
)
from fewstep.samplers.schedules import available_schedules

PATHS = [DiscreteVPPath.from_betas("linear"), DiscreteVPPath.from_betas("squaredcos_cap_v2"), ContinuousVPPath(), RectifiedFlowPath()]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__)
def test_lam_inverse_round_trip(path):
    ts = torch.linspace(0.98, max(path.t_lo_finite, 0.002), 50, dtype=torch.float64)
    assert torch.allclose(path.t_of_lam(path.lam(ts)), ts, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_discrete_path_matches_diffusers_alphas_cumprod(schedule):
    ref = DDPMScheduler(beta_schedule=schedule)
    path = DiscreteVPPath.from_betas(schedule)
    k = torch.arange(1000)
    alpha, sigma = path.alpha_sigma(path.t_of_model_time(k))
    assert torch.allclose(alpha**2, ref.alphas_cumprod.double(), rtol=1e-6)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones(1000, dtype=torch.float64))
    assert torch.equal(path.model_time(path.t_of_model_time(k)), k.double())
    assert path.alpha_sigma(0.0) == (1.0, 0.0)


def test_flow_path_is_linear_interpolation():
    path = RectifiedFlowPath()
    alpha, sigma = path.alpha_sigma(torch.tensor([0.0, 0.25, 1.0]))
    assert alpha.tolist() == [1.0, 0.75, 0.0] and sigma.tolist() == [0.0, 0.25, 1.0]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__)
def test_path_config_round_trip(path):
    rebuilt = path_from_config(path.to_config())
    ts = torch.linspace(0.9, 0.1, 7, dtype=torch.float64)
    assert torch.allclose(rebuilt.lam(ts), path.lam(ts))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample", "flow_prediction"])
@pytest.mark.parametrize("alpha, sigma", [(0.8, 0.6), (0.3, 0.7), (0.95, 0.1)])
def test_parameterisations_round_trip(prediction_type, alpha, sigma):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    x = alpha * x0 + sigma * eps
    out = from_x0_eps(x0, eps, torch.tensor(alpha), torch.tensor(sigma), prediction_type)
    x0_hat, eps_hat = to_x0_eps(out, x, torch.tensor(alpha), torch.tensor(sigma), prediction_type)
    assert torch.allclose(x0_hat, x0) and torch.allclose(eps_hat, eps)


def test_unknown_prediction_type_lists_valid():
    with pytest.raises(ValueError, match="valid:.*epsilon"):
        to_x0_eps(torch.zeros(1), torch.zeros(1), 1.0, 1.0, "noise")


@pytest.mark.parametrize("name", [n for n in available_schedules() if n != "explicit"])
@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("final", ["zero", "t_min"])
def test_schedules_are_valid_and_end_as_stated(name, path, final):
    ts = get_schedule(name, path, 7, final=final)
    assert ts.shape == (8,)
    validate_grid(ts)
    assert float(ts[-1]) == pytest.approx(0.0 if final == "zero" else (path.t_min if name in ("uniform", "quadratic", "flow_shift") else path.t_lo_finite))


def test_uniform_on_ddpm_equals_diffusers_timesteps():
    from diffusers import DPMSolverMultistepScheduler

    path = DiscreteVPPath.from_betas("linear")
    for spacing in ["linspace", "leading", "trailing"]:
        ref = DPMSolverMultistepScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
        for n in [2, 5, 7, 10, 25]:
            ref.set_timesteps(n)
            ts = get_schedule("uniform", path, n, timestep_spacing=spacing, steps_offset=ref.config.steps_offset)
            assert torch.equal(path.model_time(ts[:-1]).long(), ref.timesteps)


def test_logsnr_is_uniform_in_lam_and_karras_in_sigma_rho():
    path = ContinuousVPPath()
    lams = path.lam(get_schedule("logsnr", path, 6, final="t_min"))
    assert torch.allclose(lams.diff(), lams.diff()[0].expand(6), rtol=1e-9)
    sig = torch.exp(-path.lam(get_schedule("karras", path, 6, final="t_min", rho=7.0)))
    root = sig ** (1 / 7)
    assert torch.allclose(root.diff(), root.diff()[0].expand(6), rtol=1e-8)


def test_flow_shift_matches_sd3_formula():
    path = RectifiedFlowPath()
    ts = get_schedule("flow_shift", path, 4, shift=3.0)
    base = torch.linspace(1, 0, 5, dtype=torch.float64)
    assert torch.allclose(ts, 3 * base / (1 + 2 * base))


@pytest.mark.parametrize(
    "grid, message",
    [([1.0, 0.5, 0.7, 0.0], "strictly decreasing"), ([1.2, 0.5, 0.0], r"\[0, 1\]"), ([1.0], "at least 2"),
     ([1.0, float("nan"), 0.0], "NaN")],
)
def test_bad_grids_are_rejected(grid, message):
    with pytest.raises(ValueError, match=message):
        get_schedule("explicit", RectifiedFlowPath(), ts=grid)


def test_bad_schedule_arguments():
    path = RectifiedFlowPath()
    with pytest.raises(ValueError, match="valid:.*logsnr"):
        get_schedule("cosine", path, 4)
    with pytest.raises(ValueError, match=">= 1"):
        get_schedule("uniform", path, 0)
