"""The music trainers in the one loop: the Oobleck autoencoder and the ACE-Step-style generator."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from distill_helpers import single_thread
from fewstep.distill.config import load_config
from fewstep.distill.loop import Trainer, train
from fewstep.distill.objectives.acestep import shifted_logit_normal
from fewstep.distill.objectives.music_autoencoder import MusicAutoencoder, MusicAutoencoderOptions, multi_resolution_stft_loss
from fewstep.models.acestep import encode_conditions, oobleck_autoencoder, text2music_context, timbre_frames

REPO = Path(__file__).resolve().parents[2]
DATA = ["data.name=music", "data.options={n_train: 16, n_test: 8, seconds: 1.536}", "data.batch_size=4"]
COMMON = ["log_with=none", "checkpoint_every=0", "sample_steps=2", "optim.lr=1e-3", "optim.ema_decay=0.9", *DATA]
AE = ["model.type=oobleck", "model.latent_channels=4", "model.width=8", "model.downsampling_ratios=[4,4,16]",
      "objective.name=music_autoencoder", "objective.crop_samples=2048", "objective.eval_clips=8"]
GEN = ["model.type=acestep", "model.latent_channels=4", "model.width=32", "model.num_layers=2", "model.num_heads=2",
       "objective.name=acestep", "objective.text_dim=16"]


def ae_config(run_dir: Path, *overrides: str):
    return load_config(None, [*COMMON, *AE, f"run_dir={run_dir}", "max_steps=2", *overrides])


def gen_config(run_dir: Path, autoencoder: Path, *overrides: str):
    return load_config(None, [*COMMON, *GEN, f"run_dir={run_dir}", f"objective.autoencoder={autoencoder}",
                              "max_steps=3", *overrides])


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ae") / "run"
    with single_thread():
        result = train(ae_config(run))
    return result.pipeline


@pytest.fixture(scope="module")
def generator(tmp_path_factory, autoencoder) -> Path:
    run = tmp_path_factory.mktemp("gen") / "run"
    with single_thread():
        result = train(gen_config(run, autoencoder))
    return result.pipeline


# -- autoencoder -------------------------------------------------------------------------------


def test_mrstft_is_zero_for_identical_audio_and_exact_for_a_gain():
    x = torch.randn(2, 2048, generator=torch.Generator().manual_seed(0))
    assert float(multi_resolution_stft_loss(x, x, (128, 256))) == pytest.approx(0.0, abs=1e-6)
    # |X - 2X| / |X| = 1 and |log|X| - log|2X|| = log 2 at every bin above the floor, for each of the 2 sizes
    assert float(multi_resolution_stft_loss(x, 2 * x, (128, 256))) == pytest.approx(2 * (1 + math.log(2)), rel=1e-3)


def test_crop_takes_contiguous_windows_of_each_clip():
    vae = oobleck_autoencoder(4, 8, (4, 4, 16))
    objective = MusicAutoencoder(vae, MusicAutoencoderOptions(crop_samples=512))
    audio = torch.arange(3 * 4096, dtype=torch.float32).reshape(3, 1, 4096)
    crop = objective.crop(audio, torch.Generator().manual_seed(0))
    assert crop.shape == (3, 1, 512)
    for b in range(3):
        start = int(crop[b, 0, 0]) - b * 4096
        assert torch.equal(crop[b, 0], audio[b, 0, start:start + 512])


def test_autoencoder_loss_is_the_weighted_sum_of_its_terms(autoencoder):
    from fewstep.data.music import MusicDataset

    vae = oobleck_autoencoder(4, 8, (4, 4, 16))
    options = MusicAutoencoderOptions(crop_samples=2048, l1_weight=2.0, stft_weight=0.5, kl_weight=0.1)
    objective = MusicAutoencoder(vae, options)
    data = MusicDataset(n_train=4, n_test=0, seconds=1.536)
    batch = {"audio": torch.stack([data[i]["audio"] for i in range(4)])}
    out = objective.loss(batch, 0, torch.Generator().manual_seed(0))
    expected = 2.0 * out["l1"] + 0.5 * out["mrstft"] + 0.1 * out["kl"]
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-5)


def test_autoencoder_exports_unit_scale_latents_and_held_out_quality(autoencoder):
    from diffusers import AutoencoderOobleck

    from fewstep.data.music import MusicDataset

    info = json.loads((autoencoder / "autoencoder.json").read_text())
    assert info["held_out"]["clips"] == 8 and math.isfinite(info["held_out"]["snr_db"]) and info["held_out"]["lsd_db"] > 0
    assert info["hop"] == 256 and info["latents_per_second"] == pytest.approx(31.25)
    vae = AutoencoderOobleck.from_pretrained(autoencoder)
    data = MusicDataset(n_train=16, n_test=8, seconds=1.536)
    audio = torch.stack([data[i]["audio"] for i in range(16)])
    with torch.no_grad():
        latents = vae.encode(audio).latent_dist.mean
    assert latents.shape == (16, 4, 12288 // 256)
    assert float(latents.std()) == pytest.approx(1.0, rel=1e-3)  # the scale was folded over these 16 clips


# -- generator ---------------------------------------------------------------------------------


def test_generator_loss_is_flow_matching_on_shifted_times_with_per_condition_dropout(tmp_path, autoencoder):
    """Replay the loss's random draws and recompute it by hand: interpolant, target, times and conditions."""
    trainer = Trainer(gen_config(tmp_path / "run", autoencoder, "objective.tag_dropout=0.5", "objective.lyric_dropout=0.5"))
    objective = trainer.objective
    batch = next(trainer._batches())
    out = objective.loss(batch, 0, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    x0 = batch["latents"]
    B, T, _ = x0.shape
    drop_text, drop_lyrics = torch.rand(B, generator=g) < 0.5, torch.rand(B, generator=g) < 0.5
    t = shifted_logit_normal(B, g, x0.device, 0.0, 1.0, 3.0)
    eps = torch.randn(x0.shape, generator=g)
    clip_seconds = T / objective.latents_per_second
    encoded = objective.encode_text(list(batch["prompt"]), list(batch["lyrics"]), x0.device, clip_seconds)
    net = objective.networks
    states = encode_conditions(objective.condition_encoder(), *encoded, timbre_frames(objective.latents_per_second),
                               drop_text, drop_lyrics)
    x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps
    v = net["transformer"](hidden_states=x_t, timestep=t, timestep_r=t, encoder_hidden_states=states,
                           context_latents=text2music_context(objective.condition_encoder(), B, T)).sample
    assert float(out["loss"]) == pytest.approx(float(((v - (eps - x0)) ** 2).mean()), rel=1e-5)


def test_generator_trains_both_networks_and_exports_an_ace_step_pipeline(generator):
    from diffusers import AceStepPipeline

    from fewstep.pipelines.music import generate_music, load_music_pipeline

    pipe = AceStepPipeline.from_pretrained(generator)
    assert type(pipe.transformer).__name__ == "AceStepTransformer1DModel"
    info = json.loads((generator / "music.json").read_text())
    assert info["tags"]["instruments"][:2] == ["piano", "organ"] and info["clip_seconds"] == pytest.approx(1.536)
    fresh = load_music_pipeline(generator, solver="dpmpp_2m")
    samples = generate_music(fresh, ["piano, 120 bpm, C major"], ["la lo"], num_clips=2, num_steps=4,
                             duration=info["clip_seconds"])
    assert samples.audio.shape == (2, 1, 12288) and torch.isfinite(samples.audio).all()
    run = generator.parent
    assert (run / "samples" / "step_000003.png").is_file() and (run / "samples" / "step_000003_0.wav").is_file()
    # both trained networks are averaged (EMA) and checkpointed, the condition encoder too
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    assert json.loads((checkpoint / "trainer_state.json").read_text())["ema"] == ["transformer", "condition_encoder"]


def test_the_optimizer_trains_the_condition_encoder_too(tmp_path, autoencoder):
    """Every parameter of the transformer and of the condition encoder is in the optimizer (not only the main network)."""
    trainer = Trainer(gen_config(tmp_path / "run", autoencoder))
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    for name in ("transformer", "condition_encoder"):
        params = [p for p in trainer.objective.networks[name].parameters() if p.requires_grad]
        assert params and all(id(p) in optimized for p in params), name


def test_repa_adds_a_bounded_alignment_loss_and_trains_its_projector(tmp_path, autoencoder):
    trainer = Trainer(gen_config(tmp_path / "run", autoencoder, "objective.repa_weight=1.0", "objective.repa_layer=1"))
    objective = trainer.objective
    assert "repa_projector" in objective.networks
    batch = next(trainer._batches())
    out = objective.loss(batch, 0, torch.Generator().manual_seed(0))
    assert 0.0 <= float(out["repa"]) <= 2.0
    assert float(out["loss"]) == pytest.approx(float(out["flow"] + out["repa"]), rel=1e-5)
    out["loss"].backward()
    projector = objective.networks["repa_projector"]
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in projector.parameters())
    assert batch["repa"].shape[1] == math.ceil(batch["latents"].shape[1] / 2)  # one target per transformer token


