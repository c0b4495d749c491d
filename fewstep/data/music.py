"""Music data: seeded synthetic songs (no downloads) and folders of the user's own audio files.

`MusicDataset` synthesises short clips (default 2.048 s at 8 kHz, mono) of a melody over a
chord progression, with exact labels: instrument, key, tempo, every note, the chords, a
syllable ("lyrics") sung on each melody note, and an ACE-Step-style text prompt
("piano, 120 bpm, C major"). `AudioFolderDataset` cuts WAV / FLAC / OGG files into clips of
the same item format, with prompts and lyrics from an optional `metadata.jsonl`.

Items are dicts `{"audio": float32 [1, T] in [-1, 1], "prompt": str, "lyrics": str,
"instrument": int, "key": int, "tempo": int}` (indices into INSTRUMENTS / KEYS / TEMPOS; -1 for
the user's files). See docs/data.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from fewstep.audio import SAMPLE_RATE, read_audio
from fewstep.data.base import check_split

INSTRUMENTS: tuple[str, ...] = ("piano", "organ", "guitar", "flute", "bell")
KEYS: tuple[str, ...] = ("C major", "G major", "D major", "F major", "A minor", "E minor", "D minor", "B minor")
TEMPOS: tuple[int, ...] = (80, 100, 120, 140)
#: one syllable is sung per melody note; the consonant shapes its onset, the vowel its spectrum.
SYLLABLES: tuple[str, ...] = tuple(c + v for c in "ldnm" for v in "aeiou")
CLIP_SECONDS = 2.048
MELODY_RANGE = (60, 84)  # MIDI, C4..C6
PEAK = 0.8  # every clip is peak-normalised to this

_PITCH_CLASS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
#: (numeral, root above the tonic in semitones, third in semitones): I-IV-V-I and i-iv-V-i.
_PROGRESSIONS = {
    "major": (("I", 0, 4), ("IV", 5, 4), ("V", 7, 4), ("I", 0, 4)),
    "minor": (("i", 0, 3), ("iv", 5, 3), ("V", 7, 4), ("i", 0, 3)),
}
#: first two formants (Hz) of each vowel; they weight the note's upper partials.
_FORMANTS = {"a": (800.0, 1200.0), "e": (500.0, 1900.0), "i": (300.0, 2300.0), "o": (500.0, 900.0), "u": (320.0, 800.0)}
_CHORD_GAIN = 0.2  # per chord note, relative to a melody note
_CLIP_SPLIT_CODE = {"train": 0, "test": 1}


class Note(NamedTuple):
    """A melody note: onset and duration in seconds, MIDI pitch."""

    onset_s: float
    duration_s: float
    midi: int


class Chord(NamedTuple):
    """A chord: onset and duration in seconds, Roman numeral, MIDI pitches (a triad below the melody)."""

    onset_s: float
    duration_s: float
    numeral: str
    midi: tuple[int, ...]


@dataclass(frozen=True)
class MusicClipLabel:
    """Everything a synthetic clip is made of; `synthesize_clip(label)` renders it exactly.

    `syllables[j]` is sung on `notes[j]`; `seed` drives the little noise there is (breath,
    consonant bursts), so a label always renders to the same audio.
    """

    instrument: str
    key: str
    tempo: int
    notes: tuple[Note, ...]
    chords: tuple[Chord, ...]
    syllables: tuple[str, ...]
    seed: int = 0

    @property
    def prompt(self) -> str:
        """Text tags: "instrument, tempo bpm, key"."""
        return f"{self.instrument}, {self.tempo} bpm, {self.key}"

    @property
    def lyrics(self) -> str:
        """The syllables joined by spaces."""
        return " ".join(self.syllables)


def midi_to_hz(midi: float) -> float:
    """Equal temperament, A4 = MIDI 69 = 440 Hz."""
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def scale_notes(key: str, low: int = MELODY_RANGE[0], high: int = MELODY_RANGE[1]) -> list[int]:
    """MIDI notes of `key`'s scale (natural minor for minor keys) in [low, high], ascending."""
    tonic, mode = _split_key(key)
    return [m for m in range(low, high + 1) if (m - tonic) % 12 in _SCALES[mode]]


def _split_key(key: str) -> tuple[int, str]:
    if key not in KEYS:
        raise ValueError(f"unknown key {key!r}; choose one of {', '.join(KEYS)}")
    name, mode = key.split()
    return _PITCH_CLASS[name], mode


def eighth_seconds(tempo: float) -> float:
    """Length of an eighth note (half a beat) at `tempo` bpm."""
    return 30.0 / tempo


