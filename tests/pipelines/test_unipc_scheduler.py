"""FewStepScheduler.from_config(UniPCMultistepScheduler config): the unipc_* solvers against diffusers itself."""

import pytest
import torch
from diffusers import UniPCMultistepScheduler

from fewstep import FewStepScheduler
from fewstep.samplers import DiscreteVPPath, GaussianMixture

SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
MIXTURE = GaussianMixture.random(3, 16, std=0.4, seed=0)


def mixture_model(ref, prediction_type):
    model = MIXTURE.model(DiscreteVPPath(ref.alphas_cumprod.double()), prediction_type)
    return lambda x, t: model(x.double(), t).float()


def states(scheduler, model, num_steps, start=0, seed=1, shape=(8, 16)):
    """Every prev_sample of a pipeline's loop from index `start` (img2img calls set_begin_index)."""
    scheduler.set_timesteps(num_steps)
    if start:
        scheduler.set_begin_index(start)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    out = []
    for t in scheduler.timesteps[start:]:
        x = scheduler.step(model(x, t), t, x).prev_sample
        out.append(x)
    return out


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("karras", [False, True])
def test_unipc_matches_diffusers(variant, order, prediction_type, karras):
    """Every intermediate state within 1e-5 relative (measured: <= 1.1e-6).

    diffusers' bh1 with final_sigmas_type="zero" (its default) returns NaN at the last step
    (B(h) = -h = -inf times a zero residual); fewstep returns the first-order x0_hat there.
    """
    ref = UniPCMultistepScheduler(
        **SD_BETAS, solver_order=order, solver_type=variant, prediction_type=prediction_type, use_karras_sigmas=karras
    )
    mine = FewStepScheduler.from_config(ref.config)
    assert mine.config.solver == {1: f"unipc_{variant}_1", 2: f"unipc_{variant}", 3: f"unipc_{variant}_3"}[order]
    model = mixture_model(ref, prediction_type)
    expected, got = states(ref, model, 8), states(mine, model, 8)
    assert torch.equal(ref.timesteps, mine.timesteps)
    for theirs, ours in zip(expected[:-1], got[:-1]):
        assert rel_err(ours, theirs) <= 1e-5
    if variant == "bh2":
        assert rel_err(got[-1], expected[-1]) <= 1e-5
    else:
        assert torch.isnan(expected[-1]).all() and torch.isfinite(got[-1]).all()


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("num_steps", [6, 16])
def test_unipc_sigma_min_final_matches_diffusers(variant, num_steps):
    """final_sigmas_type="sigma_min" on the uniform grid: the whole run, bh1 included; 16 steps
    checks that the orders are lowered at the end at any step count, as diffusers' UniPC does."""
    ref = UniPCMultistepScheduler(**SD_BETAS, solver_order=3, solver_type=variant, final_sigmas_type="sigma_min")
    mine = FewStepScheduler.from_config(ref.config)
    assert mine.config.final == "t_min"
    model = mixture_model(ref, "epsilon")
    assert rel_err(states(mine, model, num_steps)[-1], states(ref, model, num_steps)[-1]) <= 1e-5


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("start", [1, 3])
def test_unipc_mid_schedule_start_matches_diffusers(order, start):
    """img2img: no history and no corrector before the start, exactly as UniPCMultistepScheduler."""
    ref = UniPCMultistepScheduler(**SD_BETAS, solver_order=order)
    mine = FewStepScheduler.from_config(ref.config)
    model = mixture_model(ref, "epsilon")
    expected = states(ref, model, 10, start=start)[-1]
    assert rel_err(states(mine, model, 10, start=start)[-1], expected) <= 1e-5
    assert rel_err(states(mine, model, 10)[-1], states(ref, model, 10)[-1]) <= 1e-5  # then a full run again


def test_disable_corrector_and_lower_order_final_are_inherited():
    ref = UniPCMultistepScheduler(**SD_BETAS, solver_order=3, disable_corrector=[0, 1, 4], lower_order_final=False,
                                  final_sigmas_type="sigma_min")
    mine = FewStepScheduler.from_config(ref.config)
    assert list(mine.config.disable_corrector) == [0, 1, 4] and mine.config.lower_order_final is False
    model = mixture_model(ref, "epsilon")
    assert rel_err(states(mine, model, 7)[-1], states(ref, model, 7)[-1]) <= 1e-5