def test_sample_cli_writes_wavs_a_spectrogram_grid_and_refuses_unknown_tags(generator, tmp_path, capsys):
    from fewstep.audio import read_audio
    from fewstep.cli import main

    out = tmp_path / "out"
    args = ["sample", str(generator), "--prompt", "piano, 120 bpm, C major", "--lyrics", "la la lo", "--steps", "3",
            "--n", "2", "--solver", "dpmpp_2m"]
    with single_thread():
        assert main([*args, "--out", str(out)]) == 0, capsys.readouterr().err[-2000:]
    audio, rate = read_audio(out / "000001.wav")
    assert rate == 8000 and audio.shape == (1, 12288)
    assert (out / "spectrograms.png").is_file()
    record = json.loads((out / "sampling.json").read_text())
    assert record["nfe"] == 3 and record["clips"][0]["lyrics"] == "la la lo"
    capsys.readouterr()
    bad_prompt = [*args[:3], "violin, 120 bpm, C major", *args[4:]]
    for argv, message in ((bad_prompt, "violin"), ([*args, "--schedule", "logsnr"], "own grid"),
                          ([*args, "--duration", "0"], "out of range")):
        assert main([*argv, "--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


# -- bad input ---------------------------------------------------------------------------------


def test_bad_music_configs_are_refused_before_training(tmp_path, autoencoder):
    with pytest.raises(ValueError, match="objective.autoencoder"):
        Trainer(load_config(None, [*COMMON, *GEN, f"run_dir={tmp_path / 'a'}"]))
    with pytest.raises(FileNotFoundError, match="not a saved autoencoder"):
        Trainer(gen_config(tmp_path / "b", tmp_path))
    with pytest.raises(ValueError, match="model.latent_channels=4"):
        Trainer(gen_config(tmp_path / "c", autoencoder, "model.latent_channels=8"))
    with pytest.raises(ValueError, match="repa_layer"):
        Trainer(gen_config(tmp_path / "d", autoencoder, "objective.repa_layer=5"))
    with pytest.raises(ValueError, match="data.name=music"):
        Trainer(gen_config(tmp_path / "e", autoencoder, "data.name=mnist", "data.options={}"))
    with pytest.raises(ValueError, match="8000 Hz"):
        Trainer(ae_config(tmp_path / "f", "data.options={n_train: 16, n_test: 8, seconds: 1.536, sample_rate: 16000}"))
    with pytest.raises(ValueError, match="multiple of the autoencoder hop"):
        Trainer(ae_config(tmp_path / "g", "objective.crop_samples=1000"))
    with pytest.raises(ValueError, match="goes with objective.name=music_autoencoder"):
        load_config(None, [*COMMON, "model.type=oobleck", "objective.name=flow_matching", f"run_dir={tmp_path / 'h'}"])
    assert not any((tmp_path / name).exists() for name in "abcdefg")