def random_label(rng: np.random.Generator, seconds: float = CLIP_SECONDS) -> MusicClipLabel:
    """Draw a clip: instrument, key, tempo; chords every half bar; a scale random walk on the eighth grid.

    The melody starts on the tonic (MIDI 60-71), moves by one or two scale steps (reflected at
    the ends of MIDI 60-84) and fills the clip without rests; each note lasts one or two eighths
    (the last one is cut at the clip's end). Onsets lie exactly on the eighth-note grid.
    """
    instrument = INSTRUMENTS[rng.integers(len(INSTRUMENTS))]
    key = KEYS[rng.integers(len(KEYS))]
    tempo = TEMPOS[rng.integers(len(TEMPOS))]
    tonic, mode = _split_key(key)
    eighth = eighth_seconds(tempo)
    scale = scale_notes(key)
    pos = scale.index(MELODY_RANGE[0] + tonic)
    notes, step = [], 0
    while (step + 1) * eighth <= seconds + 1e-9:
        length = 1 if rng.random() < 0.6 else 2
        duration = min(length * eighth, seconds - step * eighth)
        notes.append(Note(step * eighth, duration, scale[pos]))
        step += length
        move = int(rng.choice((-2, -1, 1, 2), p=(0.2, 0.3, 0.3, 0.2)))
        pos = pos + move if 0 <= pos + move < len(scale) else pos - move
    half_bar = 4 * eighth  # two beats
    chords = []
    for j in range(int((seconds - eighth) / half_bar + 1e-9) + 1):
        numeral, root, third = _PROGRESSIONS[mode][j % 4]
        low = 48 + (tonic + root) % 12
        chords.append(Chord(j * half_bar, min(half_bar, seconds - j * half_bar), numeral, (low, low + third, low + 7)))
    syllables = tuple(SYLLABLES[k] for k in rng.integers(len(SYLLABLES), size=len(notes)))
    return MusicClipLabel(instrument, key, tempo, tuple(notes), tuple(chords), syllables, int(rng.integers(2**31)))


# ----------------------------------------------------------------------------------------
# Synthesis: additive partials (FM sidebands for the bell), each below Nyquist
# ----------------------------------------------------------------------------------------


def _vowel_gain(freqs: np.ndarray, vowel: str | None) -> np.ndarray:
    """Formant-like weight in [0.3, 1] of partials at `freqs` (two bumps, ~1/3 octave wide); 1 without a vowel."""
    if vowel is None:
        return np.ones_like(freqs)
    f1, f2 = _FORMANTS[vowel]
    octaves = np.log2(np.maximum(freqs, 1.0))
    bump = np.maximum(np.exp(-0.5 * ((octaves - np.log2(f1)) / 0.35) ** 2),
                      np.exp(-0.5 * ((octaves - np.log2(f2)) / 0.35) ** 2))
    return 0.3 + 0.7 * bump


def _partials(instrument: str) -> tuple[np.ndarray, float, float]:
    """(weights of harmonics 1..K [K], decay a, decay b): harmonic k decays as exp(-(a + b k) t); weight 1 on k = 1."""
    k = np.arange(1, 11, dtype=np.float64)
    if instrument == "piano":  # struck string: 1/k^1.2 partials, the higher ones dying faster
        return np.minimum(k ** -1.2, 0.6), 2.5, 1.2
    if instrument == "organ":  # drawbars 8', 4', 2 2/3', 2', 1 3/5', 1': sustained
        return np.array([1.0, 0.6, 0.45, 0.3, 0.15, 0.0, 0.0, 0.15]), 0.0, 0.0
    if instrument == "guitar":  # plucked near the bridge (comb of the pluck point): bright, fast decay
        pluck = np.abs(np.sin(np.pi * k * 0.18)) / np.sin(np.pi * 0.18) * k ** -0.8
        return np.where(k == 1, 1.0, np.minimum(pluck, 0.7)), 6.0, 3.5
    if instrument == "flute":  # near-sine
        return np.array([1.0, 0.3, 0.12, 0.05]), 0.0, 0.0
    raise ValueError(f"unknown instrument {instrument!r}; choose one of {', '.join(INSTRUMENTS)}")


def _gate(n: int, sample_rate: int, attack_s: float, release_s: float) -> np.ndarray:
    """Envelope [n]: raised-cosine attack, flat, raised-cosine release ending at sample n."""
    env = np.ones(n)
    a, r = min(n, max(1, round(attack_s * sample_rate))), min(n, max(1, round(release_s * sample_rate)))
    env[:a] *= 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    env[n - r:] *= 0.5 + 0.5 * np.cos(np.pi * np.arange(1, r + 1) / r)
    return env


