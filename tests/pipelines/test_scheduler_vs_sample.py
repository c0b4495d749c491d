"""FewStepScheduler's step and `sample()` run the same update: identical results on the exact mixture model."""

import pytest
import torch

from fewstep import FewStepScheduler
from fewstep.pipelines.scheduler import scheduler_solvers
from fewstep.samplers import Denoiser, GaussianMixture, sample

MIXTURE = GaussianMixture.random(3, 16, std=0.4, seed=0)
SETUPS = {  # (FewStepScheduler arguments, steps)
    "vp": (dict(prediction_type="epsilon", schedule="logsnr"), 7),
    "flow": (dict(prediction_type="flow_prediction", schedule="flow_shift", shift=3.0), 6),
}


TOLERANCE = {  # float32: the scheduler fuses each multiply-add (one rounding), sample() does not
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
}


def scheduler_loop(scheduler, model, x, start, seed):
    """A pipeline's denoising loop from index `start`, SDE noise from a seeded generator.

    The network is told the grid time in full precision, as sample()'s Denoiser tells it (a flow
    scheduler's float32 `timesteps` would round it at 1e-7 and move the result by as much).
    """
    generator = torch.Generator().manual_seed(seed)
    if start:
        scheduler.set_begin_index(start)
    for i in range(start, len(scheduler.timesteps)):
        t = scheduler.timesteps[i]
        output = model(x, scheduler.path.model_time(scheduler.ts[i]))
        x = scheduler.step(output, t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("solver", scheduler_solvers())
@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scheduler_loop_equals_sample(solver, setup, dtype):
    kwargs, steps = SETUPS[setup]
    scheduler = FewStepScheduler(solver=solver, **kwargs)
    scheduler.set_timesteps(steps)
    model = MIXTURE.model(scheduler.path, kwargs["prediction_type"])
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1), dtype=dtype)
    got = scheduler_loop(scheduler, model, x, start=0, seed=5)
    denoiser = Denoiser(model, scheduler.path, kwargs["prediction_type"])
    expected = sample(denoiser, x, scheduler.ts, scheduler.solver, generator=torch.Generator().manual_seed(5)).x
    assert got.dtype == expected.dtype == dtype
    torch.testing.assert_close(got, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("solver", ["dpmpp_3m", "sde_dpmpp_2m", "unipc_bh2_3"])
def test_mid_schedule_start_equals_sample_on_the_rest_of_the_grid(solver):
    """img2img: starting at index 3, the history starts there, as sample() on the remaining grid does."""
    kwargs, steps = SETUPS["vp"]
    scheduler = FewStepScheduler(solver=solver, **kwargs)
    scheduler.set_timesteps(steps)
    model = MIXTURE.model(scheduler.path, kwargs["prediction_type"])
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = scheduler_loop(scheduler, model, x, start=3, seed=7)
    denoiser = Denoiser(model, scheduler.path, kwargs["prediction_type"])
    expected = sample(denoiser, x, scheduler.ts[3:], scheduler.solver, generator=torch.Generator().manual_seed(7)).x
    torch.testing.assert_close(got, expected, **TOLERANCE[torch.float64])
