"""The shipped `music` feature net: accuracy, FD sensitivity, conditioning accuracy, `fewstep fid` on audio."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fewstep.audio import CLIP_SAMPLES, SAMPLE_RATE, read_audio, write_audio
from fewstep.commands import fid as fid_command
from fewstep.data.music import MusicDataset, synthesize_clip
from fewstep.io import assets_dir
from fewstep.metrics.features import available_feature_extractors, feature_extractor_modality, get_feature_extractor
from fewstep.metrics.frechet import feature_factor, frechet_distance, frechet_distance_from_features
from fewstep.metrics.inputs import read_clip
from fewstep.metrics.music import (
    PROTOCOL,
    MusicFeatureExtractor,
    MusicFeatureNet,
    build_music_feature_extractor,
    conditioning_accuracy,
    default_weights,
    head_accuracies,
    music_features,
    predict_labels,
    real_time_factor,
)
from fewstep.metrics.stats import load_stats

IO = ["--num-workers", "0", "--batch-size", "5"]
#: held-out accuracy of the shipped net per head, measured 1.000 / 1.000 / 1.000 (256 clips); floors with margin.
ACCURACY_FLOOR = {"instrument": 0.95, "key": 0.95, "tempo": 0.95}


@pytest.fixture(scope="module")
def extractor() -> MusicFeatureExtractor:
    return build_music_feature_extractor()


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, dict[str, torch.Tensor], MusicDataset]:
    """The 256 held-out clips [256, 1, 16384], their labels, and the dataset (for its label objects)."""
    dataset = MusicDataset("test")
    items = [dataset[i] for i in range(len(dataset))]
    labels = {name: torch.tensor([item[name] for item in items]) for name in ("instrument", "key", "tempo")}
    return torch.stack([item["audio"] for item in items]), labels, dataset


@pytest.fixture(scope="module")
def held_out_features(extractor, held_out) -> torch.Tensor:
    return torch.from_numpy(music_features(extractor, held_out[0]))


def _render(labels) -> torch.Tensor:
    return torch.stack([torch.from_numpy(synthesize_clip(label))[None] for label in labels])


def _transpose(label, semitones: int):
    """The same clip with every note and chord moved by `semitones`."""
    return dataclasses.replace(
        label,
        notes=tuple(note._replace(midi=note.midi + semitones) for note in label.notes),
        chords=tuple(chord._replace(midi=tuple(m + semitones for m in chord.midi)) for chord in label.chords),
    )


# ---- the net ---------------------------------------------------------------------------------


def test_shipped_net_is_accurate_on_held_out_clips(extractor, held_out):
    audio, labels, _ = held_out
    accuracy = head_accuracies(extractor.net, audio, labels)
    for head, floor in ACCURACY_FLOOR.items():
        assert accuracy[head] >= floor, (head, accuracy)


def test_features_are_deterministic_batch_size_and_gain_independent(extractor, held_out, held_out_features):
    audio = held_out[0][:24]
    assert extractor.name == "music" and extractor.modality == "audio" and extractor.protocol == PROTOCOL
    assert extractor.feature_dim == 64 and extractor.sample_rate == SAMPLE_RATE
    a = extractor(audio)
    assert a.shape == (24, 64) and a.dtype == torch.float32
    assert torch.equal(a, extractor(audio))
    one_by_one = torch.cat([extractor(clip[None]) for clip in audio])
    torch.testing.assert_close(one_by_one, a, rtol=0, atol=1e-5)
    torch.testing.assert_close(held_out_features[:24].float(), a, rtol=0, atol=1e-5)  # batch 256 vs 24
    torch.testing.assert_close(extractor(audio * 0.05), a, rtol=0, atol=1e-4)  # loudness-normalised (measured 1.5e-6)
    assert a.std(dim=0).min() > 0  # no dead feature
    extractor.train()
    assert not extractor.training and torch.equal(extractor(audio), a)


def test_bad_waveforms_are_rejected(extractor, held_out):
    audio = held_out[0][:2]
    with pytest.raises(TypeError, match="float waveforms"):
        extractor((audio * 32767).to(torch.int16))
    with pytest.raises(ValueError, match=r"\[N, 1, T\]"):
        extractor(audio[:, 0])
    with pytest.raises(ValueError, match="too short"):
        extractor(audio[..., :100])


@pytest.fixture(scope="module")
def unlike_features(extractor, held_out) -> dict[str, torch.Tensor]:
    """Features [256, 64] of sets unlike the real clips: white noise, pink noise, the held-out labels all
    played on the piano (a shifted label distribution), the held-out clips transposed by a tritone."""
    dataset = held_out[2]
    generator = torch.Generator().manual_seed(0)
    white = 0.2 * torch.randn(256, 1, CLIP_SAMPLES, generator=generator)
    spectrum = torch.fft.rfft(torch.randn(256, 1, CLIP_SAMPLES, generator=generator))
    pink = torch.fft.irfft(spectrum / torch.arange(1, spectrum.shape[-1] + 1).sqrt(), n=CLIP_SAMPLES)
    piano = _render(dataclasses.replace(label, instrument="piano") for label in dataset.labels)
    tritone = _render(_transpose(label, 6) for label in dataset.labels)
    return {name: torch.from_numpy(music_features(extractor, audio))
            for name, audio in (("white", white), ("pink", pink), ("piano", piano), ("tritone", tritone))}


def test_fd_of_real_halves_is_far_below_noise_and_shifted_labels(held_out_features, unlike_features):
    """FD between the two halves of the held-out set (128 vs 128 clips, 64-d features) against FD
    between the first half and 128 unlike clips. At n = 2d the estimate's upward bias dominates the
    real-vs-real number: measured 4.8 for the halves; white / pink noise 55 / 72, all piano 29,
    tritone 18. Asserted: below 1/10 of noise, 1/5 of one instrument, 1/3 of the tritone."""
    first, second = held_out_features[:128], held_out_features[128:]
    real = frechet_distance_from_features(first, second)
    fd = {name: frechet_distance_from_features(first, x[128:]) for name, x in unlike_features.items()}
    assert real < fd["white"] / 10 and real < fd["pink"] / 10, (real, fd)
    assert real < fd["piano"] / 5, (real, fd)
    assert real < fd["tritone"] / 3, (real, fd)


def test_fd_against_shipped_train_statistics_separates_real_from_unlike(held_out_features, unlike_features):
    """How `fewstep fid clips/ music:train` is used: 256 clips against the 2,048 training clips'
    statistics. Measured: held-out 0.99; white / pink noise 57 / 72, all piano 27, tritone 18.
    Asserted: the held-out FD is below 1/10 of every unlike set's."""
    reference = load_stats(assets_dir() / "music_stats" / "music_train.npz")

    def fd(x: torch.Tensor) -> float:
        return frechet_distance(x.mean(0), torch.cov(x.T), reference.mu, reference.sigma)

    real = fd(held_out_features)
    unlike = {name: fd(x) for name, x in unlike_features.items()}
    assert all(real < value / 10 for value in unlike.values()), (real, unlike)


