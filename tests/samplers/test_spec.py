"""Sampler specs: safetensors round trip, compatibility checks, use in sample() and FewStepScheduler."""

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline

from fewstep import FewStepScheduler
from fewstep.samplers import DiscreteVPPath, GaussianMixture, RectifiedFlowPath, get_schedule, get_solver, sample
from fewstep.samplers.spec import SamplerSpec

VP = DiscreteVPPath.from_betas("linear")


def learned_spec(num_steps: int = 5) -> SamplerSpec:
    ts = get_schedule("karras", VP, num_steps)
    coeffs = torch.zeros(num_steps, 2, dtype=torch.float64)
    for i, plan in enumerate(get_solver("dpmpp_2m").plan(ts, VP)):
        coeffs[i, : plan.order] = plan.weights * (1.1 if i == 2 else 1.0)  # a "learned" change
    return SamplerSpec.from_grid("dpmpp_2m", ts, VP, coeffs=coeffs, provenance={"method": "test"})


def test_round_trip_and_sampling(tmp_path):
    spec = learned_spec()
    loaded = SamplerSpec.load(spec.save(tmp_path / "spec.safetensors"))
    assert torch.equal(loaded.ts, spec.ts) and torch.equal(loaded.coeffs, spec.coeffs)
    assert loaded.provenance["method"] == "test" and "created" in loaded.provenance
    denoiser = GaussianMixture.random(2, 3, seed=0).denoiser(loaded.build_path())
    x = torch.randn(4, 3, dtype=torch.float64)
    a = sample(denoiser, x, spec.ts, spec.solver, coeffs=spec.coeffs).x
    b = sample(denoiser, x, loaded.ts, loaded.solver, coeffs=loaded.coeffs).x
    assert torch.equal(a, b)


def test_scheduler_uses_spec_and_matches_sample(tmp_path):
    spec = learned_spec()
    file = spec.save(tmp_path / "spec.safetensors")
    scheduler = FewStepScheduler.from_config(DDPMScheduler().config, spec=str(file))
    mixture = GaussianMixture.random(2, 3, seed=0)
    model = mixture.model(VP, "epsilon")
    x = torch.randn(4, 3, dtype=torch.float64)
    scheduler.set_timesteps(5)
    y = x
    for i, t in enumerate(scheduler.timesteps):
        y = scheduler.step(model.output_at(y, scheduler.ts[i]), t, y).prev_sample
    expected = sample(mixture.denoiser(VP), x, spec.ts, "dpmpp_2m", coeffs=spec.coeffs).x
    assert torch.allclose(y, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="fitted for 5 steps, not 8"):
        scheduler.set_timesteps(8)


def test_spec_travels_with_a_saved_pipeline(tmp_path):
    from diffusers import UNet2DModel

    file = learned_spec().save(tmp_path / "boss.safetensors")
    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = DDPMPipeline(unet=unet, scheduler=FewStepScheduler.from_config(DDPMScheduler().config, spec=str(file)))
    pipe.save_pretrained(tmp_path / "pipe")
    file.unlink()  # the saved pipeline must not depend on the original file
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert torch.equal(reloaded.scheduler.sampler_spec.coeffs, learned_spec().coeffs)
    images = reloaded(batch_size=1, num_inference_steps=5, output_type="np").images
    assert images.shape == (1, 8, 8, 3)


def test_bad_specs(tmp_path):
    flow_spec = SamplerSpec.from_grid("ddim", get_schedule("uniform", RectifiedFlowPath(), 4), RectifiedFlowPath())
    file = flow_spec.save(tmp_path / "flow.safetensors")
    with pytest.raises(ValueError, match="made for path"):
        FewStepScheduler.from_config(DDPMScheduler().config, spec=str(file))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        SamplerSpec.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        SamplerSpec.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="NaN"):
        SamplerSpec.from_grid("ddim", torch.tensor([1.0, 0.5, 0.0]), VP, coeffs=torch.tensor([[1.0], [float("nan")]]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow.safetensors", "junk.safetensors"]
