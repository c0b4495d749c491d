"""AceStepPipeline with FewStepScheduler: parity with fewstep's own sampler, save/load, guidance, bad input."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from fewstep.distill.objectives.acestep import AceStep
from fewstep.models.acestep import (
    acestep_condition_encoder,
    acestep_transformer,
    music_text_encoder,
    music_tokenizer,
    oobleck_autoencoder,
    silence_latents,
)
from fewstep.pipelines import FewStepScheduler
from fewstep.pipelines.music import (
    check_duration,
    check_prompts,
    generate_music,
    is_music_pipeline,
    load_music_pipeline,
    music_denoiser,
    nfe_of,
    plain_cfg,
)
from fewstep.samplers import sample

PROMPTS = ["piano, 120 bpm, C major", "bell, 80 bpm, A minor"]
LYRICS = ["la lo li", "da"]
DURATION = 1.024  # 32 latent frames at 8 kHz / hop 256


@pytest.fixture(scope="module")
def pipe():
    from diffusers import AceStepPipeline, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    vae = oobleck_autoencoder(latent_channels=4, width=8, downsampling_ratios=(4, 4, 16), sample_rate=8000)
    tokenizer = music_tokenizer(AceStep.template_texts(PROMPTS, LYRICS, DURATION))
    encoder = acestep_condition_encoder(width=32, text_dim=16, latent_channels=4, num_heads=2)
    encoder.silence_latent.copy_(silence_latents(vae))
    pipe = AceStepPipeline(vae=vae.eval(), text_encoder=music_text_encoder(len(tokenizer), dim=16), tokenizer=tokenizer,
                           transformer=acestep_transformer(latent_channels=4, width=32, num_layers=2, num_heads=2).eval(),
                           condition_encoder=encoder.eval(),
                           scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents(pipe, steps: int, noise: torch.Tensor, **kwargs) -> torch.Tensor:
    return pipe(prompt=PROMPTS, lyrics=LYRICS, audio_duration=DURATION, num_inference_steps=steps, guidance_scale=1.0,
                latents=noise, output_type="latent", **kwargs).audios


@contextlib.contextmanager
def scheduler_of(pipe, scheduler):
    """The pipeline with `scheduler` swapped in for the block."""
    original = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        yield pipe
    finally:
        pipe.scheduler = original


def pipeline_grid(steps: int, shift: float = 3.0) -> torch.Tensor:
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "unipc_bh2"])
def test_fewstep_scheduler_in_the_pipeline_equals_fewsteps_sampler(pipe, solver):
    """The pipeline with FewStepScheduler == fewstep.samplers.sample on the pipeline's own shifted grid."""
    noise = torch.randn(2, 32, 4, generator=torch.Generator().manual_seed(1))
    with scheduler_of(pipe, FewStepScheduler.from_config(pipe.scheduler.config, solver=solver)):
        ours = latents(pipe, 6, noise.clone())
    denoiser, cond, shape = music_denoiser(pipe, PROMPTS, LYRICS, DURATION)
    assert shape == (32, 4)
    ts = pipeline_grid(6).float().double()  # the pipeline computes its grid in float32
    with torch.no_grad():
        reference = sample(denoiser, noise.clone(), ts, solver, **cond).x
    torch.testing.assert_close(ours, reference.to(ours.dtype), atol=2e-4, rtol=1e-4)


