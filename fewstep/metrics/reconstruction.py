"""Audio reconstruction quality: SNR and log-spectral distance (LSD), per clip.

    snr_db(reference, estimate)                 # 10 log10(|x|^2 / |x - x_hat|^2), dB, higher is better
    log_spectral_distance(reference, estimate)  # RMS over frequency of the dB difference, mean over frames

Both take waveforms [B, T] or [B, C, T] (channels are folded into the batch) and return [B].
"""

from __future__ import annotations

import torch
from torch import Tensor


def _flat(audio: Tensor) -> Tensor:
    return audio.reshape(-1, audio.shape[-1]).double()


def snr_db(reference: Tensor, estimate: Tensor) -> Tensor:
    """Signal-to-noise ratio of `estimate` against `reference` in dB, per clip [B*C]."""
    ref, est = _flat(reference), _flat(estimate)
    if ref.shape != est.shape:
        raise ValueError(f"reference {tuple(reference.shape)} and estimate {tuple(estimate.shape)} differ in shape")
    noise = (ref - est).pow(2).sum(-1).clamp_min(1e-20)
    return 10 * torch.log10(ref.pow(2).sum(-1).clamp_min(1e-20) / noise)


def log_spectral_distance(reference: Tensor, estimate: Tensor, n_fft: int = 512, hop: int = 128) -> Tensor:
    """LSD in dB per clip: mean over frames of sqrt(mean over bins of (10 log10 P - 10 log10 P_hat)^2)."""
    ref, est = _flat(reference), _flat(estimate)
    if ref.shape != est.shape:
        raise ValueError(f"reference {tuple(reference.shape)} and estimate {tuple(estimate.shape)} differ in shape")
    window = torch.hann_window(n_fft, dtype=torch.float64, device=ref.device)

    def power_db(x: Tensor) -> Tensor:
        spec = torch.stft(x, n_fft, hop, window=window, return_complex=True)
        return 10 * torch.log10(spec.abs().pow(2).clamp_min(1e-10))

    diff = power_db(ref) - power_db(est)  # [B, bins, frames]
    return diff.pow(2).mean(1).sqrt().mean(-1)
