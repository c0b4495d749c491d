"""The `music` feature extractor: a small log-mel CNN trained on the synthetic music labels.

FD between sets of generated clips uses its 64-d time-averaged features (the analogue of
Inception's pool3 for images, or VGGish's embedding for audio), and `conditioning_accuracy`
checks that a text-to-music generator plays what it was asked for: the net has three heads,
instrument (5), key (8) and tempo (4), over `fewstep.data.music.INSTRUMENTS / KEYS / TEMPOS`.

Protocol: mono float32 waveforms [N, 1, T] at 8 kHz, each divided by its RMS (so features do
not depend on gain), log-mel (`fewstep.audio.log_mel_spectrogram`), a 1-D conv stack over time
with the mel bands as channels (absolute pitch matters for the key), ReLU, mean over time (so
any length T >= n_fft is accepted; `fewstep fid` crops / pads files to 2.048 s). The net is a
diffusers `ModelMixin` (`save_pretrained` / `from_pretrained`, safetensors); the trained
weights ship in `assets/music_features/`, the held-out statistics in `assets/music_stats/`.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from fewstep.audio import CLIP_SAMPLES, SAMPLE_RATE, log_mel_spectrogram
from fewstep.io import ASSETS_ENV, assets_dir

FEATURES_DIR = "music_features"
STATS_DIR = "music_stats"
HEADS = ("instrument", "key", "tempo")
PROTOCOL = (
    "music-features-v1: mono float waveform [N,1,T] at 8000 Hz (files: first 2.048 s, zero-padded at the end) "
    "-> divided by its RMS -> log-mel (n_fft 1024, hop 128, 128 HTK mels, floored 80 dB below the clip's peak) -> "
    "1-D conv stack over time -> 64-d ReLU features averaged over time"
)


class MusicFeatureNet(ModelMixin, ConfigMixin):
    """audio [B, 1, T] at `sample_rate` -> logits {"instrument": [B, 5], "key": [B, 8], "tempo": [B, 4]};
    `features(audio)` -> [B, widths[-1]] (the FD embedding)."""

    @register_to_config
    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = 1024,
        hop: int = 128,
        n_mels: int = 128,
        top_db: float = 80.0,
        widths: tuple[int, ...] = (96, 128, 128, 128, 64),
        dilations: tuple[int, ...] = (1, 1, 2, 4, 8),
        num_instruments: int = 5,
        num_keys: int = 8,
        num_tempos: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(widths) != len(dilations):
            raise ValueError(f"widths {widths} and dilations {dilations} need one entry per conv layer")
        self.norm = nn.BatchNorm1d(n_mels)  # per-band standardisation of the log-mel input
        layers: list[nn.Module] = []
        c_in = n_mels
        for i, (width, dilation) in enumerate(zip(widths, dilations)):
            kernel = 5 if i == 0 else 3
            layers += [nn.Conv1d(c_in, width, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
                       nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            if i in (0, 1):
                layers.append(nn.MaxPool1d(2, ceil_mode=True))  # 16 ms -> 64 ms frames before the dilated layers
            c_in = width
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({
            "instrument": nn.Linear(c_in, num_instruments),
            "key": nn.Linear(c_in, num_keys),
            "tempo": nn.Linear(c_in, num_tempos),
        })

    def log_mel(self, audio: Tensor) -> Tensor:
        """audio [B, 1, T] (or [B, T]) -> log-mel [B, n_mels, T // hop + 1] of the RMS-normalised waveform,
        floored at `top_db` below each clip's maximum.

        The floor keeps float32 STFT round-off (~1e-7 of the loudest bin) out of the features, so
        they are gain invariant to ~1e-6 rather than 1e-3.
        """
        if audio.ndim == 3:
            audio = audio[:, 0]
        rms = audio.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-8)
        cfg = self.config
        mel = log_mel_spectrogram(audio / rms, cfg.sample_rate, cfg.n_fft, cfg.hop, cfg.n_mels)
        floor = mel.amax(dim=(1, 2), keepdim=True) - cfg.top_db * math.log(10) / 20  # magnitude dB -> nats
        return torch.maximum(mel, floor)

    def frame_features(self, audio: Tensor) -> Tensor:
        """audio [B, 1, T] -> per-frame features [B, widths[-1], frames] of the last conv block (64 ms frames,
        non-negative; REPA targets)."""
        return self.body(self.norm(self.log_mel(audio)))

    def features(self, audio: Tensor) -> Tensor:
        """audio [B, 1, T] -> features [B, widths[-1]]: `frame_features` averaged over time."""
        return self.frame_features(audio).mean(dim=-1)

    def forward(self, audio: Tensor) -> dict[str, Tensor]:
        """audio [B, 1, T] -> logits {"instrument": [B, 5], "key": [B, 8], "tempo": [B, 4]}."""
        h = self.drop(self.features(audio))
        return {name: head(h) for name, head in self.heads.items()}


def check_audio(audio: Tensor, min_samples: int) -> None:
    """TypeError / ValueError unless `audio` is a float tensor [N, 1, T] with T >= min_samples."""
    if not isinstance(audio, Tensor) or not audio.is_floating_point():
        raise TypeError(
            f"the music features take float waveforms [N, 1, T] in [-1, 1], got "
            f"{audio.dtype if isinstance(audio, Tensor) else type(audio).__name__}; convert int16 PCM with x / 32768"
        )
    if audio.ndim != 3 or audio.shape[1] != 1:
        raise ValueError(
            f"expected mono waveforms [N, 1, T], got shape {tuple(audio.shape)}; add the channel axis with "
            "audio[:, None] or downmix stereo with audio.mean(1, keepdim=True)"
        )
    if audio.shape[-1] < min_samples:
        raise ValueError(f"clips of {audio.shape[-1]} samples are too short for the music features; give >= {min_samples}")


class MusicFeatureExtractor(nn.Module):
    """`forward(float32 [N, 1, T] at 8 kHz) -> float32 [N, 64]`: the net's time-averaged features."""

    name = "music"
    modality = "audio"
    protocol = PROTOCOL

    def __init__(self, net: MusicFeatureNet) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.feature_dim = int(net.config.widths[-1])
        self.sample_rate = int(net.config.sample_rate)
        self.clip_samples = CLIP_SAMPLES

    def train(self, mode: bool = True) -> "MusicFeatureExtractor":
        """Stay in eval mode (BatchNorm running statistics, no dropout) whatever is asked."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, audio: Tensor) -> Tensor:
        """float waveforms [N, 1, T] (T >= n_fft) -> float32 features [N, feature_dim]."""
        check_audio(audio, self.net.config.n_fft)
        device = next(self.net.parameters()).device
        return self.net.features(audio.to(device, torch.float32)).float()


def default_weights() -> Path:
    """Folder of the shipped net (`<assets>/music_features`); FileNotFoundError (with the fix) if absent."""
    path = assets_dir() / FEATURES_DIR
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"no music feature net at {path}; pass weights=PATH (a save_pretrained folder), set {ASSETS_ENV} to "
            f"a folder holding {FEATURES_DIR}/, or train one with `python scripts/train_music_features.py`"
        )
    return path


def load_music_features(path: str | Path | None = None, device: str | torch.device = "cpu") -> MusicFeatureNet:
    """Load a saved `MusicFeatureNet` (default: the shipped `assets/music_features`) in eval mode on `device`."""
    path = Path(path) if path is not None else default_weights()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"music feature net {path} not found (no config.json); pass a save_pretrained folder")
    return MusicFeatureNet.from_pretrained(str(path)).to(device).eval()


def build_music_feature_extractor(device: str = "cpu", weights: str | None = None) -> nn.Module:
    """Factory registered as the `music` feature extractor: float32 [N, 1, T] -> float32 [N, 64]."""
    return MusicFeatureExtractor(load_music_features(weights, device))


@lru_cache(maxsize=2)
def _load_frozen(path: str) -> MusicFeatureNet:
    return load_music_features(path).requires_grad_(False)


def _shipped_net() -> MusicFeatureNet:
    """The shipped net (loaded once per assets folder), for `predict_labels` without `net=`."""
    return _load_frozen(str(default_weights()))


# ---- labels: prediction and conditioning accuracy ------------------------------------------


@torch.no_grad()
def predict_labels(audio: Tensor, net: MusicFeatureNet | None = None, batch_size: int = 256) -> dict[str, Tensor]:
    """audio [N, 1, T] at 8 kHz -> {"instrument", "key", "tempo"}: int64 [N] indices into
    INSTRUMENTS / KEYS / TEMPOS (default net: the shipped one)."""
    net = net if net is not None else _shipped_net()
    check_audio(audio, net.config.n_fft)
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    preds: dict[str, list[Tensor]] = {name: [] for name in HEADS}
    for chunk in audio.split(batch_size):
        logits = net(chunk.to(device, torch.float32))
        for name in HEADS:
            preds[name].append(logits[name].argmax(1).cpu())
    net.train(was_training)
    return {name: torch.cat(values) for name, values in preds.items()}


def conditioning_accuracy(
    audio: Tensor, instrument: Tensor, key: Tensor, tempo: Tensor, net: MusicFeatureNet | None = None
) -> dict[str, float]:
    """Share of clips audio [N, 1, T] whose predicted label equals the requested one, per attribute
    ("instrument", "key", "tempo"; requested as int [N] indices) and for all three at once ("all")."""
    predicted = predict_labels(audio, net)
    wanted = {"instrument": instrument, "key": key, "tempo": tempo}
    correct = {}
    for name in HEADS:
        target = torch.as_tensor(wanted[name]).long().flatten().cpu()
        if target.shape[0] != audio.shape[0]:
            raise ValueError(f"{name}: {target.shape[0]} labels for {audio.shape[0]} clips; give one per clip")
        correct[name] = predicted[name] == target
    result = {name: float(hits.double().mean()) for name, hits in correct.items()}
    result["all"] = float(torch.stack(list(correct.values())).all(0).double().mean())
    return result


def real_time_factor(seconds_of_audio: float, seconds_of_compute: float) -> float:
    """RTF = audio duration / wall-clock compute time: 10 means ten seconds of audio per second of compute.

    (Some papers use the inverse, compute / duration, where smaller is faster; here larger is faster.)
    """
    if seconds_of_compute <= 0 or seconds_of_audio < 0:
        raise ValueError(f"need seconds_of_audio >= 0 and seconds_of_compute > 0, got {seconds_of_audio}, "
                         f"{seconds_of_compute}; time the generation with time.perf_counter()")
    return seconds_of_audio / seconds_of_compute


# ---- data and training ---------------------------------------------------------------------


def music_arrays(split: str = "train", **dataset_kw: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """Every clip of `MusicDataset(split)` as float32 [N, 1, T] and its labels {"instrument", "key", "tempo"}: int64 [N]."""
    from fewstep.data.music import MusicDataset

    dataset = MusicDataset(split, **dataset_kw)
    items = [dataset[i] for i in range(len(dataset))]
    audio = torch.stack([item["audio"] for item in items])
    labels = {name: torch.tensor([item[name] for item in items], dtype=torch.int64) for name in HEADS}
    return audio, labels


def _augment(audio: Tensor, generator: torch.Generator) -> Tensor:
    """[B, 1, T] -> [B, 1, L]: one random crop length per batch (60-100% of T) with a random start per
    clip, and white noise at 15-40 dB SNR added to half the clips."""
    n, total = audio.shape[0], audio.shape[-1]
    length = int(total * (0.6 + 0.4 * float(torch.rand((), generator=generator))))
    starts = torch.randint(0, total - length + 1, (n,), generator=generator)
    x = audio[:, 0].gather(1, starts[:, None] + torch.arange(length))
    snr_db = 15 + 25 * torch.rand(n, 1, generator=generator)
    noisy = torch.rand(n, 1, generator=generator) < 0.5
    noise = torch.randn(x.shape, generator=generator) * x.pow(2).mean(1, keepdim=True).sqrt() * 10 ** (-snr_db / 20)
    return (x + noise * noisy)[:, None]


@torch.no_grad()
def head_accuracies(net: MusicFeatureNet, audio: Tensor, labels: dict[str, Tensor]) -> dict[str, float]:
    """Top-1 accuracy per head of `net` on audio [N, 1, T] with labels {"instrument", "key", "tempo"}: [N]."""
    predicted = predict_labels(audio, net)
    return {name: float((predicted[name] == labels[name].cpu()).double().mean()) for name in HEADS}


def train_music_features(
    epochs: int = 14,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "cpu",
    **model_kw: Any,
) -> tuple[MusicFeatureNet, dict[str, float]]:
    """Train on `MusicDataset("train")` (2,048 clips); returns (net, {"test_<head>": accuracy, "seconds"}).

    Sum of the three heads' cross-entropies (label smoothing 0.05), AdamW with a one-cycle
    learning rate, random crops of 60-100% of each clip (so features do not depend on length or
    position) and white noise at 15-40 dB SNR on half the clips (so imperfect generated clips
    are still classified). Seeded: the same seed, device and thread count give the same weights.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_audio, train_labels = music_arrays("train")
    test_audio, test_labels = music_arrays("test")
    net = MusicFeatureNet(**model_kw).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(train_audio) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_epoch)
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(train_audio), generator=generator).split(batch_size):
            logits = net(_augment(train_audio[idx], generator).to(device))
            loss = sum(F.cross_entropy(logits[name], train_labels[name][idx].to(device), label_smoothing=0.05)
                       for name in HEADS)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    net.eval()
    accuracies = head_accuracies(net, test_audio.to(device), test_labels)
    return net, {**{f"test_{name}": acc for name, acc in accuracies.items()}, "seconds": seconds}


