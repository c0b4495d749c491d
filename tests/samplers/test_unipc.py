"""UniPC (UniP predictor + UniC corrector) in sample(): parity with diffusers on flows, corrector
semantics, learned weights and bad input (its order of convergence: tests/samplers/test_convergence.py)."""

import pytest
import torch
from diffusers import UniPCMultistepScheduler

from fewstep.samplers import (
    ContinuousVPPath, GaussianMixture, RectifiedFlowPath, get_schedule, get_solver, sample,
)
from fewstep.samplers.learned import fit_sampler, teacher_outputs
from fewstep.samplers.unipc import UniPCSolver, unipc_name

MIXTURE = GaussianMixture.random(3, 16, std=0.4, seed=0)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def diffusers_states(ref, at_sigma, x, num_steps):
    """Every prev_sample of diffusers' loop; `at_sigma(x, i)` is the model output at the scheduler's exact sigma."""
    ref.set_timesteps(num_steps)
    states = []
    for i, t in enumerate(ref.timesteps):
        x = ref.step(at_sigma(x, i), t, x).prev_sample
        states.append(x)
    return states


def sample_states(denoiser, x, ts, solver):
    states = []
    out = sample(denoiser, x, ts, solver, callback=lambda info: states.append(info.x.clone()))
    return out, states


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("num_steps", [6, 10])
def test_sample_matches_diffusers_unipc_flow(variant, order, num_steps):
    """flow_prediction on diffusers' shifted flow sigmas: every intermediate state within 1e-5.

    diffusers' bh1 steps to sigma = 0 with B(h) = -h = -inf times a zero residual: its last
    state is NaN (diffusers 0.3x); fewstep's last step there is the exact first-order x0_hat.
    """
    ref = UniPCMultistepScheduler(
        solver_order=order, solver_type=variant, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    path = RectifiedFlowPath()
    model = MIXTURE.model(path, "flow_prediction")
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    ref.set_timesteps(num_steps)
    ts = ref.sigmas.double()
    expected = diffusers_states(ref, lambda x_, i: model.output_at(x_.double(), ts[i]).float(), x, num_steps)
    out, got = sample_states(MIXTURE.denoiser(path), x.double(), ts, get_solver(unipc_name(variant, order)))
    assert out.nfe == num_steps
    for mine, theirs in zip(got[:-1], expected[:-1]):
        assert rel_err(mine, theirs.double()) <= 1e-5
    assert torch.isfinite(got[-1]).all()
    if variant == "bh2":
        assert rel_err(got[-1], expected[-1].double()) <= 1e-5
    else:
        assert torch.isnan(expected[-1]).all()


def test_b_h_cancels_where_rho_is_solved():
    """UniPC-3's predictor and corrector solve for rho (rho ~ 1/B(h)), so bh1 and bh2 coincide there;
    B(h) matters only where the reference fixes rho = 1/2 (UniP-2, UniC-1)."""
    path = ContinuousVPPath()
    ts = get_schedule("logsnr", path, 8)
    p1, p2 = get_solver("unipc_bh1_3").plan(ts, path), get_solver("unipc_bh2_3").plan(ts, path)
    for a, b in zip(p1[2:-2], p2[2:-2]):
        assert a.order == 3
        torch.testing.assert_close(a.weights, b.weights, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(a.corrector.m_coefs, b.corrector.m_coefs, rtol=1e-9, atol=1e-12)
    q1, q2 = get_solver("unipc_bh1").plan(ts, path), get_solver("unipc_bh2").plan(ts, path)
    assert not torch.allclose(q1[3].weights, q2[3].weights)


def test_unip_bh2_without_corrector_is_dpmpp_2m():
    """UniP-2 with B(h) = e^-h - 1 and rho = 1/2 is DPM-Solver++(2M) (midpoint) term for term."""
    path = ContinuousVPPath()
    ts = get_schedule("logsnr", path, 9)
    x = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    den = MIXTURE.denoiser(path)
    got = sample(den, x, ts, get_solver("unipc_bh2", corrector=False)).x
    torch.testing.assert_close(got, sample(den, x, ts, "dpmpp_2m").x, rtol=1e-12, atol=1e-12)


def test_corrector_uses_no_extra_model_call_and_changes_the_state():
    path = RectifiedFlowPath()
    ts = get_schedule("flow_shift", path, 6, shift=3.0)
    x = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    den = MIXTURE.denoiser(path)
    with_c, without = sample(den, x, ts, "unipc_bh2"), sample(den, x, ts, get_solver("unipc_bh2", corrector=False))
    assert with_c.nfe == without.nfe == 6
    assert rel_err(with_c.x, without.x) > 1e-3
    plans = get_solver("unipc_bh2").plan(ts, path)
    # no corrector from t = 1 on a flow (alpha = 0: infinite h), none after the last step
    assert plans[0].corrector is None and plans[-1].corrector is None
    assert all(p.corrector is not None for p in plans[1:-1])
    skipped = get_solver("unipc_bh2", disable_corrector=(2,)).plan(ts, path)
    assert skipped[2].corrector is None and skipped[3].corrector is not None


# ---------------------------------------------------------------- options, learning, bad input


def test_lower_order_final_caps_every_grid_like_diffusers():
    """diffusers' UniPC lowers the order of the last steps at any step count (DPM-Solver++: below 15)."""
    path = ContinuousVPPath()
    lams = path.lam(get_schedule("logsnr", path, 20, final="t_min"))
    assert get_solver("unipc_bh2_3").step_orders(lams) == [1, 2] + [3] * 16 + [2, 1]
    assert get_solver("unipc_bh2_3").step_orders(lams, start=5)[5:8] == [1, 2, 3]
    assert get_solver("unipc_bh2_3", lower_order_final=False).step_orders(lams)[-2:] == [3, 3]


def test_learned_weights_fit_and_replace_the_predictor_weights():
    """Learned coefficients replace UniP's weights; the corrector adds its analytic increment on top."""
    path = RectifiedFlowPath()
    den = MIXTURE.denoiser(path)
    train = torch.randn(64, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    test = torch.randn(32, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    spec, history = fit_sampler(
        den, 4, train, teacher_outputs(den, train, 40), solver="unipc_bh2", iterations=30,
        heldout=(test, teacher_outputs(den, test, 40)),
    )
    assert spec.solver == "unipc_bh2" and spec.coeffs.shape == (4, 2)
    assert history.heldout_after <= history.heldout_before
    solver = get_solver("unipc_bh2")
    plans = solver.plan(spec.ts, path)
    delta = spec.coeffs[1, :2] - plans[1].weights
    update = plans[1].update(spec.coeffs[1])
    torch.testing.assert_close(update.m_coefs, plans[1].d_coef * (plans[1].weights + delta))
    # zero-correction coefficients reproduce the analytic sampler exactly
    analytic = torch.stack([torch.cat([p.weights, p.weights.new_zeros(2 - p.order)]) for p in plans])
    x = test[:8]
    torch.testing.assert_close(sample(den, x, spec.ts, solver, coeffs=analytic).x, sample(den, x, spec.ts, solver).x)


def test_corrector_with_a_solver_that_cannot_take_one_is_refused():
    with pytest.raises(ValueError, match="takes no corrector.*unipc_bh2"):
        get_solver("dpmpp_2s", corrector=True)
    with pytest.raises(ValueError, match="takes no corrector"):
        get_solver("dpmpp_2m", corrector=True)
    with pytest.raises(ValueError, match="variant"):
        UniPCSolver(name="unipc_x", kind="multistep", order=2, variant="bh3")
    assert isinstance(get_solver("unipc_bh1_3"), UniPCSolver) and get_solver("unipc_bh1_3").order == 3
