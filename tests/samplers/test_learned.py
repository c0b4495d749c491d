"""Learned continuous samplers: exact at initialisation, lower error after fitting, NaN-safe, spec round trip."""

import math

import pytest
import torch

from fewstep.samplers import DiscreteVPPath, GaussianMixture, RectifiedFlowPath, get_schedule, get_solver, sample
from fewstep.samplers.learned import LearnedEvalTimes, LearnedGrid, LearnedWeights, fit_sampler, teacher_outputs
from fewstep.samplers.spec import SamplerSpec

MIXTURE = GaussianMixture.random(4, 8, std=0.2, seed=0)


def flow_fitting_problem():
    """(exact flow denoiser, 128 training noises, their 60-step teacher samples, 64 test noises, theirs)."""
    denoiser = MIXTURE.denoiser(RectifiedFlowPath())
    train = torch.randn(128, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    test = torch.randn(64, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return denoiser, train, teacher_outputs(denoiser, train, 60), test, teacher_outputs(denoiser, test, 60)


def dpmpp_3m_reference_weights(lams: torch.Tensor, i: int, order: int) -> torch.Tensor:
    """Weights on (m_i, m_{i-1}, m_{i-2}) of diffusers' DPM-Solver++ 1/2/3M step i, from its update formulas.

    diffusers writes the step as x' = (s'/s) x - a' (e^-h - 1) D with (newest first) D = D0 (order 1);
    D0 + D1/2, D1 = (m0 - m1)/r0 (2M, "midpoint"); D0 - phi2/phi1 D1 + phi3/phi1 D2 with
    D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0 + r1) (3M). Evaluated on unit vectors.
    """
    lams = [float(v) for v in lams]
    h = lams[i + 1] - lams[i]
    basis = torch.eye(3, dtype=torch.float64)
    m0, m1, m2 = basis[0], basis[1], basis[2]
    if order == 1:
        return m0[:1]
    r0 = (lams[i] - lams[i - 1]) / h
    d1_0 = (m0 - m1) / r0
    if order == 2:
        return (m0 + 0.5 * d1_0)[:2]
    r1 = (lams[i - 1] - lams[i - 2]) / h
    d1_1 = (m1 - m2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi1 = math.expm1(-h)
    phi2 = phi1 / h + 1
    phi3 = phi2 / h - 0.5
    return m0 - phi2 / phi1 * d1 + phi3 / phi1 * d2


def test_initialisation_equals_analytic_solver():
    path = DiscreteVPPath.from_betas("linear")
    init = get_schedule("uniform", path, 6)
    grid = LearnedGrid(path, init)
    ts = grid()
    assert torch.allclose(ts, init, rtol=1e-9, atol=1e-12)
    solver = get_solver("dpmpp_3m")
    coeffs = LearnedWeights(solver, 6)(ts, path)
    # 6 steps (< 15, lower_order_final): orders 1, 2, 3, 3, then 2, and 1 on the step that lands on t = 0;
    # the rows start at diffusers' DPM-Solver++(3M) weights (rounding only: 1e-12), zero-padded
    lams = path.lam(ts.detach())
    for i, order in enumerate([1, 2, 3, 3, 2, 1]):
        expected = torch.zeros(3, dtype=torch.float64)
        expected[:order] = dpmpp_3m_reference_weights(lams, i, order)
        torch.testing.assert_close(coeffs[i].detach(), expected, rtol=1e-12, atol=1e-12)
        assert float(coeffs[i].detach().sum()) == pytest.approx(1.0, abs=1e-12)  # consistent: a constant x0_hat stays put
    x = torch.randn(5, 8, dtype=torch.float64)
    denoiser = MIXTURE.denoiser(path)
    assert torch.allclose(sample(denoiser, x, ts, solver, coeffs=coeffs).x, sample(denoiser, x, init, solver).x, atol=1e-10)


def test_fitting_lowers_heldout_error_and_spec_reproduces_samples(tmp_path):
    denoiser, train, targets, test, test_targets = flow_fitting_problem()
    spec, history = fit_sampler(denoiser, 3, train, targets, learn="both", init_schedule="uniform",
                                iterations=40, heldout=(test, test_targets))
    assert history.heldout_after < 0.8 * history.heldout_before
    assert len(history.losses) == 40 and history.losses[-1] < history.losses[0]
    loaded = SamplerSpec.load(spec.save(tmp_path / "learned.safetensors"))
    with torch.no_grad():
        out = sample(denoiser, test, **loaded.sample_args()).x
    assert abs(float((out - test_targets).pow(2).mean().sqrt()) - history.heldout_after) < 1e-9


def test_nan_during_fitting_keeps_the_last_good_sampler():
    path = RectifiedFlowPath()
    denoiser = MIXTURE.denoiser(path)
    noise = torch.randn(32, 8, dtype=torch.float64)
    calls = {"n": 0}

    def flaky_loss(a, b):
        calls["n"] += 1
        return (a - b).pow(2).mean() * (float("nan") if calls["n"] == 6 else 1.0)

    spec, history = fit_sampler(denoiser, 3, noise, noise * 0, iterations=20, loss_fn=flaky_loss, validation_fraction=0.0)
    assert "non-finite loss at iteration 5" in history.stopped_early and len(history.losses) == 5
    assert torch.isfinite(spec.ts).all() and torch.isfinite(spec.coeffs).all()


def test_validation_selection_never_returns_worse_than_the_start():
    """With a learning rate far too large, the validated choice falls back to the analytic start."""
    path = RectifiedFlowPath()
    denoiser = MIXTURE.denoiser(path)
    noise = torch.randn(64, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    targets = teacher_outputs(denoiser, noise, 60)
    spec, history = fit_sampler(denoiser, 4, noise, targets, learn="weights", init_schedule="uniform",
                                iterations=20, lr_weights=50.0, validate_every=5)
    start = get_schedule("uniform", path, 4)
    val = slice(48, 64)
    with torch.no_grad():
        fitted = sample(denoiser, noise[val], spec.ts, spec.solver, coeffs=spec.coeffs).x
        analytic = sample(denoiser, noise[val], start, "dpmpp_2m").x
    assert (fitted - targets[val]).pow(2).mean() <= (analytic - targets[val]).pow(2).mean() + 1e-12


def test_zero_evaluation_offsets_reproduce_the_grid_bit_for_bit():
    for path in (DiscreteVPPath.from_betas("linear"), RectifiedFlowPath()):
        ts = get_schedule("uniform", path, 5)
        eval_ts = LearnedEvalTimes(path, 5)(ts)
        assert torch.equal(eval_ts, ts[:-1])
        x = torch.randn(6, 8, dtype=torch.float64)
        denoiser = MIXTURE.denoiser(path)
        assert torch.equal(sample(denoiser, x, ts, "dpmpp_2m", eval_ts=eval_ts).x, sample(denoiser, x, ts, "dpmpp_2m").x)


def test_evaluation_times_are_used_and_receive_gradients():
    path = RectifiedFlowPath()
    calls = []
    denoiser = MIXTURE.denoiser(path)

    class Recording:
        def __init__(self):
            self.path = path

        def __call__(self, x, t, **cond):
            calls.append(float(torch.as_tensor(t).detach()))
            return denoiser(x, t, **cond)

    ts = get_schedule("uniform", path, 3)
    times = LearnedEvalTimes(path, 3)
    with torch.no_grad():
        times.delta.copy_(torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64))
    eval_ts = times(ts)
    x = torch.randn(4, 8, dtype=torch.float64)
    out = sample(Recording(), x, ts, "dpmpp_2m", eval_ts=eval_ts).x
    assert calls == [float(t) for t in eval_ts.detach()]
    # a positive offset (higher log-SNR) asks about a less noisy time, a negative one about a noisier time
    assert eval_ts[0] < ts[0] and eval_ts[1] > ts[1] and eval_ts[2] < ts[2]
    out.pow(2).sum().backward()
    assert times.delta.grad is not None and bool((times.delta.grad != 0).all())


def test_learned_evaluation_times_fit_and_round_trip_through_spec_and_scheduler(tmp_path):
    from fewstep import FewStepScheduler

    denoiser, train, targets, test, test_targets = flow_fitting_problem()
    spec, history = fit_sampler(denoiser, 3, train, targets, learn="both", init_schedule="uniform",
                                iterations=40, heldout=(test, test_targets), learn_eval_times=True)
    assert spec.eval_ts is not None and not torch.equal(spec.eval_ts, spec.ts[:-1])
    assert history.heldout_after < 0.8 * history.heldout_before
    loaded = SamplerSpec.load(spec.save(tmp_path / "decoupled.safetensors"))
    assert torch.equal(loaded.eval_ts, spec.eval_ts)
    with torch.no_grad():
        reference = sample(denoiser, test, **loaded.sample_args()).x
    # the diffusers-style loop: the model is asked at the scheduler's timesteps, step() integrates on the grid
    scheduler = FewStepScheduler(prediction_type="flow_prediction", spec=str(tmp_path / "decoupled.safetensors"))
    scheduler.set_timesteps(3)
    x = test.clone()
    for timestep in scheduler.timesteps:
        t = float(timestep) / scheduler.config.num_train_timesteps
        x0 = denoiser(x, torch.tensor(t, dtype=torch.float64))
        velocity = (x - x0) / t  # flow_prediction output eps - x0 recovered from x = (1 - t) x0 + t eps
        x = scheduler.step(velocity, timestep, x).prev_sample
    torch.testing.assert_close(x, reference, rtol=1e-4, atol=1e-4)


def test_eval_times_are_checked():
    path = RectifiedFlowPath()
    ts = get_schedule("uniform", path, 3)
    x = torch.randn(2, 8, dtype=torch.float64)
    denoiser = MIXTURE.denoiser(path)
    with pytest.raises(ValueError, match="one time per step"):
        sample(denoiser, x, ts, "dpmpp_2m", eval_ts=ts)
    with pytest.raises(ValueError, match="multistep"):
        sample(denoiser, x, ts, "heun_flow", eval_ts=ts[:-1])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        sample(denoiser, x, ts, "dpmpp_2m", eval_ts=torch.tensor([1.0, 0.5, float("nan")], dtype=torch.float64))
