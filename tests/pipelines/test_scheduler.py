"""FewStepScheduler: config inheritance, save/load, contract details and bad input."""

import pytest
import torch
from diffusers import (
    DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
)

from fewstep import FewStepScheduler

SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler, PNDMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler])
def test_from_config_inherits_vp_training_schedule(cls):
    source = cls(**SD_BETAS, prediction_type="v_prediction", num_train_timesteps=1000)
    mine = FewStepScheduler.from_config(source.config, solver="dpmpp_2m", schedule="logsnr")
    assert mine.config.prediction_type == "v_prediction" and mine.path.kind == "vp"
    assert torch.allclose(mine.path.alphas_cumprod, source.alphas_cumprod.double(), rtol=1e-6)
    assert mine.config.solver == "dpmpp_2m" and mine.config.schedule == "logsnr"


def test_from_config_inherits_flow_and_shift():
    mine = FewStepScheduler.from_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    assert mine.path.kind == "flow" and mine.config.prediction_type == "flow_prediction" and mine.config.shift == 3.0
    dpm = DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=2.5, prediction_type="flow_prediction", solver_order=3)
    mine = FewStepScheduler.from_config(dpm.config)
    assert mine.path.kind == "flow" and mine.config.shift == 2.5 and mine.config.solver == "dpmpp_3m"


def test_from_config_maps_dpm_options():
    dpm = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", use_karras_sigmas=True, final_sigmas_type="sigma_min")
    mine = FewStepScheduler.from_config(dpm.config)
    assert (mine.config.solver, mine.config.schedule, mine.config.final) == ("sde_dpmpp_2m", "karras", "t_min")


def test_save_load_round_trip(tmp_path):
    mine = FewStepScheduler.from_config(DDPMScheduler(**SD_BETAS).config, solver="dpmpp_3m", schedule="karras", shift=1.0)
    mine.save_pretrained(tmp_path)
    loaded = FewStepScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(mine.config)
    mine.set_timesteps(9)
    loaded.set_timesteps(9)
    assert torch.equal(mine.timesteps, loaded.timesteps) and torch.equal(mine.ts, loaded.ts)


def test_timesteps_in_model_units():
    vp = FewStepScheduler()
    vp.set_timesteps(4)
    assert vp.timesteps.dtype == torch.int64 and vp.timesteps.tolist() == [999, 749, 500, 250]
    flow = FewStepScheduler(prediction_type="flow_prediction")
    flow.set_timesteps(4)
    assert flow.timesteps.tolist() == [1000.0, 750.0, 500.0, 250.0] and flow.sigmas[-1] == 0


def test_flow_sigmas_and_mu_like_flow_match_euler():
    ref = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    mine = FewStepScheduler.from_config(ref.config, solver="ddim")
    sigmas = torch.linspace(1.0, 1 / 6, 6).tolist()
    ref.set_timesteps(sigmas=sigmas, mu=0.8)
    mine.set_timesteps(sigmas=sigmas, mu=0.8)
    assert torch.allclose(mine.sigmas, ref.sigmas, atol=1e-6)
    assert torch.allclose(mine.timesteps, ref.timesteps, atol=1e-3)
    with pytest.raises(ValueError, match="mu="):
        mine.set_timesteps(6)


def test_ddim_step_equals_flow_match_euler_step():
    """First order on a flow is exactly Euler: FewStepScheduler(ddim) == FlowMatchEulerDiscreteScheduler."""
    ref, mine = FlowMatchEulerDiscreteScheduler(shift=3.0), None
    mine = FewStepScheduler.from_config(ref.config, solver="ddim", schedule="uniform")
    ref.set_timesteps(sigmas=torch.linspace(1.0, 0.2, 5).tolist())
    mine.set_timesteps(sigmas=torch.linspace(1.0, 0.2, 5).tolist())
    x_ref = x_mine = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    velocity = lambda x, t: torch.sin(x + t / 1000)  # noqa: E731
    for t_ref, t_mine in zip(ref.timesteps, mine.timesteps):
        x_ref = ref.step(velocity(x_ref, t_ref), t_ref, x_ref).prev_sample
        x_mine = mine.step(velocity(x_mine, t_mine), t_mine, x_mine).prev_sample
    assert torch.allclose(x_ref, x_mine, atol=1e-5)


def test_add_noise_matches_ddpm():
    ref, mine = DDPMScheduler(**SD_BETAS), FewStepScheduler(**SD_BETAS)
    x0, noise, t = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 500, 999])
    assert torch.allclose(mine.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), atol=1e-6)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="valid:.*dpmpp_2m"):
        FewStepScheduler(solver="unipc")
    with pytest.raises(ValueError, match="fewstep.samplers.sample"):
        FewStepScheduler(solver="heun_edm")
    with pytest.raises(ValueError, match="valid:.*karras"):
        FewStepScheduler(schedule="cosine")
    with pytest.raises(ValueError, match="contradicts"):
        FewStepScheduler.from_config(DDPMScheduler(prediction_type="v_prediction").config, prediction_type="epsilon")
    with pytest.raises(ValueError, match="flow_prediction"):
        FewStepScheduler.from_config(FlowMatchEulerDiscreteScheduler().config, prediction_type="epsilon")
    with pytest.raises(ValueError, match="unknown FewStepScheduler argument"):
        FewStepScheduler.from_config(DDPMScheduler().config, solver_typo="x")
    scheduler = FewStepScheduler()
    with pytest.raises(RuntimeError, match="set_timesteps"):
        scheduler.step(torch.zeros(1, 2), 999, torch.zeros(1, 2))
    with pytest.raises(ValueError, match=">= 1"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        scheduler.set_timesteps(timesteps=[999, 999, 500])
    scheduler.set_timesteps(3)
    with pytest.raises(FloatingPointError, match="NaN"):
        scheduler.step(torch.full((1, 2), float("nan")), scheduler.timesteps[0], torch.zeros(1, 2))