# ---- reference statistics ------------------------------------------------------------------


@torch.no_grad()
def music_features(extractor: nn.Module, audio: Tensor, batch_size: int = 256) -> np.ndarray:
    """Features float64 [N, D] of waveforms [N, 1, T] held in memory, in batches."""
    return torch.cat([extractor(chunk) for chunk in audio.split(batch_size)]).double().cpu().numpy()


def write_reference_stats(extractor: nn.Module, out_dir: str | Path | None = None,
                          splits: tuple[str, ...] = ("train", "test")) -> list[Path]:
    """Write `music_<split>.npz` (float64 mu, sigma of the features + metadata) atomically, per split."""
    from fewstep.metrics.stats import save_stats, stats_from_features

    out = Path(out_dir) if out_dir is not None else assets_dir() / STATS_DIR
    written = []
    for split in splits:
        audio, _ = music_arrays(split)
        stats = stats_from_features(music_features(extractor, audio), extractor="music", protocol=PROTOCOL)
        written.append(save_stats(out / f"music_{split}.npz", stats))
    return written


def _register() -> None:
    """Register the factory with the feature-extractor registry (modality 'audio')."""
    from fewstep.metrics.features import register_feature_extractor

    register_feature_extractor("music", build_music_feature_extractor, modality="audio")


_register()