def test_conditioning_accuracy_true_labels_high_shuffled_near_chance(held_out):
    audio, labels, _ = held_out
    true = conditioning_accuracy(audio, labels["instrument"], labels["key"], labels["tempo"])
    assert min(true.values()) >= 0.95, true
    perm = torch.randperm(len(audio), generator=torch.Generator().manual_seed(1))
    shuffled = conditioning_accuracy(audio, labels["instrument"][perm], labels["key"][perm], labels["tempo"][perm])
    for head in ("instrument", "key", "tempo"):
        counts = torch.bincount(labels[head]).double()
        chance = float((counts / counts.sum()).pow(2).sum())  # expected hits of a random relabelling
        assert abs(shuffled[head] - chance) < 0.1, (head, shuffled[head], chance)
    assert shuffled["all"] < 0.1
    predicted = predict_labels(audio[:8])
    assert set(predicted) == {"instrument", "key", "tempo"} and predicted["key"].dtype == torch.int64
    with pytest.raises(ValueError, match="one per clip"):
        conditioning_accuracy(audio[:4], labels["instrument"][:3], labels["key"][:4], labels["tempo"][:4])


def test_real_time_factor_is_audio_seconds_per_compute_second():
    assert real_time_factor(2.048, 0.5) == pytest.approx(4.096)
    with pytest.raises(ValueError, match="seconds_of_compute > 0"):
        real_time_factor(2.048, 0.0)


