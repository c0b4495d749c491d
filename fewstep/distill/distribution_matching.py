"""Distribution matching distillation parts (DMD, Yin et al. 2024, arXiv 2311.18828; DMD2, arXiv 2405.14867).

Pure functions and small modules that the `msd` / `dmd` and `acestep_turbo` objectives assemble:

- `NetworkDenoiser` (from `fewstep.samplers`): a class-conditional network on a fewstep noise
  path at *per-sample* times t [B], returning x0 (optionally with classifier-free guidance);
- `dm_gradient` / `dm_surrogate_loss`: DMD's normalised distribution-matching gradient
  `(x0_fake - x0_real) / mean|x - x0_real|` and the `0.5 ||x - sg(x - grad)||^2` surrogate that
  pushes it through the generator; `distribution_matching_loss` puts them together (what the
  distillers call);
- `FeatureTap` + `DiscriminatorHead`: DMD2's GAN classifier on the fake-score network's
  bottleneck features, with the non-saturating losses `gan_generator_loss` /
  `gan_discriminator_loss`.

Times follow fewstep's convention (t = 0 data, t = 1 noise); noising uses the teacher's path,
`x_t = alpha(t) x + sigma(t) eps`, so flow and VP teachers share every line here.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from fewstep.samplers import NetworkDenoiser  # noqa: F401  (re-exported: the distillers' denoiser)

#: floor of DMD's per-sample normaliser mean|x - x0_real| (avoids division by zero on exact teachers).
NORMALISER_FLOOR = 1e-6


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


def distribution_matching_loss(x: Tensor, x0_real: Tensor, x0_fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """DMD's generator loss for samples x [B, ...] (with grad) and the real / fake x0 predictions at their noised copies.

    Returns (`0.5 ||x - sg(x - grad)||^2` with grad = `dm_gradient(x, x0_real, x0_fake)`, logs
    {"dm_loss", "dm_grad": mean |grad|}). The one implementation every distribution-matching
    distiller (`msd` / `dmd`, `acestep_turbo`) calls.
    """
    grad = dm_gradient(x.detach(), x0_real.detach(), x0_fake.detach())
    loss = dm_surrogate_loss(x, grad)
    return loss, {"dm_loss": loss.detach(), "dm_grad": grad.abs().mean()}


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


def gan_discriminator_loss(fake_logits: Tensor, real_logits: Tensor, real_count: float | None = None) -> Tensor:
    """Discriminator loss softplus(D(fake)) + softplus(-D(real)), each averaged over its rows.

    `real_count` divides the real term's sum instead of its number of rows: the expected count
    when the real rows are a random subset of a batch (a class group's items), which keeps the
    loss a mean over the batch's rows (equal however a batch is split over processes; zero for
    an empty subset).
    """
    real = F.softplus(-real_logits.float())
    return F.softplus(fake_logits.float()).mean() + (real.mean() if real_count is None else real.sum() / real_count)
