"""Waveform autoencoder for music latents: `AutoencoderOobleck` (Stable Audio's VAE, what `AceStepPipeline` decodes with).

Loss on random crops of the training clips (Kumar et al. 2023 / Stable Audio's recipe without the
adversarial terms: at toy scale on a CPU, reconstruction + spectral losses alone):

    L = l1_weight |x - x_hat|_1 + stft_weight MRSTFT(x, x_hat) + kl_weight KL(q(z|x) || N(0, I))

MRSTFT sums spectral convergence and log-magnitude L1 over several STFT resolutions (Yamamoto et
al. 2020). The export is the VAE folder (`AutoencoderOobleck.from_pretrained`) with its latent
scale folded into the weights (encoded means of the training clips have unit std, as the
generator's flow matching expects) and `autoencoder.json`: held-out SNR and log-spectral distance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from fewstep import batch_noise

from .base import Objective, Teacher, as_forward, register_objective

#: what the exported folder records about the autoencoder (held-out quality, latent scale, data).
AUTOENCODER_INFO = "autoencoder.json"


@dataclass
class MusicAutoencoderOptions:
    """Options of `objective.name=music_autoencoder`."""

    crop_samples: int = 4096  # random training crop per clip (a multiple of the hop)
    l1_weight: float = 1.0
    stft_weight: float = 1.0
    kl_weight: float = 1e-4
    stft_sizes: tuple[int, ...] = (128, 256, 512)  # FFT sizes of the multi-resolution STFT loss (hop = size / 4)
    eval_clips: int = 64  # held-out clips for SNR / LSD at export and in previews

    def __post_init__(self) -> None:
        if self.crop_samples < 1:
            raise ValueError(f"objective.crop_samples must be >= 1, got {self.crop_samples}")
        for key in ("l1_weight", "stft_weight", "kl_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"objective.{key} must be >= 0, got {getattr(self, key)}")
        if not self.stft_sizes or any(n < 16 for n in self.stft_sizes):
            raise ValueError(f"objective.stft_sizes must be FFT sizes >= 16, got {self.stft_sizes}")


def multi_resolution_stft_loss(x: Tensor, y: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """Sum over FFT sizes of spectral convergence + mean |log|X| - log|Y||; x, y [B, T] (Yamamoto et al. 2020).

    Spectral convergence ||X - Y||_F / ||X||_F is taken per clip and averaged, so the loss is a
    mean over clips (a batch split over processes averages to the same value).
    """
    total = x.new_zeros(())
    for n_fft in sizes:
        window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
        X = torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True).abs()
        Y = torch.stft(y, n_fft, n_fft // 4, window=window, return_complex=True).abs()
        convergence = (torch.linalg.norm(X - Y, dim=(-2, -1)) / torch.linalg.norm(X, dim=(-2, -1)).clamp_min(1e-7)).mean()
        log_mag = (torch.log(X.clamp_min(1e-5)) - torch.log(Y.clamp_min(1e-5))).abs().mean()
        total = total + convergence + log_mag
    return total


def check_audio_item(dataset: Dataset, audio_channels: int, sample_rate: int, hop: int) -> Tensor:
    """The first item's audio [C, T]; ValueError naming the fix if it does not fit the model."""
    item = dataset[0]
    if not isinstance(item, dict) or "audio" not in item:
        raise ValueError(f"music objectives need audio items (dicts with 'audio' [channels, samples]), got "
                         f"{type(item).__name__}; use data.name=music or data.name=audio_folder")
    audio = item["audio"]
    rate = getattr(dataset, "sample_rate", sample_rate)
    if rate != sample_rate:
        raise ValueError(f"the data is {rate} Hz but the model is {sample_rate} Hz; set data.options.sample_rate="
                         f"{sample_rate} (audio folders: data.options.resample=true) or model.sample_rate={rate}")
    if audio.ndim != 2 or audio.shape[0] != audio_channels:
        raise ValueError(f"clips have shape {tuple(audio.shape)} but the model takes {audio_channels} channel(s); "
                         f"set model.audio_channels={audio.shape[0]}, or data.options.mono=true for mono models")
    if audio.shape[-1] % hop:
        raise ValueError(f"clips have {audio.shape[-1]} samples, not a multiple of the autoencoder hop {hop}; "
                         f"choose data.options.seconds so that seconds x {sample_rate} is a multiple of {hop}")
    return audio