def test_registered_as_music_audio_extractor(held_out):
    assert "music" in available_feature_extractors()
    assert feature_extractor_modality("music") == "audio" and feature_extractor_modality("mnist") == "image"
    extractor = get_feature_extractor("music")
    assert extractor.name == "music" and extractor.feature_dim == 64
    audio = held_out[0][:4]
    assert torch.equal(extractor(audio), build_music_feature_extractor()(audio))


def test_save_pretrained_round_trip_and_missing_weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = MusicFeatureNet(widths=(8, 8, 16), dilations=(1, 1, 2)).eval()
    net.save_pretrained(tmp_path / "net")
    assert (tmp_path / "net" / "diffusion_pytorch_model.safetensors").exists()
    loaded = build_music_feature_extractor(weights=str(tmp_path / "net"))
    x = torch.randn(3, 1, 4000)
    assert loaded.feature_dim == 16 and torch.allclose(loaded(x), MusicFeatureExtractor(net)(x))
    with pytest.raises(FileNotFoundError, match="not found"):
        build_music_feature_extractor(weights=str(tmp_path / "nope"))
    monkeypatch.setenv("FEWSTEP_ASSETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train_music_features.py"):
        default_weights()


def test_reference_stats_match_recomputed_features(held_out_features):
    stats = load_stats(assets_dir() / "music_stats" / "music_test.npz")
    assert (stats.extractor, stats.protocol, stats.n, stats.feature_dim) == ("music", PROTOCOL, 256, 64)
    raw = np.load(assets_dir() / "music_stats" / "music_test.npz")
    assert raw["mu"].dtype == np.float64 and raw["sigma"].dtype == np.float64
    features = held_out_features.numpy()
    assert np.allclose(stats.mu, features.mean(0), atol=1e-5)
    assert np.allclose(stats.sigma, np.cov(features, rowvar=False), atol=1e-5)
    assert load_stats(assets_dir() / "music_stats" / "music_train.npz").n == 2048


# ---- reading clips ---------------------------------------------------------------------------


def test_clips_are_cropped_to_their_start_or_zero_padded_at_the_end(tmp_path, held_out):
    clip = held_out[0][0, 0].numpy()
    long = np.concatenate([clip, clip[:5000]])
    write_audio(tmp_path / "long.wav", long, SAMPLE_RATE)
    write_audio(tmp_path / "short.wav", clip[:9000], SAMPLE_RATE)
    cropped, note = read_clip(tmp_path / "long.wav", SAMPLE_RATE, CLIP_SAMPLES)
    assert cropped.shape == (1, CLIP_SAMPLES) and "cropped to the first 2.048 s" in note
    expected = read_audio(tmp_path / "long.wav")[0][:, :CLIP_SAMPLES]
    assert np.array_equal(cropped.numpy(), expected)
    padded, note = read_clip(tmp_path / "short.wav", SAMPLE_RATE, CLIP_SAMPLES)
    assert "zero-padded at the end" in note
    assert np.array_equal(padded[:, :9000].numpy(), read_audio(tmp_path / "short.wav")[0])
    assert not padded[:, 9000:].any()


# ---- fewstep fid on audio --------------------------------------------------------------------


def _write_clips(folder: Path, audio: torch.Tensor) -> Path:
    for i, clip in enumerate(audio):
        write_audio(folder / f"clip{i:03d}.wav", clip, SAMPLE_RATE)
    return folder


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = fid_command.main([*argv, *IO])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def wav_folders(tmp_path_factory, held_out) -> tuple[Path, Path]:
    """Two folders of 12 held-out clips each (16-bit WAV at 8 kHz)."""
    root = tmp_path_factory.mktemp("wavs")
    audio = held_out[0]
    return _write_clips(root / "a", audio[:12]), _write_clips(root / "b", audio[12:24])