_ATTACK_S = {"piano": 0.004, "organ": 0.015, "guitar": 0.002, "flute": 0.02, "bell": 0.002}


def _tone(instrument: str, f0: float, n: int, sample_rate: int, vowel: str | None, rng: np.random.Generator) -> np.ndarray:
    """One note of `n` samples (gated), fundamental `f0`; partials at or above 0.95 Nyquist are dropped.

    Harmonic instruments sum w_k exp(-(a + b k) t) sin(2 pi k f0 t) as Im(sum_k w_k c^k) with
    c = exp((-b + 2 pi i f0) t) (Horner's rule: no transcendental per partial).
    """
    t = np.arange(n) / sample_rate
    nyquist = 0.95 * sample_rate / 2
    if instrument == "bell":  # FM, carrier f0, modulator 1.4 f0, decaying index I: sum_j J_j(I) sin(2 pi (f0 + j fm) t)
        from scipy.special import jv

        orders = np.arange(-3, 4)
        freqs = f0 * (1 + 1.4 * orders)
        keep = (np.abs(freqs) < nyquist) & (np.abs(freqs) > 20.0)
        coarse = t[::16]
        vowel_gain = np.where(orders == 0, 1.0, _vowel_gain(np.abs(freqs), vowel))
        bessel = jv(orders[:, None], 1.0 * np.exp(-3.0 * coarse)) * vowel_gain[:, None]  # [K, n / 16]
        up = [np.exp(2j * np.pi * f0 * t)]  # carrier * modulator^j for j = 0, 1, 2, 3 (and conjugate modulators below)
        down = [up[0]]
        modulator = np.exp(2j * np.pi * 1.4 * f0 * t)
        for _ in range(3):
            up.append(up[-1] * modulator)
            down.append(down[-1] * modulator.conj())
        wave = np.zeros(n)
        for j, order in enumerate(orders):
            if keep[j]:
                wave += np.interp(t, coarse, bessel[j]) * (up[order] if order >= 0 else down[-order]).imag
        wave *= np.exp(-2.5 * t)
    else:
        weights, a, b = _partials(instrument)
        freqs = f0 * np.arange(1, len(weights) + 1)
        weights = np.where(freqs < nyquist, weights, 0.0) * np.where(freqs == f0, 1.0, _vowel_gain(freqs, vowel))
        c = np.exp((-b + 2j * np.pi * f0) * t)
        total = np.full(n, weights[-1], dtype=np.complex128)
        for w in weights[-2::-1]:
            total = total * c + w
        wave = (total * c).imag * (np.exp(-a * t) if a else 1.0)
        if instrument == "flute":  # breath: softly low-passed noise, a "chiff" at the attack then a faint hiss
            breath = np.convolve(rng.standard_normal(n), np.ones(4) / 4, mode="same")
            wave += breath * (0.08 * np.exp(-t / 0.03) + 0.004)
    return wave * _gate(n, sample_rate, _ATTACK_S[instrument], 0.02)


