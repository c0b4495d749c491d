"""Helpers for the fewstep fid tests: tiny extractors, random FID-Inception weights, image folders."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewstep.metrics.features import to_rgb


class TinyFeatures(nn.Module):
    """12-d features: RGB means over a 2x2 grid, in [0, 1] (fast stand-in for Inception)."""

    name = "tiny"
    feature_dim = 12
    protocol = "test: RGB /255, 2x2 average pool"

    def forward(self, images: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(to_rgb(images).float() / 255, 2).flatten(1)


class NaNFeatures(TinyFeatures):
    """Returns NaN for every image (a broken network)."""

    name = "nan"

    def forward(self, images: Tensor) -> Tensor:
        return super().forward(images) * float("nan")


def tiny_features(device: str = "cpu", weights: str | None = None) -> nn.Module:
    """Factory used as the `fid_helpers:tiny_features` spec."""
    return TinyFeatures().to(device)


def nan_features(device: str = "cpu") -> nn.Module:
    return NaNFeatures().to(device)


def tiny_function(images: Tensor) -> Tensor:
    """A plain feature function (the `fid_helpers:tiny_function` spec): TinyFeatures' features."""
    return F.adaptive_avg_pool2d(to_rgb(images).float() / 255, 2).flatten(1)


class TinyForwardOnly(nn.Module):
    """An nn.Module subclass with only forward() (no name / feature_dim / protocol, no __init__)."""

    def forward(self, images: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(to_rgb(images).float() / 255, 2)  # (N, 3, 2, 2): flattened by fewstep


class TinyWithDevice(TinyFeatures):
    """A feature-extractor class whose own __init__ takes `device` (it is passed)."""

    def __init__(self, device: str = "cpu") -> None:
        super().__init__()
        self.built_on = str(device)


def random_inception_state_dict() -> dict[str, Tensor]:
    """A randomly initialised state dict of torch-fidelity's FID Inception-v3, BN stats calibrated.

    Default init would let activations vanish through ~100 layers; one train-mode pass over random
    images sets each BatchNorm's running statistics so the features are O(1) and informative.
    """
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    from fewstep.metrics.inception import InceptionFeatures

    torch.manual_seed(0)
    with mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None):
        network = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration pass
    network.train()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        InceptionFeatures(network)(images)
    return {k: v.clone() for k, v in network.state_dict().items()}


def write_images(folder: Path, images: np.ndarray, ext: str = "png") -> list[Path]:
    """Save uint8 (N, H, W, C) images as files 00000.png, ... in `folder`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:05d}.{ext}"
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(path)
        paths.append(path)
    return paths


def random_images(n: int, size: int = 16, seed: int = 0, low: int = 0, high: int = 256) -> np.ndarray:
    """Smooth-ish random uint8 images (N, size, size, 3)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(low, high, (n, size // 4, size // 4, 3)).astype(np.uint8)
    return coarse.repeat(4, axis=1).repeat(4, axis=2)
