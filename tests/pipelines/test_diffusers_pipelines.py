"""FewStepScheduler end to end in diffusers pipelines built from tiny random components."""

import pytest
import torch
from diffusers import (
    AutoencoderKL, DDPMPipeline, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline,
    FluxTransformer2DModel, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, UNet2DConditionModel, UNet2DModel,
)

from fewstep import FewStepScheduler


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )


@pytest.mark.parametrize("solver, dpm_options", [
    ("ddim", dict(solver_order=1)),
    ("dpmpp_2m", dict(solver_order=2)),
    ("dpmpp_3m", dict(solver_order=3)),
    ("sde_dpmpp_2m", dict(solver_order=2, algorithm_type="sde-dpmsolver++")),
])
def test_ddpm_pipeline_matches_dpm_solver_multistep(solver, dpm_options):
    """The whole pipeline, not just the scheduler: same UNet, same noise, same images as diffusers' DPM-Solver++."""
    dpm = DPMSolverMultistepScheduler.from_config(DDPMScheduler().config, use_karras_sigmas=True, **dpm_options)
    ours = FewStepScheduler.from_config(DDPMScheduler().config, solver=solver, schedule="karras")
    unet = tiny_unet()
    run = lambda scheduler: DDPMPipeline(unet=unet, scheduler=scheduler)(  # noqa: E731
        batch_size=2, num_inference_steps=6, output_type="np", generator=torch.Generator().manual_seed(0)).images
    expected, images = run(dpm), run(ours)
    assert images.shape == (2, 8, 8, 3) and expected.std() > 0.05
    assert abs(images - expected).max() < 1e-4


def test_saved_pipeline_reloads_with_fewstep_scheduler(tmp_path):
    scheduler = FewStepScheduler.from_config(DDPMScheduler().config, solver="dpmpp_2m", schedule="karras")
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=scheduler)
    pipe.save_pretrained(tmp_path)
    index = (tmp_path / "model_index.json").read_text()
    assert '"fewstep"' in index and '"FewStepScheduler"' in index
    reloaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert isinstance(reloaded.scheduler, FewStepScheduler) and reloaded.scheduler.config.schedule == "karras"
    # the scheduler state must be exactly equal; the images only to float tolerance (a reloaded
    # UNet's forward may differ by ~1e-7 through memory layout and kernel choice)
    for scheduler in (pipe.scheduler, reloaded.scheduler):
        scheduler.set_timesteps(3)
    assert torch.equal(pipe.scheduler.timesteps, reloaded.scheduler.timesteps)
    assert torch.equal(pipe.scheduler.ts, reloaded.scheduler.ts) and torch.equal(pipe.scheduler.sigmas, reloaded.scheduler.sigmas)
    assert [vars(row) for row in pipe.scheduler._table] == [vars(row) for row in reloaded.scheduler._table]
    run = lambda p: p(batch_size=1, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(1)).images  # noqa: E731
    original, again = run(pipe), run(reloaded)
    assert original.std() > 0.05  # a real image, not a constant
    assert abs(original - again).max() < 1e-4


def tiny_stable_diffusion() -> StableDiffusionPipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4, sample_size=8,
    )
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return StableDiffusionPipeline(
        vae=vae, unet=unet, scheduler=scheduler, text_encoder=None, tokenizer=None, safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def test_stable_diffusion_pipeline_with_guidance_matches_dpm_solver():
    """Text-to-image with classifier-free guidance vs DPMSolverMultistep on the same components."""
    pipe = tiny_stable_diffusion()
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(1, 4, 8, generator=g), torch.zeros(1, 4, 8)
    run = lambda scale: pipe(  # noqa: E731
        prompt_embeds=cond, negative_prompt_embeds=uncond, guidance_scale=scale, num_inference_steps=5,
        height=8, width=8, output_type="pt", generator=torch.Generator().manual_seed(0),
    ).images
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    expected = run(5.0)
    pipe.scheduler = FewStepScheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m")
    guided, unguided = run(5.0), run(1.0)
    assert guided.shape == (1, 3, 8, 8) and torch.allclose(guided, expected, atol=1e-4)
    assert not torch.allclose(guided, unguided, atol=1e-3)  # guidance changes the result


@pytest.mark.parametrize("solver, order", [("dpmpp_2m", 2), ("dpmpp_3m", 3)])
def test_img2img_starts_mid_schedule_like_dpm_solver(solver, order):
    """StableDiffusionImg2ImgPipeline sets a begin index: the multistep history must start there."""
    pipe = StableDiffusionImg2ImgPipeline(**tiny_stable_diffusion().components)
    g = torch.Generator().manual_seed(0)
    cond, image = torch.randn(1, 4, 8, generator=g), torch.rand(1, 3, 8, 8, generator=g)
    run = lambda: pipe(  # noqa: E731
        prompt_embeds=cond, negative_prompt_embeds=torch.zeros(1, 4, 8), image=image, strength=0.6,
        guidance_scale=3.0, num_inference_steps=10, output_type="pt", generator=torch.Generator().manual_seed(0),
    ).images
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, solver_order=order)
    expected = run()
    pipe.scheduler = FewStepScheduler.from_config(pipe.scheduler.config, solver=solver)
    assert pipe.scheduler.config.solver == solver
    assert torch.allclose(run(), expected, atol=1e-4)


def tiny_flux() -> FluxPipeline:
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=4, max_image_seq_len=64)
    return FluxPipeline(
        scheduler=scheduler, vae=vae, transformer=transformer, text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None,
    )


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m"])
def test_flux_pipeline_passes_sigmas_and_mu(solver):
    pipe = tiny_flux()
    g = torch.Generator().manual_seed(0)
    embeds, pooled = torch.randn(1, 4, 32, generator=g), torch.randn(1, 32, generator=g)
    run = lambda: pipe(  # noqa: E731
        prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=4, height=16, width=16,
        guidance_scale=1.0, output_type="pt", generator=torch.Generator().manual_seed(0),
    ).images
    reference = run()  # FlowMatchEulerDiscreteScheduler
    pipe.scheduler = FewStepScheduler.from_config(pipe.scheduler.config, solver=solver)
    images = run()
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    assert pipe.scheduler.num_inference_steps == 4 and float(pipe.scheduler.ts[-1]) == 0.0
    if solver == "ddim":  # first order on a flow == FlowMatchEuler: identical images
        assert torch.allclose(images, reference, atol=1e-4)