def _consonant(consonant: str, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The onset transient (<= 25 ms) of a syllable: d a plosive burst, n / m a nasal murmur, l a soft breath."""
    if consonant == "d":
        n = round(0.008 * sample_rate)
        return 0.5 * np.diff(rng.standard_normal(n + 1)) * np.linspace(1.0, 0.0, n)
    if consonant in "nm":
        n = round(0.025 * sample_rate)
        t = np.arange(n) / sample_rate
        murmur = 250.0 if consonant == "n" else 180.0
        return 0.4 * np.sin(2 * np.pi * murmur * t) * np.exp(-t / 0.008) * np.minimum(1.0, t * sample_rate / 8)
    if consonant == "l":
        n = round(0.015 * sample_rate)
        return 0.12 * np.convolve(rng.standard_normal(n), np.ones(6) / 6, mode="same") * np.hanning(n)
    raise ValueError(f"unknown consonant {consonant!r} (syllables are consonant + vowel, from {SYLLABLES})")


def check_sample_rate(sample_rate: int) -> None:
    """ValueError unless `sample_rate` leaves room for the melody's top note (C6, 1047 Hz) below 0.95 Nyquist."""
    if sample_rate < 4000:
        raise ValueError(f"sample_rate {sample_rate} Hz is too low for the melody (up to "
                         f"{midi_to_hz(MELODY_RANGE[1]):.0f} Hz); use sample_rate >= 4000")


def synthesize_clip(
    label: MusicClipLabel,
    sample_rate: int = SAMPLE_RATE,
    seconds: float = CLIP_SECONDS,
    chords: bool = True,
    normalize: bool = True,
) -> np.ndarray:
    """Render `label` to float32 [round(seconds * sample_rate)], peak-normalised to 0.8.

    Each melody note is the instrument's partials (vowel-weighted, plus its consonant's onset
    transient), gated to end 15% (at most 30 ms) before its labelled end so every onset is
    audible; chords use the same timbre at 0.2 gain without vowels. `chords=False` renders
    the melody alone (e.g. to check its pitches); `normalize=False` skips peak normalisation.
    """
    check_sample_rate(sample_rate)
    total = round(seconds * sample_rate)
    out = np.zeros(total)

    def add(onset_s: float, duration_s: float, midi: int, gain: float, syllable: str | None, stream: tuple[int, ...]) -> None:
        start = round(onset_s * sample_rate)
        gap = min(0.03, 0.15 * duration_s)
        n = min(round((duration_s - gap) * sample_rate), total - start)
        if n <= 0:
            return
        rng = np.random.default_rng((label.seed, *stream))  # own noise per note: a syllable changes only its note
        wave = _tone(label.instrument, midi_to_hz(midi), n, sample_rate, syllable[1] if syllable else None, rng)
        if syllable:
            burst = _consonant(syllable[0], sample_rate, rng)[:n]
            wave[: len(burst)] += burst
        out[start:start + n] += gain * wave

    if len(label.syllables) != len(label.notes):
        raise ValueError(f"label has {len(label.notes)} notes but {len(label.syllables)} syllables; "
                         "give one syllable per note")
    for j, (note, syllable) in enumerate(zip(label.notes, label.syllables)):
        add(note.onset_s, note.duration_s, note.midi, 1.0, syllable, (0, j))
    if chords:
        for j, chord in enumerate(label.chords):
            for v, midi in enumerate(chord.midi):
                add(chord.onset_s, chord.duration_s, midi, _CHORD_GAIN, None, (1, j, v))
    peak = np.abs(out).max()
    if normalize and peak > 0:
        out *= PEAK / peak
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------


def _item(audio: Tensor, prompt: str, lyrics: str, instrument: int = -1, key: int = -1, tempo: int = -1) -> dict[str, Any]:
    return {"audio": audio, "prompt": prompt, "lyrics": lyrics, "instrument": instrument, "key": key, "tempo": tempo}


class MusicDataset(Dataset):
    """Seeded synthetic music clips: item i = dict with "audio" float32 [1, num_samples], prompt, lyrics, label indices.

    Item i's label comes from its own `np.random.default_rng((seed, split, i))` (train and test
    use disjoint streams; "all" is train followed by test), so every item is the same on every
    machine. Labels are drawn when the dataset is built (`.labels`); audio is synthesised on
    first access and cached.
    """

    instruments, keys, tempos, syllables = INSTRUMENTS, KEYS, TEMPOS, SYLLABLES

    def __init__(self, split: str = "train", n_train: int = 2048, n_test: int = 256, seconds: float = CLIP_SECONDS,
                 sample_rate: int = SAMPLE_RATE, seed: int = 0) -> None:
        check_split(split)
        check_sample_rate(sample_rate)
        if n_train < 0 or n_test < 0:
            raise ValueError(f"n_train and n_test must be >= 0, got {n_train} and {n_test}")
        if seconds < eighth_seconds(min(TEMPOS)):
            raise ValueError(f"seconds={seconds} is shorter than an eighth note at {min(TEMPOS)} bpm; use seconds >= 0.375")
        self.split, self.seconds, self.sample_rate, self.seed = split, float(seconds), int(sample_rate), int(seed)
        self.num_samples = round(self.seconds * self.sample_rate)
        parts = {"train": [("train", n_train)], "test": [("test", n_test)],
                 "all": [("train", n_train), ("test", n_test)]}[split]
        self.labels: list[MusicClipLabel] = [
            random_label(np.random.default_rng((self.seed, _CLIP_SPLIT_CODE[part], i)), self.seconds)
            for part, count in parts for i in range(count)
        ]
        self._audio: dict[int, Tensor] = {}
        self.n_train, self.n_test = int(n_train), int(n_test)

    def held_out(self) -> "MusicDataset":
        """The test split with the same options (for held-out metrics and previews of objectives)."""
        return MusicDataset("test", self.n_train, self.n_test, self.seconds, self.sample_rate, self.seed)

    def __len__(self) -> int:
        return len(self.labels)

    def audio(self, i: int) -> Tensor:
        """Clip i, float32 [1, num_samples] (synthesised once, then cached)."""
        if i not in self._audio:
            self._audio[i] = torch.from_numpy(synthesize_clip(self.labels[i], self.sample_rate, self.seconds))[None]
        return self._audio[i]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} clips")
        i %= len(self)
        label = self.labels[i]
        return _item(self.audio(i), label.prompt, label.lyrics, INSTRUMENTS.index(label.instrument),
                     KEYS.index(label.key), TEMPOS.index(label.tempo))


AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg")
METADATA_FILE = "metadata.jsonl"
SILENCE = 1e-6


def find_audio_files(root: Path) -> list[Path]:
    """All .wav / .flac / .ogg files under `root` (recursive, sorted); FileNotFoundError if none."""
    if not root.exists():
        raise FileNotFoundError(f"audio folder {root} does not exist; pass a folder of .wav / .flac / .ogg files")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder; pass the folder that holds the audio files")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found under {root}; put the clips "
                                "in it (sub-folders are searched too)")
    return files


def read_metadata(root: Path) -> dict[str, dict[str, str]]:
    """{relative file path: {"prompt", "lyrics"}} from `root/metadata.jsonl` (Hugging Face audiofolder layout), or {}."""
    meta_path = root / METADATA_FILE
    if not meta_path.is_file():
        return {}
    table = {}
    for number, line in enumerate(meta_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path} line {number} is not JSON ({e}); write one object per line") from e
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise ValueError(f"{meta_path} line {number} has no \"file_name\"; each line needs "
                             '{"file_name": ..., "prompt": ..., "lyrics": ...}')
        name = Path(row["file_name"]).as_posix()
        if not (root / name).is_file():
            raise FileNotFoundError(f"{meta_path} line {number} names {name!r}, which is not a file under {root}; "
                                    "fix the file_name or remove the line")
        table[name] = {k: str(row.get(k) or "") for k in ("prompt", "lyrics")}
    return table


class AudioFolderDataset(Dataset):
    """The user's audio files under `path`, cut into consecutive clips of `seconds`: same item dicts as `MusicDataset`.

    Every file is read when the dataset is built (so bad files fail early, by name) and cut
    into non-overlapping clips; a shorter tail is dropped, and a file shorter than one clip is
    zero-padded to one clip. Prompt and lyrics come from `path/metadata.jsonl` (lines
    `{"file_name": "sub/a.wav", "prompt": ..., "lyrics": ...}`), else "". instrument, key and
    tempo are -1 (unknown). Multi-channel files need `mono=True` (channel mean); another
    sample rate needs `resample=True`.
    """

    def __init__(self, path: str | Path, sample_rate: int = SAMPLE_RATE, seconds: float = CLIP_SECONDS,
                 mono: bool = False, resample: bool = False) -> None:
        self.root, self.sample_rate, self.seconds = Path(path), int(sample_rate), float(seconds)
        self.num_samples = round(self.seconds * self.sample_rate)
        if self.num_samples < 1:
            raise ValueError(f"seconds={seconds} at {sample_rate} Hz gives no samples; use a longer clip")
        self.files = find_audio_files(self.root)
        metadata = read_metadata(self.root)
        clips, self.clip_files, self.prompts, self.lyrics = [], [], [], []
        for index, file in enumerate(self.files):
            audio, _ = read_audio(file, self.sample_rate, mono=mono, resample=resample)
            if audio.shape[0] != 1:
                raise ValueError(f"audio file {file} has {audio.shape[0]} channels and the model is mono; pass mono=True "
                                 "(data.options.mono=true) to average the channels, or convert the file")
            if np.abs(audio).max() < SILENCE:
                raise ValueError(f"audio file {file} is silent (every |sample| < {SILENCE:g}); remove it")
            count = max(1, audio.shape[1] // self.num_samples)
            padded = np.zeros((count * self.num_samples,), dtype=np.float32)
            used = min(audio.shape[1], padded.shape[0])
            padded[:used] = audio[0, :used]
            clips.append(padded.reshape(count, 1, self.num_samples))
            meta = metadata.get(file.relative_to(self.root).as_posix(), {})
            self.clip_files += [index] * count
            self.prompts += [meta.get("prompt", "")] * count
            self.lyrics += [meta.get("lyrics", "")] * count
        #: every clip, float32 [N, 1, num_samples]
        self.clips = torch.from_numpy(np.concatenate(clips))

    def __len__(self) -> int:
        return self.clips.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return _item(self.clips[i], self.prompts[i], self.lyrics[i])
