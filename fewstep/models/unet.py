"""UNet builders: small class-conditional diffusers `UNet2DModel`s for CPU-sized image teachers and students.

The model is diffusers' own (`UNet2DModel` with a class embedding), so it saves, loads and
samples the diffusers way; the last class index (`num_class_embeds - 1`) is the null class used
for classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

from diffusers import UNet2DModel

__all__ = ["norm_groups", "small_unet"]


def norm_groups(block_out_channels: tuple[int, ...], most: int = 8) -> int:
    """The largest GroupNorm group count <= `most` that divides every block width (8 for the usual widths)."""
    return max(g for g in range(1, most + 1) if all(c % g == 0 for c in block_out_channels))


def small_unet(
    sample_size: int = 32,
    in_channels: int = 1,
    num_classes: int = 10,
    block_out_channels: tuple[int, ...] = (32, 64, 64),
    layers_per_block: int = 1,
    attention: bool = False,
) -> UNet2DModel:
    """A CPU-sized class-conditional `UNet2DModel` with `num_class_embeds = num_classes + 1` (null class last).

    With `attention`, the lowest-resolution down/up blocks get self-attention.
    """
    n = len(block_out_channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=norm_groups(block_out_channels),
        num_class_embeds=num_classes + 1,
    )

