"""Synthetic music and audio folders: pitches, tempo and lyrics measured in the audio; file I/O errors name the fix."""

import dataclasses
import json

import numpy as np
import pytest
import soundfile
import torch

from fewstep.audio import (
    CLIP_SAMPLES,
    SAMPLE_RATE,
    hz_to_mel,
    log_mel_spectrogram,
    mel_filterbank,
    mel_to_hz,
    read_audio,
    save_spectrogram_grid,
    write_audio,
)
from fewstep.data import (
    INSTRUMENTS,
    KEYS,
    TEMPOS,
    AudioFolderDataset,
    MusicDataset,
    dataset_options,
    get_dataset,
    random_label,
    synthesize_clip,
)
from fewstep.data.music import SYLLABLES, midi_to_hz, scale_notes

SR = SAMPLE_RATE
Q16 = 2 / 32768  # 16-bit PCM round trip error bound


def random_label_at_tempo(seed, instrument, tempo):
    """A label of `instrument` drawn until its tempo is `tempo` (labels keep onsets consistent with their tempo)."""
    rng = np.random.default_rng(seed)
    while True:
        label = random_label(rng)
        if label.tempo == tempo:
            return dataclasses.replace(label, instrument=instrument)


def _pitch_hz(x, start_s, end_s):
    """Strongest spectral peak in 200-1250 Hz (all the melody's range) of x[start:end]: Hann, zero-padded FFT, parabolic."""
    seg = x[round(start_s * SR):round(end_s * SR)]
    n = 1 << 16
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    band = np.flatnonzero((freqs > 200) & (freqs < 1250))
    i = band[np.argmax(spec[band])]
    y0, y1, y2 = np.log(spec[i - 1:i + 2])
    return (i + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)) * SR / n


def _onsets(x, n_fft=256, hop=16, lag=8, rel=0.1):
    """Onset times (s) by log-mel spectral flux: rectified rise over `lag` frames, peaks >= rel * max, 60 ms apart."""
    x = torch.from_numpy(np.concatenate([np.zeros(n_fft), x, np.zeros(n_fft)])).double()
    mag = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft, dtype=torch.float64), center=False,
                     return_complex=True).abs().numpy()
    bands = np.log1p(10 * mel_filterbank(SR, n_fft, 40).double().numpy() @ mag)
    flux = np.concatenate([np.zeros(lag), np.maximum(bands[:, lag:] - bands[:, :-lag], 0).sum(0)])
    w = round(0.06 * SR / hop)
    peaks = [i for i in range(len(flux)) if flux[i] == flux[max(0, i - w):i + w + 1].max() and flux[i] > rel * flux.max()]
    return (np.array(peaks) * hop + n_fft / 2 - lag * hop / 2 - n_fft) / SR  # frame centre at the middle of the rise


# ----------------------------------------------------------------------------------------
# Synthetic music
# ----------------------------------------------------------------------------------------


def test_items_are_deterministic_per_seed_and_split():
    a, b = MusicDataset("train", n_train=4, n_test=4, seed=0), MusicDataset("train", n_train=4, n_test=4, seed=0)
    for i in range(4):
        assert torch.equal(a[i]["audio"], b[i]["audio"]) and a[i]["prompt"] == b[i]["prompt"]
    other = MusicDataset("train", n_train=4, seed=1)
    test = MusicDataset("test", n_train=4, n_test=4, seed=0)
    assert all(not torch.equal(a[i]["audio"], other[i]["audio"]) for i in range(4))
    assert all(not torch.equal(a[i]["audio"], test[i]["audio"]) for i in range(4))
    everything = MusicDataset("all", n_train=4, n_test=4, seed=0)
    assert len(everything) == 8
    assert torch.equal(everything[1]["audio"], a[1]["audio"]) and torch.equal(everything[5]["audio"], test[1]["audio"])
    # item i does not depend on how many items the split has
    assert torch.equal(MusicDataset("train", n_train=2)[1]["audio"], a[1]["audio"])


@pytest.mark.parametrize("instrument", INSTRUMENTS)
def test_every_melody_note_has_its_labelled_pitch_within_20_cents(instrument):
    for seed in range(3):
        label = dataclasses.replace(random_label(np.random.default_rng(100 + seed)), instrument=instrument)
        melody = synthesize_clip(label, chords=False)
        for note in label.notes:
            end = note.onset_s + note.duration_s - min(0.03, 0.15 * note.duration_s)  # the note's gate ends here
            f = _pitch_hz(melody, note.onset_s + 0.035, end - 0.01)  # past the consonant, before the release
            cents = 1200 * np.log2(f / midi_to_hz(note.midi))
            assert abs(cents) < 20, (instrument, note, f, cents)


