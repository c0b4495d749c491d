"""The sampling loop: NFE, callbacks, shapes, gradients, guidance, SDE statistics, bad input."""

import pytest
import torch

from fewstep.samplers import (
    CFGDenoiser, ContinuousVPPath, Denoiser, DiscreteVPPath, GaussianMixture, RectifiedFlowPath, dynamic_threshold,
    get_schedule, get_solver, sample,
)

FLOW = RectifiedFlowPath()


@pytest.mark.parametrize("name, nfe_per_step", [("ddim", 1), ("dpmpp_2m", 1), ("dpmpp_3m", 1), ("sde_dpmpp_2m", 1),
                                                ("dpmpp_2s", 2), ("dpmpp_3s", 3), ("heun_flow", 2), ("heun_edm", 2)])
def test_nfe_count_and_callbacks(name, nfe_per_step):
    denoiser = GaussianMixture.random(2, 4, seed=0).denoiser(FLOW)
    seen = []
    out = sample(denoiser, torch.randn(3, 4), get_schedule("uniform", FLOW, 5), get_solver(name), callback=seen.append)
    # the first step (from t = 1, alpha = 0) and the last (to sigma = 0) are first order: one evaluation each
    assert out.nfe == 2 + 3 * nfe_per_step
    assert [s.i for s in seen] == list(range(5)) and seen[-1].nfe == out.nfe and seen[-1].t_next == 0.0


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 4, 16), (2, 5)])
def test_any_tensor_shape(shape):
    dim = int(torch.tensor(shape[1:]).prod())
    denoiser = GaussianMixture.random(2, dim, seed=0).denoiser(ContinuousVPPath())
    x = torch.randn(shape)
    ts = get_schedule("logsnr", denoiser.path, 4)
    out = sample(denoiser, x, ts, "dpmpp_2m")
    assert out.x.shape == x.shape and out.x.dtype == x.dtype
    # the layout must not matter: the same numbers as the flattened vectors
    flat = sample(denoiser, x.reshape(shape[0], -1), ts, "dpmpp_2m").x
    assert torch.allclose(out.x.reshape(shape[0], -1), flat, atol=1e-6)


def test_ddim_is_exact_for_a_point_mass():
    """With a single data point the ODE is solved exactly by the first-order step (x0_hat is constant)."""
    point = torch.tensor([[1.5, -0.5]], dtype=torch.float64)
    denoiser = GaussianMixture(point, 1e-6).denoiser(FLOW)
    out = sample(denoiser, torch.randn(4, 2, dtype=torch.float64), get_schedule("uniform", FLOW, 1), "ddim")
    assert torch.allclose(out.x, point.expand(4, 2), atol=1e-5)


def test_gradients_flow_to_the_grid_and_coefficients():
    denoiser = GaussianMixture.random(3, 2, seed=0).denoiser(ContinuousVPPath())
    ts = get_schedule("logsnr", denoiser.path, 4).clone().requires_grad_(True)
    coeffs = torch.ones(4, 2, dtype=torch.float64, requires_grad=True)
    out = sample(denoiser, torch.randn(5, 2, dtype=torch.float64), ts, "dpmpp_2m", coeffs=coeffs)
    out.x.square().sum().backward()
    assert ts.grad is not None and torch.isfinite(ts.grad).all() and ts.grad[1:-1].abs().sum() > 0
    assert coeffs.grad is not None and coeffs.grad.abs().sum() > 0


def test_learned_coefficients_at_init_equal_analytic():
    """coeffs holding the analytic weights run the very same arithmetic as coeffs=None: bit-equal by design."""
    denoiser = GaussianMixture.random(3, 2, seed=0).denoiser(ContinuousVPPath())
    ts = get_schedule("logsnr", denoiser.path, 6)
    solver = get_solver("dpmpp_3m")
    coeffs = torch.zeros(6, 3, dtype=torch.float64)
    for i, plan in enumerate(solver.plan(ts, denoiser.path)):
        coeffs[i, : plan.order] = plan.weights
    x = torch.randn(5, 2, dtype=torch.float64)
    assert torch.equal(sample(denoiser, x, ts, solver).x, sample(denoiser, x, ts, solver, coeffs=coeffs).x)


