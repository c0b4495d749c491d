"""The ACE-Step-style parts against diffusers' own code paths: conditions, prompt template, latent scale, REPA."""

from __future__ import annotations

import math

import pytest
import torch

from fewstep.distill.objectives.acestep import AceStep, AceStepOptions, repa_loss, shifted_logit_normal
from fewstep.models.acestep import (
    acestep_condition_encoder,
    acestep_transformer,
    clone_model,
    encode_conditions,
    fold_latent_scale,
    hop_length,
    music_text_encoder,
    music_tokenizer,
    oobleck_autoencoder,
    silence_latents,
    text2music_context,
    timbre_frames,
    unknown_words,
)

PROMPTS = ["piano, 120 bpm, C major", "bell, 80 bpm, A minor"]
LYRICS = ["la lo li", "da"]


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    vae = oobleck_autoencoder(latent_channels=4, width=8, downsampling_ratios=(4, 8), sample_rate=8000)
    texts = AceStep.template_texts(PROMPTS, LYRICS, 1.024)
    tokenizer = music_tokenizer(texts)
    text_encoder = music_text_encoder(len(tokenizer), dim=16)
    encoder = acestep_condition_encoder(width=32, text_dim=16, latent_channels=4, num_heads=2)
    encoder.silence_latent.copy_(silence_latents(vae))
    transformer = acestep_transformer(latent_channels=4, width=32, num_layers=2, num_heads=2)
    return vae, tokenizer, text_encoder, encoder, transformer


def pipeline(parts):
    from diffusers import AceStepPipeline, FlowMatchEulerDiscreteScheduler

    vae, tokenizer, text_encoder, encoder, transformer = parts
    pipe = AceStepPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                           condition_encoder=encoder, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def objective_for(parts) -> AceStep:
    vae, tokenizer, text_encoder, encoder, transformer = parts
    objective = AceStep(transformer, AceStepOptions(text_dim=16), vae=vae)
    objective.networks["condition_encoder"] = encoder
    objective.tokenizer, objective.text_encoder = tokenizer, text_encoder
    return objective


def test_text_encoding_equals_the_pipelines(parts):
    """Training captions go through exactly the pipeline's template, tokenizer and text encoder."""
    pipe = pipeline(parts)
    ours = objective_for(parts).encode_text(PROMPTS, LYRICS, torch.device("cpu"), 1.024)
    theirs = pipe.encode_prompt(PROMPTS, LYRICS, torch.device("cpu"), audio_duration=1.024)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert torch.equal(a, b)


def test_conditions_without_dropout_equal_the_condition_encoders_forward(parts):
    vae, _, _, encoder, _ = parts
    pipe = pipeline(parts)
    text, text_mask, lyric, lyric_mask = pipe.encode_prompt(PROMPTS, LYRICS, torch.device("cpu"), audio_duration=1.024)
    frames = timbre_frames(pipe.latents_per_second)
    silence = encoder.silence_latent[:, :frames].expand(2, -1, -1)
    with torch.no_grad():
        reference, _ = encoder(text, text_mask, lyric, lyric_mask, silence, torch.arange(2))
        ours = encode_conditions(encoder, text, text_mask, lyric, lyric_mask, frames)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_dropout_replaces_only_the_dropped_condition(parts):
    _, _, _, encoder, _ = parts
    pipe = pipeline(parts)
    text, text_mask, lyric, lyric_mask = pipe.encode_prompt(PROMPTS, LYRICS, torch.device("cpu"), audio_duration=1.024)
    frames = timbre_frames(pipe.latents_per_second)
    null = encoder.null_condition_emb[0, 0]
    with torch.no_grad():
        full = encode_conditions(encoder, text, text_mask, lyric, lyric_mask, frames)
        only_text = encode_conditions(encoder, text, text_mask, lyric, lyric_mask, frames,
                                      drop_text=torch.tensor([True, False]), drop_lyrics=torch.tensor([False, False]))
        both = encode_conditions(encoder, text, text_mask, lyric, lyric_mask, frames,
                                 drop_text=torch.tensor([True, False]), drop_lyrics=torch.tensor([True, False]))
    torch.testing.assert_close(only_text[1], full[1])  # the other sample untouched
    is_null = torch.isclose(only_text[0], null.expand_as(only_text[0]), atol=1e-6).all(-1)
    n_text = int(text_mask[0].sum())
    assert int(is_null.sum()) == n_text  # exactly the caption's tokens became null
    assert torch.allclose(both[0], null.expand_as(both[0]))  # both dropped = the pipeline's unconditional input
    torch.testing.assert_close(both[1], full[1])


def test_fold_latent_scale_keeps_reconstructions_and_scales_latents(parts):
    vae = clone_model(parts[0]).eval()
    audio = torch.randn(2, 1, 4 * hop_length(vae)) * 0.3
    with torch.no_grad():
        mean = vae.encode(audio).latent_dist.mean
        recon = vae.decode(mean).sample
        fold_latent_scale(vae, 2.5)
        mean2 = vae.encode(audio).latent_dist.mean
        recon2 = vae.decode(mean2).sample
    torch.testing.assert_close(mean2, mean / 2.5, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(recon2, recon, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="must be > 0"):
        fold_latent_scale(vae, 0.0)


def test_tokenizer_knows_training_words_and_names_unknown_ones(parts):
    tokenizer = parts[1]
    assert unknown_words(tokenizer, "piano, 120 bpm, C major") == []
    assert unknown_words(tokenizer, "violin, 120 bpm, C major") == ["violin"]


def test_silence_latents_and_context_shapes(parts):
    vae, _, _, encoder, _ = parts
    silence = silence_latents(vae, frames=10)
    assert silence.shape == (1, 10, 4)
    assert torch.allclose(silence[0, 0], silence[0, -1])  # one frame, tiled
    context = text2music_context(encoder, 3, 7)
    assert context.shape == (3, 7, 8)
    assert torch.equal(context[..., 4:], torch.ones(3, 7, 4))


def test_shifted_logit_normal_matches_the_shift_formula():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    t = shifted_logit_normal(10000, g1, torch.device("cpu"), 0.0, 1.0, 3.0)
    u = torch.sigmoid(torch.randn(10000, generator=g2))
    torch.testing.assert_close(t, 3 * u / (1 + 2 * u))
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert float(t.median()) == pytest.approx(0.75, abs=0.02)  # the median u = 1/2 maps to 3/4


def test_repa_loss_range_and_zero_for_identical_features():
    torch.manual_seed(0)
    a = torch.randn(2, 5, 8)
    assert float(repa_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(repa_loss(a, -a)) == pytest.approx(2.0, abs=1e-6)
    value = float(repa_loss(a, torch.randn(2, 5, 8)))
    assert 0 <= value <= 2
    with pytest.raises(ValueError, match="differ"):
        repa_loss(a, a[:, :4])


def test_latent_rate_and_shapes(parts):
    vae = parts[0]
    audio = torch.randn(2, 1, 8192)
    with torch.no_grad():
        latent = vae.encode(audio).latent_dist.mean
    assert hop_length(vae) == 32
    assert latent.shape == (2, 4, 8192 // 32)
    assert math.isclose(vae.config.sampling_rate / hop_length(vae), 250.0)
