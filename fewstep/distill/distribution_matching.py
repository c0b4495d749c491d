"""Distribution matching distillation parts (DMD, Yin et al. 2024, arXiv 2311.18828; DMD2, arXiv 2405.14867).

Pure functions and small modules that the `msd` / `dmd` objectives (and later distillers,
e.g. an audio turbo student) assemble:

- `NetworkDenoiser`: a class-conditional diffusers network on a fewstep noise path, evaluated
  at *per-sample* times t [B], returning x0 (optionally with classifier-free guidance);
- `dm_gradient` / `dm_surrogate_loss`: DMD's normalised distribution-matching gradient
  `(x0_fake - x0_real) / mean|x - x0_real|` and the `0.5 ||x - sg(x - grad)||^2` surrogate that
  pushes it through the generator;
- `FeatureTap` + `DiscriminatorHead`: DMD2's GAN classifier on the fake-score network's
  bottleneck features, with the non-saturating losses `gan_generator_loss` /
  `gan_discriminator_loss`.

Times follow fewstep's convention (t = 0 data, t = 1 noise); noising uses the teacher's path,
`x_t = alpha(t) x + sigma(t) eps`, so flow and VP teachers share every line here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewstep.samplers import NoisePath, from_x0_eps, to_x0

#: floor of DMD's per-sample normaliser mean|x - x0_real| (avoids division by zero on exact teachers).
NORMALISER_FLOOR = 1e-6


def broadcast(values: Tensor, like: Tensor) -> Tensor:
    """Per-sample values [B] reshaped to [B, 1, ...] and cast to `like`'s dtype and device."""
    return values.to(device=like.device, dtype=like.dtype).reshape(-1, *[1] * (like.ndim - 1))


