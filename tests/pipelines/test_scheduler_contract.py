"""FewStepScheduler against the contract diffusers' pipelines rely on, checked against diffusers itself.

Covers what a pipeline does with a scheduler: config and save/load round trips, compatibility
round trips through other schedulers' configs, step shapes and dtypes, add_noise,
scale_model_input, timesteps' dtype and device, starting mid-schedule (img2img), configs that
omit keys (SD1.5-style), and every DPMSolverMultistep option either honoured or refused.
"""

import json

import pytest
import torch
from diffusers import (
    DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
    PNDMScheduler, UniPCMultistepScheduler,
)

from fewstep import FewStepScheduler
from fewstep.samplers import DiscreteVPPath, GaussianMixture

SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
MIXTURE = GaussianMixture.random(3, 16, std=0.4, seed=0)

# scheduler_config.json of Stable Diffusion 1.5 as shipped: no timestep_spacing, prediction_type, ...
SD15_PNDM_CONFIG = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False,
}


def mixture_model(scheduler, prediction_type="epsilon"):
    """The exact mixture network on the scheduler's own training schedule, in float32."""
    path = scheduler.path if isinstance(scheduler, FewStepScheduler) else DiscreteVPPath(scheduler.alphas_cumprod.double())
    model = MIXTURE.model(path, prediction_type)
    return lambda x, t: model(x.double(), t).float()


def run_loop(scheduler, model, x, start=0, generator=None):
    """A pipeline's denoising loop from index `start` (img2img calls set_begin_index first)."""
    if start:
        scheduler.set_begin_index(start)
    for t in scheduler.timesteps[start:]:
        kwargs = {"generator": generator} if generator is not None else {}
        x = scheduler.step(model(x, t), t, x, **kwargs).prev_sample
    return x


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def noise(shape=(8, 16), seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- config and save/load


def test_save_load_keeps_class_name_version_and_state(tmp_path):
    mine = FewStepScheduler.from_config(DDPMScheduler(**SD_BETAS).config, solver="dpmpp_3m", schedule="karras")
    mine.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "FewStepScheduler" and "_diffusers_version" in saved
    loaded = FewStepScheduler.from_pretrained(tmp_path)
    assert loaded.config["_class_name"] == "FewStepScheduler"
    assert loaded.config["_diffusers_version"] == saved["_diffusers_version"]
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == {
        k: v for k, v in mine.config.items() if not k.startswith("_")
    }
    for scheduler in (mine, loaded):
        scheduler.set_timesteps(7)
    assert torch.equal(mine.timesteps, loaded.timesteps) and torch.equal(mine.sigmas, loaded.sigmas)


def test_from_config_of_itself_keeps_every_choice():
    dpm = DPMSolverMultistepScheduler(use_karras_sigmas=True, solver_order=3)
    mine = FewStepScheduler.from_config(dpm.config, schedule="logsnr", solver="dpmpp_2m")
    again = FewStepScheduler.from_config(mine.config)  # the hidden use_karras_sigmas must not win
    assert (again.config.schedule, again.config.solver) == ("logsnr", "dpmpp_2m")


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler, PNDMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler])
def test_compatibility_round_trip(cls):
    """X -> FewStepScheduler -> X keeps X's training schedule and prediction type."""
    source = cls(**SD_BETAS, prediction_type="v_prediction", timestep_spacing="trailing", steps_offset=1)
    mine = FewStepScheduler.from_config(source.config)
    back = cls.from_config(mine.config)
    for key in ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps", "prediction_type",
                "timestep_spacing", "steps_offset"):
        assert back.config[key] == source.config[key], key
    assert torch.equal(back.alphas_cumprod, source.alphas_cumprod)
    assert cls in mine.compatibles and DPMSolverMultistepScheduler in mine.compatibles


def test_sd15_config_inherits_only_what_it_states():
    """SD1.5's file omits timestep_spacing: every diffusers scheduler then uses its own default (linspace)."""
    pndm = PNDMScheduler.from_config(SD15_PNDM_CONFIG)
    mine = FewStepScheduler.from_config(pndm.config, solver="dpmpp_2m")
    dpm = DPMSolverMultistepScheduler.from_config(pndm.config)
    for scheduler in (mine, dpm):
        scheduler.set_timesteps(4)
    assert mine.timesteps.tolist() == dpm.timesteps.tolist() == [999, 749, 500, 250]
    assert mine.config.timestep_spacing == "linspace" and mine.config.steps_offset == 1
    # and the sample agrees with diffusers' DPM-Solver++(2M) on the exact model
    model, x = mixture_model(dpm), noise()
    assert rel_err(run_loop(mine, model, x), run_loop(dpm, model, x)) < 1e-5