def test_euler_few_step_scheduler_equals_the_pipelines_own_euler(pipe):
    noise = torch.randn(2, 32, 4, generator=torch.Generator().manual_seed(2))
    euler = latents(pipe, 8, noise.clone())
    with scheduler_of(pipe, FewStepScheduler.from_config(pipe.scheduler.config, solver="ddim")):
        ours = latents(pipe, 8, noise.clone())
    torch.testing.assert_close(ours, euler, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(euler, latents(pipe, 2, noise.clone()), atol=1e-3)  # the step count matters


def test_generate_music_returns_finite_audio_of_the_requested_length_and_counts_nfe(pipe):
    samples = generate_music(pipe, PROMPTS[:1], LYRICS[:1], num_clips=3, num_steps=4, duration=DURATION, batch_size=2)
    assert samples.audio.shape == (3, 1, round(DURATION * 8000))
    assert torch.isfinite(samples.audio).all()
    assert samples.nfe == 4 and samples.prompts == PROMPTS[:1] * 3
    again = generate_music(pipe, PROMPTS[:1], LYRICS[:1], num_clips=3, num_steps=4, duration=DURATION, batch_size=3)
    torch.testing.assert_close(again.audio, samples.audio, atol=1e-5, rtol=1e-4)  # per-clip seeds: batch-independent
    assert nfe_of(pipe, 4, guidance_scale=3.0) == 8
    generators = [torch.Generator().manual_seed(k) for k in range(3)]
    direct = pipe(prompt=PROMPTS[:1] * 3, lyrics=LYRICS[:1] * 3, audio_duration=DURATION, num_inference_steps=4,
                  guidance_scale=1.0, generator=generators, output_type="latent").audios
    torch.testing.assert_close(samples.latents, direct, atol=1e-5, rtol=1e-4)  # the final latents are kept


def test_cfg_and_apg_guidance_differ_and_cfg_matches_its_formula(pipe):
    import diffusers.pipelines.ace_step.pipeline_ace_step as module

    cond, uncond = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    original = module.normalized_guidance
    with plain_cfg():
        assert module.normalized_guidance is not original
        torch.testing.assert_close(module.normalized_guidance(pred_cond=cond, pred_uncond=uncond, guidance_scale=2.0),
                                   cond + 2.0 * (cond - uncond))
    assert module.normalized_guidance is original
    kwargs = dict(num_clips=1, num_steps=3, duration=DURATION, guidance_scale=3.0)
    apg = generate_music(pipe, PROMPTS[:1], LYRICS[:1], guidance="apg", **kwargs).audio
    cfg = generate_music(pipe, PROMPTS[:1], LYRICS[:1], guidance="cfg", **kwargs).audio
    assert torch.isfinite(apg).all() and torch.isfinite(cfg).all()
    assert not torch.allclose(apg, cfg, atol=1e-4)


def test_save_load_round_trip_with_a_few_step_scheduler(pipe, tmp_path):
    from diffusers import AceStepPipeline

    pipe.save_pretrained(tmp_path / "music")
    assert is_music_pipeline(tmp_path / "music")
    loaded = load_music_pipeline(tmp_path / "music", solver="dpmpp_2m")
    assert isinstance(loaded, AceStepPipeline) and isinstance(loaded.scheduler, FewStepScheduler)
    noise = torch.randn(2, 32, 4, generator=torch.Generator().manual_seed(3))
    with scheduler_of(pipe, FewStepScheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m")):
        before = latents(pipe, 5, noise.clone())
    torch.testing.assert_close(latents(loaded, 5, noise.clone()), before, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="not a saved AceStepPipeline"):
        load_music_pipeline(tmp_path)


def test_unknown_tags_and_bad_durations_are_refused(pipe):
    check_prompts(pipe, PROMPTS, {})
    with pytest.raises(ValueError, match="violin"):
        check_prompts(pipe, ["violin, 120 bpm, C major"], {"tags": {"instruments": ["piano", "bell"]}})
    for bad in (0.0, -1.0, float("nan"), 1e6):
        with pytest.raises(ValueError, match="out of range"):
            check_duration(pipe, bad)
    check_duration(pipe, DURATION)
    with pytest.raises(ValueError, match="one lyrics string or one per prompt"):
        generate_music(pipe, PROMPTS, ["a", "b", "c"], duration=DURATION)
    with pytest.raises(ValueError, match="guidance"):
        generate_music(pipe, PROMPTS, LYRICS, duration=DURATION, guidance="pag")
    assert math.isfinite(float(DURATION))


def test_a_continuous_time_flow_config_gets_a_usable_path_and_every_schedule(pipe):
    """ACE-Step's scheduler config has num_train_timesteps=1 (the model takes t itself): fewstep grids still work."""
    scheduler = FewStepScheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m", schedule="logsnr")
    assert scheduler.path.num_train_timesteps == 1
    assert 0 < scheduler.path.t_lo_finite < 0.01 and scheduler.path.t_hi_finite > 0.99
    scheduler.set_timesteps(num_inference_steps=8)
    timesteps = scheduler.timesteps
    assert timesteps.shape == (8,) and float(timesteps[0]) == 1.0 and bool((timesteps.diff() < 0).all())
    assert float(timesteps[-1]) < 0.1  # model times are t itself, not t x 1000


def test_a_sampler_spec_sets_the_grid_inside_the_pipeline_and_fixes_the_step_count(pipe, tmp_path):
    """A BOSS / learned spec replaces the pipeline's shift grid; the pipeline then steps exactly on it."""
    from fewstep.samplers import RectifiedFlowPath
    from fewstep.samplers.spec import SamplerSpec

    ts = torch.tensor([1.0, 0.9, 0.6, 0.25, 0.0], dtype=torch.float64)
    spec = SamplerSpec.from_grid("dpmpp_2m", ts, RectifiedFlowPath(1))
    spec.save(tmp_path / "spec.safetensors")
    noise = torch.randn(2, 32, 4, generator=torch.Generator().manual_seed(4))
    with scheduler_of(pipe, FewStepScheduler.from_config(pipe.scheduler.config, spec=str(tmp_path / "spec.safetensors"))):
        ours = latents(pipe, 4, noise.clone())
        assert torch.allclose(pipe.scheduler.timesteps.double(), ts[:-1].float().double())
        with pytest.raises(ValueError, match="fitted for 4 steps"):
            latents(pipe, 6, noise.clone())
    denoiser, cond, _ = music_denoiser(pipe, PROMPTS, LYRICS, DURATION)
    with torch.no_grad():
        reference = sample(denoiser, noise.clone(), ts, "dpmpp_2m", **cond).x
    torch.testing.assert_close(ours, reference.to(ours.dtype), atol=2e-4, rtol=1e-4)