@pytest.mark.parametrize("instrument", INSTRUMENTS)
def test_tempo_recovered_from_onsets_of_the_full_mix_within_2_percent(instrument):
    for k, tempo in enumerate(TEMPOS):
        label = random_label_at_tempo(7 * k + INSTRUMENTS.index(instrument), instrument, tempo)
        onsets = _onsets(synthesize_clip(label))
        eighth = 30 / tempo
        labelled = np.array(sorted({n.onset_s for n in label.notes} | {c.onset_s for c in label.chords}))
        # most labelled onsets are found, and everything found lies on the eighth-note grid
        found = np.abs(labelled[:, None] - onsets[None]).min(1) < 0.02
        assert found.mean() >= 0.6, (instrument, tempo, labelled, onsets)
        assert np.abs(onsets / eighth - np.round(onsets / eighth)).max() * eighth < 0.02, (instrument, tempo, onsets)
        # tempo: least-squares slope of onset time against eighth-note count
        steps = np.round((onsets - onsets[0]) / eighth)
        measured = 30 / np.polyfit(steps, onsets, 1)[0]
        assert abs(measured / tempo - 1) < 0.02, (instrument, tempo, measured)


def test_labels_agree_with_prompt_lyrics_scale_and_grid():
    ds = MusicDataset("test", n_test=24, seed=3)
    for i, label in enumerate(ds.labels):
        item = ds[i] if i < 3 else None
        assert label.prompt == f"{label.instrument}, {label.tempo} bpm, {label.key}"
        assert label.lyrics.split() == list(label.syllables) and set(label.syllables) <= set(SYLLABLES)
        assert len(label.syllables) == len(label.notes) >= 2
        scale = scale_notes(label.key)
        assert label.notes[0].midi == 60 + "C D EF G A B".index(label.key[0])  # starts on the tonic, C4..B4
        assert all(n.midi in scale and 60 <= n.midi <= 84 for n in label.notes)
        eighth = 30 / label.tempo
        for note, following in zip(label.notes, label.notes[1:]):
            assert following.onset_s == pytest.approx(note.onset_s + note.duration_s)  # no rests, no overlaps
            eighths = round(note.duration_s / eighth)
            assert eighths in (1, 2) and note.duration_s == pytest.approx(eighths * eighth)
        assert all(abs(n.onset_s / eighth - round(n.onset_s / eighth)) < 1e-9 for n in label.notes)
        assert label.notes[-1].onset_s + label.notes[-1].duration_s <= ds.seconds + 1e-9
        assert [c.onset_s for c in label.chords] == pytest.approx([4 * eighth * j for j in range(len(label.chords))])
        assert all(max(c.midi) < 72 and min(c.midi) >= 48 for c in label.chords)
        if item is not None:
            assert item["prompt"] == label.prompt and item["lyrics"] == label.lyrics
            assert (INSTRUMENTS[item["instrument"]], KEYS[item["key"]], TEMPOS[item["tempo"]]) == \
                (label.instrument, label.key, label.tempo)
    assert {label.instrument for label in ds.labels} == set(INSTRUMENTS)  # every timbre is drawn


@pytest.mark.parametrize("instrument", INSTRUMENTS)
def test_lyrics_change_the_audio_of_their_note_only(instrument):
    label = dataclasses.replace(random_label(np.random.default_rng(5)), instrument=instrument)
    base = synthesize_clip(label, normalize=False)
    j = len(label.notes) // 2
    note = label.notes[j]
    inside = np.zeros(len(base), dtype=bool)
    inside[round(note.onset_s * SR):round((note.onset_s + note.duration_s) * SR)] = True
    consonant, vowel = label.syllables[j]
    for changed in ("lmdn"["dnml".index(consonant)] + vowel, consonant + "aeiou"["iouae".index(vowel)]):
        syllables = label.syllables[:j] + (changed,) + label.syllables[j + 1:]
        other = dataclasses.replace(label, syllables=syllables)
        assert other.lyrics != label.lyrics
        diff = synthesize_clip(other, normalize=False) - base
        # the sung note sounds different (consonant: its onset; vowel: its spectrum), nothing else does
        assert np.linalg.norm(diff[inside]) > 0.05 * np.linalg.norm(base[inside]), (instrument, label.syllables[j], changed)
        assert not diff[~inside].any()


