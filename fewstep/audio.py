"""Audio helpers shared by the music data, the audio generators and their previews.

- `read_audio` / `write_audio`: WAV, FLAC and OGG files through `soundfile`, as float32
  `[channels, T]` in [-1, 1]; writes are 16-bit PCM and atomic (`fewstep.io.write_atomic`).
- `mel_filterbank` / `log_mel_spectrogram`: HTK-mel triangular filters and a differentiable
  log-mel spectrogram in torch (any device), for losses, feature distances and previews.
- `save_spectrogram_grid`: a PNG grid of log-mel spectrograms (matplotlib, Agg).
"""

from __future__ import annotations

import os
from functools import lru_cache
from math import gcd
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from fewstep.io import write_atomic

#: Project default sample rate (Hz) of music data and audio generators.
SAMPLE_RATE = 8000
#: Default clip length in samples: 2.048 s at 8 kHz, a multiple of 256 (the audio autoencoder's hop).
CLIP_SAMPLES = 16384
#: File suffixes `write_audio` can write, with their soundfile (format, subtype).
WRITE_FORMATS: dict[str, tuple[str, str]] = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16")}


def _soundfile():
    try:
        import soundfile
    except ImportError as e:  # pragma: no cover - soundfile is a dependency
        raise ImportError("audio files need the 'soundfile' package (`pip install soundfile`); "
                          f"importing it failed: {e}") from e
    return soundfile


def resample_audio(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling (scipy `resample_poly`, Kaiser-windowed FIR) of [channels, T] along time."""
    from scipy.signal import resample_poly

    g = gcd(int(orig_sr), int(target_sr))
    return resample_poly(audio, int(target_sr) // g, int(orig_sr) // g, axis=-1).astype(np.float32)


def read_audio(
    path: str | os.PathLike, sample_rate: int | None = None, mono: bool = False, resample: bool = False
) -> tuple[np.ndarray, int]:
    """Read an audio file (WAV / FLAC / OGG) -> (float32 [channels, T] in [-1, 1], sample rate).

    `sample_rate` given and different from the file's: resample to it when `resample=True`, else
    ValueError. `mono=True` averages the channels into [1, T]. Unreadable, empty or non-finite
    files are ValueErrors naming the file; a missing file is a FileNotFoundError.
    """
    sf = _soundfile()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} does not exist; check the path")
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        raise ValueError(f"cannot read audio file {path}: {e}; it is corrupt or not WAV/FLAC/OGG — "
                         "remove or replace it") from e
    audio = np.ascontiguousarray(data.T)  # soundfile gives [T, channels]
    if audio.shape[1] == 0:
        raise ValueError(f"audio file {path} holds no samples; remove or replace it")
    if not np.isfinite(audio).all():
        raise ValueError(f"audio file {path} holds NaN or infinite samples; remove or replace it")
    if mono and audio.shape[0] > 1:
        audio = audio.mean(axis=0, keepdims=True)
    if sample_rate is not None and int(file_sr) != int(sample_rate):
        if not resample:
            raise ValueError(
                f"audio file {path} is {file_sr} Hz, the model expects {sample_rate} Hz; pass resample=True "
                "(data.options.resample=true) or convert the files"
            )
        audio, file_sr = resample_audio(audio, int(file_sr), int(sample_rate)), int(sample_rate)
    return audio, int(file_sr)


def write_audio(path: str | os.PathLike, audio: np.ndarray | Tensor, sample_rate: int) -> Path:
    """Write audio [channels, T] or [T] (numpy or torch) as 16-bit PCM WAV or FLAC (by suffix), atomically.

    Samples are clipped to [-1, 1]; NaN or infinite samples are refused before anything is written.
    """
    sf = _soundfile()
    path = Path(path)
    if path.suffix.lower() not in WRITE_FORMATS:
        raise ValueError(f"cannot write audio to {path}: use a .wav or .flac file name")
    fmt, subtype = WRITE_FORMATS[path.suffix.lower()]
    if isinstance(audio, Tensor):
        audio = audio.detach().float().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[1] == 0:
        raise ValueError(f"write_audio needs audio [channels, T] or [T] with T > 0, got shape {tuple(audio.shape)}")
    if not np.isfinite(audio).all():
        raise ValueError(f"audio for {path} holds NaN or infinite samples; nothing was written (check the model output)")
    data = np.clip(audio, -1.0, 1.0).T  # soundfile wants [T, channels]
    return write_atomic(path, lambda tmp: sf.write(tmp, data, int(sample_rate), format=fmt, subtype=subtype))


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=16)
def _filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None).astype(np.float32)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None) -> Tensor:
    """Triangular filters on the HTK mel scale: float32 [n_mels, n_fft // 2 + 1], peak 1, no area normalisation.

    Centres are `n_mels` points equally spaced in mel between `f_min` and `f_max` (default
    Nyquist); between the first and the last centre the filters sum to 1 at every FFT bin.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2}, "
                         f"got f_min={f_min}, f_max={f_max}")
    if n_mels < 1 or n_fft < 2:
        raise ValueError(f"need n_mels >= 1 and n_fft >= 2, got n_mels={n_mels}, n_fft={n_fft}")
    return torch.from_numpy(_filterbank(int(sample_rate), int(n_fft), int(n_mels), float(f_min), float(f_max)).copy())


