"""What a class-conditional network tells about its samples and classes (from its diffusers config)."""

from __future__ import annotations

from typing import Any

from torch import nn


def null_class(model: nn.Module) -> int:
    """Index of the null (unconditional) class of a model: `config.num_class_embeds - 1`."""
    num = getattr(model.config, "num_class_embeds", None)
    if not num:
        raise ValueError(
            f"{type(model).__name__} has no class embedding (config.num_class_embeds); "
            "build it with num_class_embeds = num_classes + 1 (the last index is the null class)"
        )
    return int(num) - 1


def sample_shape(model: nn.Module) -> tuple[int, ...]:
    """Shape of one sample: `model.sample_shape` if defined, else (in_channels, H, W) from the config."""
    shape = getattr(model, "sample_shape", None)
    if shape is not None:
        return tuple(shape)
    config: Any = model.config
    size = config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (config.in_channels, h, w)