def test_fid_cli_on_wav_folders_and_shipped_reference(wav_folders, extractor, capsys):
    a, b = wav_folders
    code, out, err = _run(capsys, str(a), str(b), "--features", "music")
    assert code == 0, err
    assert out.startswith("FD: ") and "music (64-d)" in out

    code, out, err = _run(capsys, str(a), "music:test", "--bootstrap", "20", "--json")  # music is the default for audio
    assert code == 0, err
    result = json.loads(out)
    assert result["extractor"] == "music" and result["inputs"][0]["kind"] == "audio" and result["inputs"][0]["n"] == 12
    assert result["bootstrap"]["replicates"] == 20 and result["bootstrap"]["low"] <= result["bootstrap"]["high"]
    # the same number from the files read back by hand and the shipped statistics
    x = torch.from_numpy(music_features(extractor, torch.stack(
        [torch.from_numpy(read_audio(path)[0]) for path in sorted(a.glob("*.wav"))])))
    ref = load_stats(assets_dir() / "music_stats" / "music_test.npz")
    expected = frechet_distance(x.mean(0), torch.cov(x.T), ref.mu, ref.sigma, factor1=feature_factor(x))
    assert result["fd"] == pytest.approx(expected, rel=1e-6)


def test_fid_cli_refuses_modality_mismatches(wav_folders, tmp_path, capsys):
    a, b = wav_folders
    code, _, err = _run(capsys, str(a), str(b), "--features", "inception")
    assert code == 2 and "holds audio clips" in err and "--features music" in err
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(images / f"{i}.png")
    code, _, err = _run(capsys, str(images), str(b), "--features", "music")
    assert code == 2 and "cannot compare audio with images" in err
    code, _, err = _run(capsys, str(images), "music:test")
    assert code == 2 and "holds images" in err and "takes audio" in err
    for clip in sorted(a.glob("*.wav"))[:3]:  # clips with a picture beside them (fewstep sample's spectrograms.png)
        (images / clip.name).write_bytes(clip.read_bytes())
    with pytest.warns(UserWarning, match=r"scoring its 3 audio file\(s\); ignoring 3 image file\(s\)"):
        code, _, err = _run(capsys, str(images), str(b))
    assert code == 0, err
    code, _, err = _run(capsys, str(a), "music:nope")
    assert code == 2 and "music:test" in err  # lists the references there are


@pytest.mark.parametrize("problem, message", [
    ("stereo", r"has 2 channels.*mono"),
    ("rate", r"16000 Hz.*8000 Hz.*resample"),
    ("corrupt", r"cannot read audio .*bad\.wav"),
    ("silent", r"bad\.wav.*silent"),
])
def test_fid_cli_names_the_bad_file_and_the_fix(wav_folders, tmp_path, held_out, capsys, problem, message):
    a, _ = wav_folders
    folder = _write_clips(tmp_path / "c", held_out[0][:3])
    clip = held_out[0][3, 0].numpy()
    bad = folder / "bad.wav"
    if problem == "stereo":
        write_audio(bad, np.stack([clip, clip]), SAMPLE_RATE)
    elif problem == "rate":
        write_audio(bad, np.repeat(clip, 2), 16000)
    elif problem == "corrupt":
        bad.write_bytes(b"RIFF not really a wave file")
    else:
        write_audio(bad, np.zeros_like(clip), SAMPLE_RATE)
    code, _, err = _run(capsys, str(folder), str(a), "--features", "music")
    assert code == 2
    assert "bad.wav" in err and re.search(message, err), err
    code, out, err = _run(capsys, str(folder), str(a), "--features", "music", "--skip-bad", "--json")
    assert code == 0, err
    assert json.loads(out)["inputs"][0]["n"] == 3 and len(json.loads(out)["inputs"][0]["skipped"]) == 1