# ---------------------------------------------------------------- step contract


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_step_keeps_shape_and_dtype(dtype):
    scheduler = FewStepScheduler(**SD_BETAS)
    scheduler.set_timesteps(4)
    x = noise((2, 3, 4, 4)).to(dtype)
    out = scheduler.step(torch.zeros_like(x), scheduler.timesteps[0], x)
    assert out.prev_sample.shape == x.shape and out.prev_sample.dtype == dtype
    assert isinstance(scheduler.step(torch.zeros_like(x), scheduler.timesteps[1], x, return_dict=False), tuple)
    assert torch.equal(scheduler.scale_model_input(x, scheduler.timesteps[0]), x)
    assert scheduler.init_noise_sigma == 1.0 and len(scheduler) == 1000


def test_timesteps_dtype_and_device():
    vp, flow = FewStepScheduler(), FewStepScheduler(prediction_type="flow_prediction")
    for scheduler, dtype in ((vp, torch.int64), (flow, torch.float32)):
        scheduler.set_timesteps(5, device="cpu")
        assert scheduler.timesteps.dtype == dtype and scheduler.timesteps.device.type == "cpu"
        scheduler.set_timesteps(5, device="meta")
        assert scheduler.timesteps.device.type == "meta"


def test_add_noise_matches_ddpm_and_flow_match():
    x0, eps = noise((3, 4), 2), noise((3, 4), 3)
    ddpm, vp = DDPMScheduler(**SD_BETAS), FewStepScheduler(**SD_BETAS)
    t = torch.tensor([0, 500, 999])
    assert torch.allclose(vp.add_noise(x0, eps, t), ddpm.add_noise(x0, eps, t), atol=1e-6)
    flow_match = FlowMatchEulerDiscreteScheduler(shift=3.0)
    flow = FewStepScheduler.from_config(flow_match.config)
    flow_match.set_timesteps(4)
    flow.set_timesteps(4)
    t = flow_match.timesteps[1:2]
    assert torch.allclose(flow.scale_noise(x0, t, eps), flow_match.scale_noise(x0, t, eps), atol=1e-6)


# ---------------------------------------------------------------- mid-schedule start (img2img)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("start", [1, 3])
def test_mid_schedule_start_matches_diffusers(order, start):
    dpm = DPMSolverMultistepScheduler(**SD_BETAS, solver_order=order)
    mine = FewStepScheduler.from_config(dpm.config)
    model, x = mixture_model(dpm), noise()
    for scheduler in (mine, dpm):
        scheduler.set_timesteps(10)
    expected = run_loop(dpm, model, x, start)
    mine.set_timesteps(10)
    assert rel_err(run_loop(mine, model, x, start), expected) < 1e-5
    # without set_begin_index (older img2img pipelines step from timesteps[start:] directly)
    mine.set_timesteps(10)
    got = x
    for t in mine.timesteps[start:]:
        got = mine.step(model(got, t), t, got).prev_sample
    assert rel_err(got, expected) < 1e-5


def test_mid_schedule_start_then_full_run_uses_full_history():
    """After an img2img run, set_timesteps + a full run is plain text-to-image again."""
    dpm = DPMSolverMultistepScheduler(**SD_BETAS)
    mine = FewStepScheduler.from_config(dpm.config)
    model, x = mixture_model(dpm), noise()
    mine.set_timesteps(8)
    run_loop(mine, model, x, start=3)
    for scheduler in (mine, dpm):
        scheduler.set_timesteps(8)
    assert rel_err(run_loop(mine, model, x), run_loop(dpm, model, x)) < 1e-5


# ---------------------------------------------------------------- DPMSolverMultistep options


@pytest.mark.parametrize("order", [1, 2, 3])
def test_sde_dpmsolver_every_order_matches_diffusers(order):
    dpm = DPMSolverMultistepScheduler(**SD_BETAS, algorithm_type="sde-dpmsolver++", solver_order=order)
    mine = FewStepScheduler.from_config(dpm.config)
    assert mine.config.solver == {1: "sde_dpmpp_1", 2: "sde_dpmpp_2m", 3: "sde_dpmpp_3m"}[order]
    model, x = mixture_model(dpm), noise()
    outputs = []
    for scheduler in (mine, dpm):
        scheduler.set_timesteps(8)
        outputs.append(run_loop(scheduler, model, x, generator=torch.Generator().manual_seed(5)))
    assert rel_err(*outputs) < 1e-5


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
def test_heun_solver_type_matches_diffusers(algorithm):
    dpm = DPMSolverMultistepScheduler(**SD_BETAS, solver_type="heun", algorithm_type=algorithm)
    mine = FewStepScheduler.from_config(dpm.config)
    midpoint = FewStepScheduler.from_config(dpm.config, solver_type="midpoint")
    model, x = mixture_model(dpm), noise()
    outputs = []
    for scheduler in (mine, dpm, midpoint):
        scheduler.set_timesteps(6)
        outputs.append(run_loop(scheduler, model, x, generator=torch.Generator().manual_seed(5)))
    assert rel_err(outputs[0], outputs[1]) < 1e-5
    assert rel_err(outputs[2], outputs[1]) > 1e-3  # the option really changes the step