def test_unipc_options_that_fewstep_cannot_honour_are_refused():
    with pytest.raises(ValueError, match="predict_x0=False"):
        FewStepScheduler.from_config(UniPCMultistepScheduler(predict_x0=False).config)
    # an explicit solver replaces UniPC's noise-prediction variant
    assert FewStepScheduler.from_config(UniPCMultistepScheduler(predict_x0=False).config, solver="unipc_bh2").solver.order == 2
    with pytest.raises(ValueError, match="solver_order=4"):
        FewStepScheduler.from_config(UniPCMultistepScheduler(solver_order=4).config)
    with pytest.raises(ValueError, match="disable_corrector.*UniC corrector"):
        FewStepScheduler(solver="dpmpp_2m", disable_corrector=[1])


def test_unipc_spec_with_learned_weights_runs_the_same_in_scheduler_and_sample(tmp_path):
    """A spec for a unipc solver (grid + per-step predictor weights) loads into FewStepScheduler and
    gives sample()'s result: the corrector rides along in both, on top of the learned weights."""
    from fewstep.samplers import Denoiser, RectifiedFlowPath, get_schedule, get_solver, sample
    from fewstep.samplers.spec import SamplerSpec

    path = RectifiedFlowPath()
    ts = get_schedule("flow_shift", path, 6, shift=3.0)
    plans = get_solver("unipc_bh2").plan(ts, path)
    coeffs = torch.stack([torch.cat([p.weights, p.weights.new_zeros(2 - p.order)]) for p in plans])
    coeffs[2:5] += torch.tensor([0.05, -0.05], dtype=torch.float64)
    file = SamplerSpec.from_grid("unipc_bh2", ts, path, coeffs=coeffs).save(tmp_path / "unipc.safetensors")
    scheduler = FewStepScheduler(prediction_type="flow_prediction", spec=str(file))
    scheduler.set_timesteps(6)
    assert scheduler.solver.name == "unipc_bh2"
    model = MIXTURE.model(path, "flow_prediction")
    x = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got = x
    for i, t in enumerate(scheduler.timesteps):
        got = scheduler.step(model(got, path.model_time(scheduler.ts[i])), t, got).prev_sample
    spec = SamplerSpec.load(file)
    expected = sample(Denoiser(model, path, "flow_prediction"), x, **spec.sample_args()).x
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    analytic = sample(Denoiser(model, path, "flow_prediction"), x, ts, "unipc_bh2").x
    assert rel_err(expected, analytic) > 1e-4  # the learned weights are used
    with pytest.raises(ValueError, match="disable_corrector"):
        FewStepScheduler(prediction_type="flow_prediction", spec=str(SamplerSpec.from_grid("dpmpp_2m", ts, path).save(
            tmp_path / "dpm.safetensors")), disable_corrector=[1])


def test_unipc_dynamic_thresholding_matches_diffusers():
    """Thresholded x0_hat feeds both the corrector and the predictor, as in UniPCMultistepScheduler."""
    ref = UniPCMultistepScheduler(**SD_BETAS, solver_order=3, thresholding=True, sample_max_value=0.8)
    mine = FewStepScheduler.from_config(ref.config)
    assert mine.solver.thresholding and mine.config.sample_max_value == 0.8
    flat = mixture_model(ref, "epsilon")
    model = lambda x, t: flat(x.reshape(8, 16), t).reshape(x.shape)  # noqa: E731  (images: diffusers thresholds [B, C, ...])
    image = (8, 1, 4, 4)
    expected, got = states(ref, model, 9, shape=image), states(mine, model, 9, shape=image)
    assert rel_err(got[-1], expected[-1]) <= 1e-5
    plain = FewStepScheduler.from_config(UniPCMultistepScheduler(**SD_BETAS, solver_order=3).config)
    unthresholded = states(plain, model, 9, shape=image)
    assert rel_err(unthresholded[-1], expected[-1]) > 1e-3  # thresholding is active here