class NetworkDenoiser:
    """x0 predictions of `network(x_t, timestep, class_labels=...)` at per-sample times t [B].

    Discrete (VP) paths evaluate the network at integer timesteps: times are snapped to the
    training grid first (`path.snap`), so alpha(t), sigma(t) and the timestep agree.
    """

    def __init__(self, network: nn.Module, path: NoisePath, prediction_type: str) -> None:
        self.network, self.path, self.prediction_type = network, path, prediction_type

    def snap(self, t: Tensor) -> Tensor:
        """t [B] (float64, CPU) moved onto the network's time grid."""
        return self.path.snap(t) if self.path.discrete else t

    def timestep(self, t: Tensor, like: Tensor) -> Tensor:
        """Network timesteps [B] for times t [B]."""
        timestep = self.path.model_time(t)
        return timestep.to(device=like.device, dtype=torch.long if self.path.discrete else like.dtype)

    def alpha_sigma(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """alpha(t), sigma(t) as [B, 1, ...] tensors matching `like`."""
        alpha, sigma = self.path.alpha_sigma(t)
        return broadcast(alpha, like), broadcast(sigma, like)

    def raw(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """The network's output (its own prediction type) at (x_t [B, ...], t [B])."""
        return self.network(x_t, self.timestep(t, x_t), class_labels=labels).sample

    def __call__(self, x_t: Tensor, t: Tensor, labels: Tensor, guidance_scale: float = 1.0, null_label: int | None = None) -> Tensor:
        """x0_hat [B, ...]; with `guidance_scale != 1`, CFG against `null_label` in one batched call."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        if guidance_scale == 1.0:
            return to_x0(self.raw(x_t, t, labels), x_t, alpha, sigma, self.prediction_type)
        if null_label is None:
            raise ValueError("classifier-free guidance needs the null label")
        both = self.raw(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([torch.full_like(labels, null_label), labels]))
        x0_uncond, x0_cond = to_x0(both, torch.cat([x_t, x_t]), torch.cat([alpha, alpha]), torch.cat([sigma, sigma]),
                                   self.prediction_type).chunk(2)
        return x0_uncond + guidance_scale * (x0_cond - x0_uncond)

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The denoising regression target of this network for x_t = alpha x0 + sigma eps."""
        alpha, sigma = self.alpha_sigma(t, x0)
        return from_x0_eps(x0, eps, alpha, sigma, self.prediction_type)

    def noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps on the path."""
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * x0 + sigma * eps


def dm_gradient(x: Tensor, x0_real: Tensor, x0_fake: Tensor) -> Tensor:
    """DMD's distribution-matching gradient [B, ...]: (x0_fake - x0_real) / mean_{C,H,W} |x - x0_real| per sample.

    It is the (normalised) difference of the fake and real scores at the noised sample, pointing
    from the data distribution towards the generator's; descending it moves samples to the data.
    """
    dims = tuple(range(1, x.ndim))
    normaliser = (x - x0_real).abs().mean(dim=dims, keepdim=True).clamp(min=NORMALISER_FLOOR)
    return (x0_fake - x0_real) / normaliser


def dm_surrogate_loss(x: Tensor, grad: Tensor) -> Tensor:
    """`0.5 * mean (x - sg(x - grad))^2`: its gradient w.r.t. x is `grad / x.numel()` (DMD's trick)."""
    target = (x - grad).detach()
    return 0.5 * F.mse_loss(x.float(), target.float(), reduction="mean")


class FeatureTap:
    """Capture the output of one sub-module (e.g. a UNet's `mid_block`) on every forward call."""

    def __init__(self, network: nn.Module, module_name: str | None = None) -> None:
        name = module_name or default_feature_module(network)
        self.module = network.get_submodule(name)
        self.features: Tensor | None = None
        self.handle = self.module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.features = output[0] if isinstance(output, (tuple, list)) else output

    def take(self) -> Tensor:
        """The features of the last forward call (and forget them)."""
        if self.features is None:
            raise RuntimeError("no features captured: run the network's forward first")
        features, self.features = self.features, None
        return features


def default_feature_module(network: nn.Module) -> str:
    """The bottleneck of a known network: `mid_block` (UNet2DModel) or the middle residual block (MLP)."""
    if hasattr(network, "mid_block"):
        return "mid_block"
    blocks = getattr(network, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
        return f"blocks.{len(blocks) // 2}"
    raise ValueError(f"{type(network).__name__} has no known bottleneck for the GAN head; it needs a `mid_block` "
                     "(UNet2DModel) or `blocks` (ClassConditionalMLP)")


def feature_width(network: nn.Module) -> int:
    """Channels (or width) of the bottleneck features of `network` (from its config)."""
    config = getattr(network, "config", {})
    if "block_out_channels" in config:
        return int(config["block_out_channels"][-1])
    if "width" in config:
        return int(config["width"])
    raise ValueError(f"cannot tell the bottleneck width of {type(network).__name__}")


class DiscriminatorHead(nn.Module):
    """DMD2's GAN classifier: bottleneck features [B, C, h, w] (or [B, C]) -> one real/fake logit per sample."""

    def __init__(self, channels: int, num_groups: int = 8) -> None:
        super().__init__()
        groups = num_groups if channels % num_groups == 0 else 1
        self.conv = nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
        self.mlp = nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(), nn.Linear(channels, channels), nn.SiLU(),
                                 nn.Linear(channels, 1))

    def forward(self, features: Tensor) -> Tensor:
        """Logits [B]."""
        if features.ndim == 4:
            features = self.conv(features).mean(dim=(2, 3))
        return self.mlp(features).squeeze(-1)


def gan_generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss softplus(-D(fake)) (Goodfellow et al. 2014)."""
    return F.softplus(-fake_logits.float()).mean()


def gan_discriminator_loss(fake_logits: Tensor, real_logits: Tensor) -> Tensor:
    """Discriminator loss softplus(D(fake)) + softplus(-D(real))."""
    return F.softplus(fake_logits.float()).mean() + F.softplus(-real_logits.float()).mean()
