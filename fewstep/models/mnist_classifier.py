"""`MnistClassifier`: the small CNN digit classifier behind the `mnist` feature extractor.

A diffusers `ModelMixin` so it saves and loads with `save_pretrained` / `from_pretrained`
(safetensors); the trained weights ship in `assets/mnist_classifier/`. Input conversion,
loading, training and FID features live in `fewstep.metrics.mnist`.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

__all__ = ["MnistClassifier"]


class MnistClassifier(ModelMixin, ConfigMixin):
    """CNN: x [N, 1, 32, 32] in [-1, 1] -> logits [N, num_classes]; `features(x)` -> [N, widths[-1]]."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, ...] = (32, 64, 128),
        convs_per_stage: int = 2,
        sample_size: int = 32,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, width in enumerate(widths):
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
                layers.append(nn.ReLU(inplace=True))
                c_in = width
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: x [N, 1, 32, 32] in [-1, 1] -> [N, widths[-1]] (non-negative)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, num_classes] for x [N, 1, 32, 32] in [-1, 1]."""
        return self.head(self.drop(self.features(x)))