def held_out_clips(dataset: Dataset, count: int) -> Tensor | None:
    """[count, C, T] held-out clips of the same kind (the dataset's `held_out()` split), or None if it has none."""
    make = getattr(dataset, "held_out", None)
    if make is None or count < 1:
        return None
    held = make()
    return torch.stack([held[i]["audio"] for i in range(min(count, len(held)))])


@register_objective("music_autoencoder")
class MusicAutoencoder(Objective):
    """Train an `AutoencoderOobleck` on audio clips (model.type=oobleck)."""

    Options = MusicAutoencoderOptions
    teacher_use = "none"
    model_types = ("oobleck",)
    main_network = "vae"

    def __init__(self, model: nn.Module, options: MusicAutoencoderOptions | None = None, teacher: Teacher | None = None) -> None:
        super().__init__({"vae": model}, teacher)
        self.options = options or MusicAutoencoderOptions()
        self.hop = int(math.prod(model.config.downsampling_ratios))
        if self.options.crop_samples % self.hop:
            raise ValueError(f"objective.crop_samples={self.options.crop_samples} must be a multiple of the "
                             f"autoencoder hop {self.hop} (prod of model.downsampling_ratios)")
        self.held_out: Tensor | None = None
        self.train_clips: Tensor | None = None  # a few training clips, for the latent scale at export
        self.data_info: dict[str, Any] = {}

    def check_data(self, dataset: Dataset, num_classes: int) -> None:
        """Audio items of the model's rate, channels and a whole number of latent frames."""
        config = self.networks["vae"].config
        audio = check_audio_item(dataset, int(config.audio_channels), int(config.sampling_rate), self.hop)
        if audio.shape[-1] < self.options.crop_samples:
            raise ValueError(f"clips have {audio.shape[-1]} samples, fewer than objective.crop_samples="
                             f"{self.options.crop_samples}; lower objective.crop_samples")
        self.held_out = held_out_clips(dataset, self.options.eval_clips)
        count = min(len(dataset), 64)
        self.train_clips = torch.stack([dataset[i]["audio"] for i in range(count)])
        self.data_info = {"dataset": type(dataset).__name__, "clip_samples": int(audio.shape[-1]),
                          "sample_rate": int(config.sampling_rate)}

    def crop(self, audio: Tensor, generator: torch.Generator) -> Tensor:
        """A random `crop_samples` window of each clip [B, C, T] -> [B, C, crop]."""
        B, _, T = audio.shape
        size = self.options.crop_samples
        starts = batch_noise.randint(0, T - size + 1, (B,), generator, audio.device)
        index = starts[:, None] + torch.arange(size, device=audio.device)
        return torch.gather(audio, 2, index[:, None, :].expand(-1, audio.shape[1], -1))

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        opts = self.options
        x = self.crop(batch["audio"], generator)

        def reconstruct(vae: nn.Module, x: Tensor) -> tuple[Tensor, Any]:
            posterior = vae.encode(x).latent_dist
            mean = posterior.mean  # the posterior's sample, with this process's rows of the global batch's noise
            noise = batch_noise.randn(mean.shape, generator, mean.device, mean.dtype)
            return vae.decode(mean + posterior.std * noise).sample, posterior

        y, posterior = as_forward(self.networks["vae"], reconstruct, x)
        l1 = (x - y).abs().mean()
        dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 under fp16 / bf16 autocast, float64 kept
        flat_x, flat_y = x.reshape(-1, x.shape[-1]).to(dtype), y.reshape(-1, y.shape[-1]).to(dtype)
        stft = multi_resolution_stft_loss(flat_x, flat_y, opts.stft_sizes)
        kl = posterior.kl()
        loss = opts.l1_weight * l1 + opts.stft_weight * stft + opts.kl_weight * kl
        return {"loss": loss, "l1": l1.detach(), "mrstft": stft.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def reconstruct(self, vae: nn.Module, audio: Tensor, batch_size: int = 16) -> Tensor:
        """decode(mean of encode(audio)) [B, C, T] in batches."""
        param = next(vae.parameters())
        out = [vae.decode(vae.encode(audio[i:i + batch_size].to(param.device)).latent_dist.mean).sample.cpu()
               for i in range(0, audio.shape[0], batch_size)]
        return torch.cat(out)[..., : audio.shape[-1]]

    def quality(self, vae: nn.Module) -> dict[str, float]:
        """Held-out SNR (dB) and log-spectral distance (dB) of the reconstructions, mean over clips."""
        from fewstep.metrics.reconstruction import log_spectral_distance, snr_db

        if self.held_out is None:
            return {}
        recon = self.reconstruct(vae, self.held_out)
        return {"snr_db": float(snr_db(self.held_out, recon).mean()),
                "lsd_db": float(log_spectral_distance(self.held_out, recon).mean()),
                "clips": int(self.held_out.shape[0])}

    @torch.no_grad()
    def sample(self, networks: dict[str, nn.Module], class_labels: Tensor, generator: torch.Generator, num_steps: int,
               guidance_scale: float = 1.0) -> Tensor:
        """Reconstructions [B, C, T] of the first B held-out (else training) clips; labels only set B."""
        clips = self.held_out if self.held_out is not None else self.train_clips
        assert clips is not None, "check_data runs before sampling"
        return self.reconstruct(networks["vae"], clips[: class_labels.shape[0]])

    def write_preview(self, sample_fn: Callable[[Tensor], Tensor], networks: dict[str, nn.Module], stem: Path,
                      num_classes: int, per_class: int) -> Path:
        """`stem`.png: spectrograms of held-out clips (top row) over their reconstructions (bottom row)."""
        from fewstep.audio import save_spectrogram_grid

        count = 4
        recon = sample_fn(torch.zeros(count, dtype=torch.long)).float().cpu()
        clips = (self.held_out if self.held_out is not None else self.train_clips)[:count]
        audios = torch.cat([clips[:, 0], recon[:, 0]])
        titles = [f"clip {i}" for i in range(count)] + [f"reconstruction {i}" for i in range(count)]
        rate = int(networks["vae"].config.sampling_rate)
        return save_spectrogram_grid(audios, rate, stem.with_suffix(".png"), titles=titles, columns=count)

    @torch.no_grad()
    def latent_std(self, vae: nn.Module) -> float:
        """Std of the encoded means of (up to 64) training clips: the scale folded into the export."""
        assert self.train_clips is not None
        param = next(vae.parameters())
        means = torch.cat([vae.encode(self.train_clips[i:i + 16].to(param.device)).latent_dist.mean.cpu()
                           for i in range(0, self.train_clips.shape[0], 16)])
        return float(means.std())

    def export(self, networks: dict[str, nn.Module], folder: Path) -> None:
        """The VAE folder with unit-variance latents (`fold_latent_scale`) + autoencoder.json (held-out quality)."""
        from fewstep.models.acestep import clone_model, fold_latent_scale

        vae = clone_model(networks["vae"]).eval()
        scale = self.latent_std(vae)
        fold_latent_scale(vae, scale)
        vae.save_pretrained(str(folder))
        info = {**self.data_info, "latent_scale_folded": scale, "hop": self.hop,
                "latents_per_second": vae.config.sampling_rate / self.hop, "held_out": self.quality(vae)}
        (Path(folder) / AUTOENCODER_INFO).write_text(json.dumps(info, indent=2))