def test_item_format_options_and_registry():
    ds = get_dataset("music", split="train", n_train=3, n_test=1)
    item = ds[2]
    assert set(item) == {"audio", "prompt", "lyrics", "instrument", "key", "tempo"}
    assert item["audio"].shape == (1, CLIP_SAMPLES) and item["audio"].dtype == torch.float32
    assert item["audio"].abs().max().item() == pytest.approx(0.8, abs=1e-6)  # peak-normalised
    assert isinstance(item["prompt"], str) and isinstance(item["instrument"], int) and 0 <= item["tempo"] < 4
    assert len(ds) == 3 and ds.num_samples == 16384 and ds.sample_rate == 8000 and ds.instruments == INSTRUMENTS
    short = MusicDataset("train", n_train=1, seconds=1.5, sample_rate=16000)
    assert short[0]["audio"].shape == (1, 24000) and short.labels[0].notes[-1].onset_s < 1.5
    assert dataset_options("music") == {"n_train": 2048, "n_test": 256, "seconds": 2.048, "sample_rate": 8000, "seed": 0}
    with pytest.raises(ValueError, match="option seconds='long' of dataset 'music' must be of type float"):
        get_dataset("music", seconds="long")
    with pytest.raises(ValueError, match="use sample_rate >= 4000"):
        MusicDataset(sample_rate=2000)


# ----------------------------------------------------------------------------------------
# Audio files and folders
# ----------------------------------------------------------------------------------------


def _tone(seconds, hz=440.0, sr=SR, amp=0.5):
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_audio_folder_round_trip_clips_and_metadata(tmp_path):
    long, short = _tone(2.5 * 2.048, 440), _tone(1.0, 660)
    write_audio(tmp_path / "a.wav", long, SR)
    write_audio(tmp_path / "sub" / "b.flac", torch.from_numpy(short)[None], SR)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "sub/b.flac", "prompt": "flute, 100 bpm, C major",
                                                         "lyrics": "la li"}) + "\n\n")
    ds = get_dataset("audio_folder", path=str(tmp_path))
    assert [p.name for p in ds.files] == ["a.wav", "b.flac"] and len(ds) == 3  # 2 full clips (tail dropped) + 1 padded
    n = CLIP_SAMPLES
    assert np.abs(ds[0]["audio"][0].numpy() - long[:n]).max() < Q16
    assert np.abs(ds[1]["audio"][0].numpy() - long[n:2 * n]).max() < Q16
    padded = ds[2]["audio"][0].numpy()
    assert np.abs(padded[:8000] - short).max() < Q16 and not padded[8000:].any()  # shorter file: zero-padded
    assert ds[0]["prompt"] == ds[0]["lyrics"] == "" and ds[2]["prompt"] == "flute, 100 bpm, C major"
    assert ds[2]["lyrics"] == "la li"
    assert (ds[0]["instrument"], ds[0]["key"], ds[0]["tempo"]) == (-1, -1, -1)
    assert ds[0]["audio"].shape == (1, CLIP_SAMPLES) and ds[0]["audio"].dtype == torch.float32
    assert dataset_options("audio_folder") == {"sample_rate": 8000, "seconds": 2.048, "mono": False, "resample": False}
    with pytest.raises(ValueError, match="needs path="):
        get_dataset("audio_folder")


def test_audio_folder_sample_rate_refused_or_resampled(tmp_path):
    write_audio(tmp_path / "hi.wav", _tone(2.2, 440, sr=16000), 16000)
    with pytest.raises(ValueError, match=r"hi.wav is 16000 Hz, the model expects 8000 Hz; pass resample=True"):
        AudioFolderDataset(tmp_path)
    ds = AudioFolderDataset(tmp_path, resample=True)
    x = ds[0]["audio"][0].numpy()
    assert len(ds) == 1 and abs(_pitch_hz(x, 0.1, 2.0) - 440) < 0.5
    assert np.abs(x[800:-800] - _tone(2.048)[800:-800]).max() < 0.01  # the same tone at 8 kHz


def test_audio_folder_stereo_refused_or_mixed_to_mono(tmp_path):
    left, right = _tone(2.048, 440, amp=0.6), _tone(2.048, 550, amp=0.2)
    write_audio(tmp_path / "st.wav", np.stack([left, right]), SR)
    with pytest.raises(ValueError, match=r"st.wav has 2 channels and the model is mono; pass mono=True"):
        AudioFolderDataset(tmp_path)
    mixed = AudioFolderDataset(tmp_path, mono=True)[0]["audio"][0].numpy()
    assert np.abs(mixed - (left + right) / 2).max() < Q16