def test_learned_coefficients_multiply_their_own_step():
    """DDIM step i is x' = (s'/s) x + alpha' (1 - e^-h) c_i x0_hat_i: changing c_i by delta moves the state after
    step i by exactly alpha' (1 - e^-h) delta x0_hat_i (closed form from the path), leaves the earlier steps
    alone, and on the last step (to sigma = 0, where x' = c x0_hat) scales the sample by c."""
    path = ContinuousVPPath()
    denoiser = GaussianMixture.random(3, 2, seed=0).denoiser(path)
    ts = get_schedule("logsnr", path, 6)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ones = torch.ones(6, 1, dtype=torch.float64)
    base, changed = [], []
    reference = sample(denoiser, x, ts, "ddim", coeffs=ones, callback=base.append).x
    coeffs = ones.clone()
    coeffs[2, 0] = 1.25
    sample(denoiser, x, ts, "ddim", coeffs=coeffs, callback=changed.append)
    assert torch.equal(changed[1].x, base[1].x)  # steps 0 and 1 ran the same arithmetic
    alpha, _ = path.alpha_sigma(ts)
    lam = path.lam(ts)
    d_coef = alpha[3] * -torch.expm1(-(lam[3] - lam[2]))
    torch.testing.assert_close(changed[2].x - base[2].x, d_coef * 0.25 * base[2].x0_hat, rtol=1e-9, atol=1e-13)
    last = ones.clone()
    last[-1, 0] = 3.0
    torch.testing.assert_close(sample(denoiser, x, ts, "ddim", coeffs=last).x, 3.0 * reference, rtol=1e-14, atol=0)
    torch.testing.assert_close(reference, base[-1].x0_hat, rtol=1e-14, atol=0)  # x' = x0_hat at sigma = 0


def test_sde_solver_samples_the_data_distribution():
    """SDE-DPM-Solver++(2M) with the exact denoiser of N(mu, s^2) returns N(mu, s^2) samples."""
    path = DiscreteVPPath.from_betas("linear")
    mu, std = torch.tensor([[0.7, -1.2]], dtype=torch.float64), 0.5
    denoiser = GaussianMixture(mu, std).denoiser(path)
    g = torch.Generator().manual_seed(0)
    out = sample(denoiser, torch.randn(4000, 2, generator=g, dtype=torch.float64),
                 get_schedule("uniform", path, 50), "sde_dpmpp_2m", generator=g)
    assert torch.allclose(out.x.mean(0), mu[0], atol=0.04)
    assert torch.allclose(out.x.std(0), torch.full((2,), std, dtype=torch.float64), atol=0.03)


def test_cfg_denoiser_extrapolates_x0():
    class Conditional(torch.nn.Module):
        def forward(self, x, timestep, label):
            return x * 0 + label[:, None].to(x.dtype)  # "sample" prediction = the label

    denoiser = Denoiser(Conditional(), ContinuousVPPath(), "sample")
    cfg = CFGDenoiser(denoiser, guidance_scale=3.0, uncond={"label": torch.zeros(2)})
    x0 = cfg(torch.zeros(2, 3), torch.tensor(0.5), label=torch.tensor([1.0, 2.0]))
    assert torch.allclose(x0, torch.tensor([[3.0] * 3, [6.0] * 3]))


def test_dynamic_thresholding_matches_definition():
    """Imagen: s = the q-quantile of |x0| (linear interpolation), clamped to [1, max]; x0 -> clamp(x0, -s, s) / s."""
    # |x0| sorted 0.1, 0.5, 2, 3: the 0.75-quantile sits at 2.25 of 3 -> s = 2 + 0.25 (3 - 2) = 2.25
    x0 = torch.tensor([[0.5, -3.0, 2.0, 0.1]])
    assert torch.allclose(dynamic_threshold(x0, 0.75, 2.5), torch.tensor([[0.5 / 2.25, -1.0, 2.0 / 2.25, 0.1 / 2.25]]))
    # 4 + 0.25 (6 - 4) = 4.5 is clamped to the maximum 2.5
    x0 = torch.tensor([[0.5, -6.0, 4.0, 0.1]])
    assert torch.allclose(dynamic_threshold(x0, 0.75, 2.5), torch.tensor([[0.2, -1.0, 1.0, 0.04]]))
    assert torch.equal(dynamic_threshold(torch.tensor([[0.5, -0.9]])), torch.tensor([[0.5, -0.9]]))


def test_bad_input_messages():
    denoiser = GaussianMixture.random(2, 2, seed=0).denoiser(FLOW)
    with pytest.raises(ValueError, match="valid:.*dpmpp_2m"):
        get_solver("dpm++")
    with pytest.raises(ValueError, match="coeffs has 2 rows for 4 steps"):
        sample(denoiser, torch.randn(1, 2), get_schedule("uniform", FLOW, 4), "dpmpp_2m", coeffs=torch.ones(2, 2))
    nan_model = Denoiser(lambda x, t: x * float("nan"), FLOW, "flow_prediction")
    with pytest.raises(FloatingPointError, match="NaN"):
        sample(nan_model, torch.randn(1, 2), get_schedule("uniform", FLOW, 2), "ddim")
    with pytest.raises(ValueError, match="flow_prediction"):
        Denoiser(lambda x, t: x, FLOW, "epsilon")


def test_heun_is_a_deprecated_alias_of_heun_flow():
    with pytest.warns(FutureWarning, match="'heun_flow'.*'heun_edm'"):
        solver = get_solver("heun")
    assert solver.name == "heun_flow" and solver.heun == "flow"