def log_mel_spectrogram(
    audio: Tensor, sample_rate: int = SAMPLE_RATE, n_fft: int = 512, hop: int = 128, n_mels: int = 64
) -> Tensor:
    """Log-mel magnitude spectrogram: audio [B, T] or [B, 1, T] -> log(mel + 1e-5) [B, n_mels, frames].

    STFT with a periodic Hann window of `n_fft`, centred frames (`frames = T // hop + 1`),
    magnitudes through `mel_filterbank`. Differentiable; runs on the device and dtype of `audio`.
    """
    if audio.ndim == 3 and audio.shape[1] == 1:
        audio = audio[:, 0]
    if audio.ndim != 2:
        raise ValueError(f"log_mel_spectrogram needs audio [B, T] or [B, 1, T], got shape {tuple(audio.shape)}")
    window = torch.hann_window(n_fft, device=audio.device, dtype=audio.dtype)
    spec = torch.stft(audio, n_fft, hop_length=hop, window=window, center=True, return_complex=True).abs()
    fb = mel_filterbank(sample_rate, n_fft, n_mels).to(device=audio.device, dtype=audio.dtype)
    return torch.log(torch.einsum("mf,bft->bmt", fb, spec) + 1e-5)


def save_spectrogram_grid(
    audios: Tensor | np.ndarray,
    sample_rate: int,
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    columns: int = 4,
) -> Path:
    """PNG grid of the log-mel spectrograms of audios [N, T] (or [N, 1, T]), time in seconds; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = torch.as_tensor(np.asarray(audios) if not isinstance(audios, Tensor) else audios.detach().cpu()).float()
    if x.ndim == 1:
        x = x[None]
    if x.ndim == 3 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"save_spectrogram_grid needs audios [N, T] with N >= 1, got shape {tuple(x.shape)}")
    if titles is not None and len(titles) != x.shape[0]:
        raise ValueError(f"got {len(titles)} titles for {x.shape[0]} clips; pass one title per clip (or titles=None)")
    n, seconds = x.shape[0], x.shape[1] / sample_rate
    mels = log_mel_spectrogram(x, sample_rate).numpy()
    cols = max(1, min(int(columns), n))
    rows = -(-n // cols)
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(mels[i], origin="lower", aspect="auto", cmap="magma", extent=(0.0, seconds, 0, mels.shape[1]))
        ax.set_xlabel("time (s)", fontsize=8)
        ax.set_ylabel("mel band", fontsize=8)
        ax.tick_params(labelsize=7)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    fig.tight_layout()
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