@pytest.mark.parametrize("make, error, message", [
    (lambda d: (d / "bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk"), ValueError,
     r"cannot read audio file .*bad.wav.*remove or replace it"),
    (lambda d: write_audio(d / "quiet.wav", np.full(9000, 1e-7, np.float32), SR), ValueError,
     r"quiet.wav is silent"),
    (lambda d: soundfile.write(d / "empty.wav", np.zeros((0, 1), np.float32), SR), ValueError,
     r"empty.wav holds no samples"),
    (lambda d: (d / "notes.txt").write_text("no audio here"), FileNotFoundError,
     r"no audio files \(.wav, .flac, .ogg\) found under"),
    (lambda d: (write_audio(d / "a.wav", _tone(1.0), SR),
                (d / "metadata.jsonl").write_text('{"file_name": "gone.wav", "prompt": "x"}\n')), FileNotFoundError,
     r"metadata.jsonl line 1 names 'gone.wav', which is not a file"),
    (lambda d: (write_audio(d / "a.wav", _tone(1.0), SR), (d / "metadata.jsonl").write_text("{oops\n")), ValueError,
     r"metadata.jsonl line 1 is not JSON"),
])
def test_audio_folder_errors_name_the_file_and_the_fix(tmp_path, make, error, message):
    make(tmp_path)
    with pytest.raises(error, match=message):
        AudioFolderDataset(tmp_path)


def test_missing_folder_and_read_audio_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio folder .* does not exist"):
        AudioFolderDataset(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_audio(tmp_path / "nothing.wav")
    write_audio(tmp_path / "st.flac", np.stack([_tone(0.5, amp=0.4), _tone(0.5, amp=0.2)]), 16000)
    audio, sr = read_audio(tmp_path / "st.flac")
    assert audio.shape == (2, 4000) and audio.dtype == np.float32 and sr == 16000
    audio, sr = read_audio(tmp_path / "st.flac", sample_rate=8000, mono=True, resample=True)
    assert audio.shape == (1, 2000) and sr == 8000


def test_write_audio_clips_and_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out.wav"
    write_audio(target, torch.tensor([0.0, 1.5, -2.0, 0.25]), SR)
    audio, _ = read_audio(target)
    assert np.allclose(audio[0], [0.0, 1.0, -1.0, 0.25], atol=Q16)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="NaN or infinite samples; nothing was written"):
        write_audio(target, np.array([0.0, np.nan]), SR)

    def half_write(path, *args, **kw):
        open(path, "wb").write(b"RIFF")
        raise RuntimeError("disk full")

    monkeypatch.setattr(soundfile, "write", half_write)
    with pytest.raises(RuntimeError, match="disk full"):
        write_audio(target, np.zeros(10), SR)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # no temp file left
    with pytest.raises(ValueError, match="use a .wav or .flac file name"):
        write_audio(tmp_path / "x.mp3", np.zeros(10), SR)


# ----------------------------------------------------------------------------------------
# Mel features and previews
# ----------------------------------------------------------------------------------------


def test_mel_filterbank_is_a_partition_of_unity_between_its_first_and_last_centre():
    fb = mel_filterbank(8000, 512, 64).numpy()
    assert fb.shape == (64, 257) and fb.dtype == np.float32 and fb.min() >= 0
    bins = np.linspace(0, 4000, 257)
    centres = mel_to_hz(np.linspace(0, hz_to_mel(4000), 66))[1:-1]
    inside = (bins >= centres[0]) & (bins <= centres[-1])
    assert np.allclose(fb[:, inside].sum(0), 1.0, atol=1e-5)  # every FFT bin in range is covered, with weight 1
    assert (fb.max(1) > 0).all()  # no empty filter
    assert np.all(np.diff(bins[fb.argmax(1)]) >= 0)  # peaks climb with the band index
    assert np.allclose(hz_to_mel(1000.0), 1000.0, atol=0.5)  # HTK: 1000 Hz is ~1000 mel


def test_log_mel_shape_and_a_pure_tone_peaks_in_its_band():
    tones = torch.from_numpy(np.stack([_tone(2.048, 1000.0), _tone(2.048, 300.0)]))
    mel = log_mel_spectrogram(tones)
    assert mel.shape == (2, 64, CLIP_SAMPLES // 128 + 1)
    assert torch.equal(log_mel_spectrogram(tones[:, None]), mel)
    centres = mel_to_hz(np.linspace(0, hz_to_mel(4000), 66))[1:-1]
    for row, hz in zip(mel, (1000.0, 300.0)):
        band = int(row[:, 10:-10].mean(1).argmax())
        assert abs(centres[band] - hz) <= np.diff(centres)[max(band - 1, 0)]  # the band centred nearest the tone
    x = tones.clone().requires_grad_(True)
    log_mel_spectrogram(x).mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"needs audio \[B, T\] or \[B, 1, T\]"):
        log_mel_spectrogram(tones[0])


def test_spectrogram_grid_png(tmp_path):
    ds = MusicDataset("test", n_test=3)
    audios = torch.stack([ds[i]["audio"][0] for i in range(3)])
    path = save_spectrogram_grid(audios, SR, tmp_path / "grid.png", titles=[ds[i]["prompt"] for i in range(3)], columns=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    with pytest.raises(ValueError, match="one title per clip"):
        save_spectrogram_grid(audios, SR, tmp_path / "g.png", titles=["a"])