def test_noise_prediction_dpm_solver_and_beta_sigmas_are_refused():
    for algorithm in ("dpmsolver", "sde-dpmsolver"):
        config = DPMSolverMultistepScheduler(algorithm_type=algorithm, final_sigmas_type="sigma_min").config
        with pytest.raises(ValueError, match="noise-prediction DPM-Solver"):
            FewStepScheduler.from_config(config)
        assert FewStepScheduler.from_config(config, solver="dpmpp_2m").config.solver == "dpmpp_2m"
    config = DPMSolverMultistepScheduler(use_beta_sigmas=True).config
    with pytest.raises(ValueError, match="use_beta_sigmas"):
        FewStepScheduler.from_config(config)
    assert FewStepScheduler.from_config(config, schedule="karras").config.schedule == "karras"


def test_lambda_min_clipped_like_diffusers():
    dpm = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1)
    mine = FewStepScheduler.from_config(dpm.config)
    for scheduler in (mine, dpm):
        scheduler.set_timesteps(5)
    assert mine.timesteps.tolist() == dpm.timesteps.tolist() and mine.timesteps[0] == 995
    model, x = mixture_model(dpm), noise()
    assert rel_err(run_loop(mine, model, x), run_loop(dpm, model, x)) < 1e-5


def test_zero_terminal_snr_linear_betas_build_and_match_diffusers():
    dpm = DPMSolverMultistepScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    mine = FewStepScheduler.from_config(dpm.config)
    for scheduler in (mine, dpm):
        scheduler.set_timesteps(6)
    assert mine.timesteps.tolist() == dpm.timesteps.tolist()
    # alpha_bar agrees wherever diffusers' table is monotone (all but the last few, pure-noise, entries)
    assert torch.allclose(mine.path.alphas_cumprod[:990], dpm.alphas_cumprod[:990].double(), rtol=1e-6)
    model, x = mixture_model(mine, "v_prediction"), noise()
    assert rel_err(run_loop(mine, model, x), run_loop(dpm, model, x)) < 1e-4


@pytest.mark.parametrize("num_steps", [1000, 1500])
def test_more_inference_steps_than_training_timesteps(num_steps):
    dpm = DPMSolverMultistepScheduler(num_train_timesteps=1000)
    mine = FewStepScheduler.from_config(dpm.config)
    dpm.set_timesteps(num_steps)
    mine.set_timesteps(num_steps)
    assert mine.timesteps.tolist() == sorted(set(dpm.timesteps.tolist()), reverse=True)
    assert mine.num_inference_steps == len(mine.timesteps)


def test_sigma_min_final_on_uniform_grid_equals_diffusers():
    """final_sigmas_type='sigma_min' maps to final='t_min'; on the uniform grid both end at sigma(k=0)."""
    dpm = DPMSolverMultistepScheduler(**SD_BETAS, final_sigmas_type="sigma_min")
    mine = FewStepScheduler.from_config(dpm.config)
    for scheduler in (mine, dpm):
        scheduler.set_timesteps(6)
    assert mine.config.final == "t_min"
    assert mine.timesteps.tolist() == dpm.timesteps.tolist()
    assert torch.allclose(mine.sigmas, dpm.sigmas, rtol=1e-5)
    # karras: fewstep spaces n + 1 distinct sigmas, diffusers n and repeats sigma_min (documented)
    karras = FewStepScheduler.from_config(dpm.config, schedule="karras")
    karras.set_timesteps(6)
    assert len(torch.unique(karras.sigmas)) == 7


def test_learned_variance_channels_are_dropped():
    scheduler = FewStepScheduler(variance_type="learned_range")
    scheduler.set_timesteps(3)
    x = noise((2, 3, 4, 4))
    output = torch.cat([torch.zeros_like(x), torch.full_like(x, 100.0)], dim=1)
    reference = FewStepScheduler()
    reference.set_timesteps(3)
    t = scheduler.timesteps[0]
    assert torch.equal(scheduler.step(output, t, x).prev_sample, reference.step(torch.zeros_like(x), t, x).prev_sample)


def test_unipc_solver_type_is_not_inherited():
    """UniPC's bh1 / bh2 choose the unipc_* solver; solver_type stays DPM-Solver++(2M)'s option."""
    mine = FewStepScheduler.from_config(UniPCMultistepScheduler(solver_type="bh1").config)
    assert mine.config.solver_type == "midpoint" and mine.config.solver == "unipc_bh1"
