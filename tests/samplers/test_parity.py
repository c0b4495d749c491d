"""Parity with diffusers' DPMSolverMultistepScheduler and k-diffusion's sample_dpmpp_2m."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from fewstep import FewStepScheduler
from fewstep.samplers import ContinuousVPPath, DiscreteVPPath, GaussianMixture, RectifiedFlowPath, get_solver, sample

MIXTURE = GaussianMixture.random(3, 16, std=0.4, seed=0)


def run_scheduler(scheduler, model, x, num_steps, at_sigma=None):
    """diffusers' denoising loop; `at_sigma(x, i)` evaluates the model at the scheduler's exact sigma."""
    scheduler.set_timesteps(num_steps)
    for i, t in enumerate(scheduler.timesteps):
        output = at_sigma(x, i) if at_sigma else model(x, t)
        x = scheduler.step(output, t, x).prev_sample
    return x


def rel_err(a, b):
    return float((a - b).norm() / a.norm())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("num_steps", [5, 12])
def test_scheduler_matches_diffusers_vp(prediction_type, order, karras, num_steps):
    ref = DPMSolverMultistepScheduler(solver_order=order, prediction_type=prediction_type, use_karras_sigmas=karras)
    mine = FewStepScheduler.from_config(ref.config)
    assert mine.config.solver == {2: "dpmpp_2m", 3: "dpmpp_3m"}[order]
    model = MIXTURE.model(DiscreteVPPath.from_betas("linear"), prediction_type)
    model32 = lambda x, t: model(x.double(), t).float()  # noqa: E731
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    expected = run_scheduler(ref, model32, x, num_steps)
    got = run_scheduler(mine, model32, x, num_steps)
    assert torch.equal(ref.timesteps, mine.timesteps)
    assert rel_err(expected, got) <= 1e-5


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("num_steps", [6, 10])
def test_sample_matches_diffusers_flow(order, num_steps):
    """Flow prediction: same grid (diffusers' shifted flow sigmas), model evaluated at the exact sigma."""
    ref = DPMSolverMultistepScheduler(
        solver_order=order, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    path = RectifiedFlowPath()
    model = MIXTURE.model(path, "flow_prediction")
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    ref.set_timesteps(num_steps)
    ts = ref.sigmas.double()
    at_sigma = lambda x_, i: model.output_at(x_.double(), ts[i]).float()  # noqa: E731
    expected = run_scheduler(ref, None, x, num_steps, at_sigma=at_sigma)
    got = sample(MIXTURE.denoiser(path), x.double(), ts, get_solver({2: "dpmpp_2m", 3: "dpmpp_3m"}[order])).x
    assert rel_err(expected.double(), got) <= 1e-5


def test_sample_matches_k_diffusion_dpmpp_2m():
    from k_diffusion import sampling as k_sampling  # test extra; needs setuptools<81 (pkg_resources)

    path = ContinuousVPPath()
    exact = MIXTURE.denoiser(path)

    def ve_denoiser(x_ve, sigma):
        """k-diffusion's D(x_ve, sigma_ve), with x_ve = x / alpha and sigma_ve = sigma / alpha."""
        t = path.t_of_lam(-torch.log(sigma.reshape(-1)[0].double()))
        return exact(x_ve * path.alpha_sigma(t)[0], t)

    sigma_max = float(torch.exp(-path.lam(1.0)))
    sigma_min = float(torch.exp(-path.lam(path.t_min)))
    sigmas = k_sampling.get_sigmas_karras(10, sigma_min, sigma_max, device="cpu").double()
    x = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    alpha_start = (1 + sigmas[0] ** 2) ** -0.5
    expected = k_sampling.sample_dpmpp_2m(ve_denoiser, x / alpha_start, sigmas, disable=True)
    ts = torch.cat([path.t_of_lam(-torch.log(sigmas[:-1])), torch.zeros(1, dtype=torch.float64)])
    got = sample(exact, x, ts, get_solver("dpmpp_2m", lower_order_final=False)).x
    assert rel_err(expected, got) <= 1e-6


@pytest.mark.parametrize("num_steps", [4, 10])
@pytest.mark.parametrize("path_kind", ["vp", "flow"])
def test_heun_edm_matches_k_diffusion_sample_heun(num_steps, path_kind):
    """heun_edm is k-diffusion's sample_heun (EDM Alg. 1, no churn) on its Karras sigmas, Euler into sigma = 0."""
    from k_diffusion import sampling as k_sampling

    path = ContinuousVPPath() if path_kind == "vp" else RectifiedFlowPath()
    exact = MIXTURE.denoiser(path)

    def ve_denoiser(x_ve, sigma):
        t = path.t_of_lam(-torch.log(sigma.reshape(-1)[0].double()))
        return exact(x_ve * path.alpha_sigma(t)[0], t)

    sigma_max = float(torch.exp(-path.lam(path.t_hi_finite)))
    sigma_min = float(torch.exp(-path.lam(path.t_lo_finite)))
    sigmas = k_sampling.get_sigmas_karras(num_steps, sigma_min, sigma_max, device="cpu").double()
    x = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ts = torch.cat([path.t_of_lam(-torch.log(sigmas[:-1])), torch.zeros(1, dtype=torch.float64)])
    alpha_start = path.alpha_sigma(ts[0])[0]
    expected = k_sampling.sample_heun(ve_denoiser, x / alpha_start, sigmas, disable=True)
    out = sample(exact, x, ts, get_solver("heun_edm"))
    assert out.nfe == 2 * num_steps - 1  # Euler on the last step, into sigma = 0
    assert rel_err(expected, out.x) <= 1e-5
    # heun_flow is a different rule (other coordinates): it must not coincide
    assert rel_err(expected, sample(exact, x, ts, get_solver("heun_flow")).x) > 1e-4
