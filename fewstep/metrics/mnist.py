"""The `mnist` feature extractor: a small CNN digit classifier trained on the embedded MNIST set.

FID on MNIST-like samples uses its 128-d penultimate features (global-average-pooled last
conv block, the analogue of Inception's pool3) instead of Inception-v3, which has never seen
digits. The classifier (`fewstep.models.MnistClassifier`) is a diffusers `ModelMixin` so it
saves and loads with `save_pretrained` / `from_pretrained` (safetensors); the trained weights
ship in `assets/mnist_classifier/` and the reference statistics in `assets/mnist_stats/`.
`MnistScorer` scores generated digits: FID against those statistics and classifier accuracy.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewstep.io import ASSETS_ENV, assets_dir
from fewstep.models.mnist_classifier import MnistClassifier

PROTOCOL = (
    "mnist-classifier-v1: uint8 [N,C,H,W] -> 1 channel (mean of RGB, alpha dropped) -> "
    "28x28 zero-padded with background to 32x32, other sizes bilinear-resized to 32x32 -> "
    "x/127.5-1 -> 128-d global-average-pooled features of the last conv block"
)
CLASSIFIER_DIR = "mnist_classifier"
STATS_DIR = "mnist_stats"


def to_classifier_input(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """uint8 [N, C, H, W] (C = 1, 2, 3 or 4) -> float32 [N, 1, size, size] in [-1, 1].

    Alpha (C = 2 or 4) is dropped, RGB is averaged; 28x28 is zero-padded (background -1) to
    32x32 like MNIST itself; any other size is bilinearly resized (antialiased) to size x size.
    """
    if images.dtype != torch.uint8:
        raise TypeError(
            f"the mnist feature extractor takes uint8 images in [0, 255], got {images.dtype}; "
            f"convert [-1, 1] floats with ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)"
        )
    if images.ndim != 4 or images.shape[1] not in (1, 2, 3, 4):
        raise ValueError(f"expected images [N, C, H, W] with C in 1..4, got {tuple(images.shape)}")
    x = images.float()
    x = x[:, :1] if x.shape[1] <= 2 else x[:, :3].mean(dim=1, keepdim=True)
    x = x / 127.5 - 1.0
    h, w = x.shape[-2:]
    if (h, w) == (28, 28) and size == 32:
        return F.pad(x, (2, 2, 2, 2), value=-1.0)
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


class MnistFeatureExtractor(nn.Module):
    """`forward(uint8 [N, C, H, W]) -> float32 [N, feature_dim]`: the classifier's penultimate features."""

    name = "mnist"
    protocol = PROTOCOL

    def __init__(self, classifier: MnistClassifier) -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.feature_dim = int(classifier.config.widths[-1])

    def train(self, mode: bool = True) -> "MnistFeatureExtractor":
        """Stay in eval mode (BatchNorm running statistics, no dropout) whatever is asked."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] -> float32 [N, feature_dim]; see `to_classifier_input` for the conversion."""
        device = next(self.classifier.parameters()).device
        x = to_classifier_input(images.to(device), self.classifier.config.sample_size)
        return self.classifier.features(x).float()


def default_weights() -> Path:
    """Folder of the shipped classifier (`<assets>/mnist_classifier`); FileNotFoundError if absent."""
    path = assets_dir() / CLASSIFIER_DIR
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"no MNIST classifier at {path}; pass weights=PATH (a save_pretrained folder), set "
            f"{ASSETS_ENV} to a folder holding {CLASSIFIER_DIR}/, or train one with "
            f"`python scripts/train_mnist_classifier.py`"
        )
    return path


def load_mnist_classifier(weights: str | Path | None = None, device: str = "cpu") -> MnistClassifier:
    """Load a saved `MnistClassifier` (default: the shipped one) in eval mode on `device`."""
    path = Path(weights) if weights is not None else default_weights()
    if not path.exists():
        raise FileNotFoundError(f"MNIST classifier weights {path} not found; pass a save_pretrained folder")
    return MnistClassifier.from_pretrained(str(path)).to(device).eval()


def build_mnist_feature_extractor(device: str = "cpu", weights: str | None = None) -> nn.Module:
    """Factory registered as the `mnist` feature extractor: uint8 [N, C, H, W] -> float32 [N, 128]."""
    return MnistFeatureExtractor(load_mnist_classifier(weights, device))


# ---- training --------------------------------------------------------------------------------


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random affine per image: shift +-2 px, rotate +-10 deg, scale 0.9-1.1; background stays -1."""
    n = x.shape[0]
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    angle, scale = u[:, 0] * math.radians(10), 1 + 0.1 * u[:, 1]
    shift = u[:, 2:] * (2.0 / (x.shape[-1] / 2))  # 2 px in [-1, 1] grid units
    cos, sin = angle.cos() / scale, angle.sin() / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


@torch.no_grad()
def classifier_accuracy(model: MnistClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of `model` on images [N, 1, 32, 32] in [-1, 1] with labels [N]."""
    model.eval()
    preds = torch.cat([model(b).argmax(1) for b in images.split(500)])
    return (preds == labels).float().mean().item()


def train_mnist_classifier(
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "cpu",
    **model_kw: Any,
) -> tuple[MnistClassifier, dict[str, float]]:
    """Train on the embedded MNIST train split (4,500 images); returns (model, {test_accuracy, seconds}).

    AdamW with a one-cycle learning rate, label smoothing 0.05 and light random affine
    augmentation. Seeded: the same seed, device and thread count give the same weights.
    """
    from fewstep.data.embedded import load_mnist

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train, test = load_mnist("train"), load_mnist("test")
    model = MnistClassifier(**model_kw).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_epoch)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        for idx in order.split(batch_size):
            x = _augment(train.images[idx], generator).to(device)
            loss = F.cross_entropy(model(x), train.labels[idx].to(device), label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    model.eval()
    acc = classifier_accuracy(model, test.images.to(device), test.labels.to(device))
    return model, {"test_accuracy": acc, "seconds": seconds}


# ---- reference statistics --------------------------------------------------------------------


def mnist_uint8(split: str = "all") -> torch.Tensor:
    """The embedded MNIST images of `split` as uint8 [N, 1, 28, 28] (what a user would feed)."""
    from fewstep.data.embedded import mnist_arrays, mnist_split_indices

    images = mnist_arrays()[0][mnist_split_indices(split)]
    return torch.from_numpy(images)[:, None]


@torch.no_grad()
def mnist_features(extractor: nn.Module, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Features float64 [N, D] of uint8 images [N, C, H, W] held in memory, in batches.

    (`fewstep.metrics.extract.extract_features` streams folders and files for `fewstep fid`.)
    """
    return torch.cat([extractor(b) for b in images.split(batch_size)]).double().cpu().numpy()


def write_reference_stats(extractor: nn.Module, out_dir: str | Path | None = None) -> list[Path]:
    """Write `mnist_{all,train,test}.npz` (float64 mu, sigma of the features + metadata) atomically."""
    from fewstep.metrics.stats import save_stats, stats_from_features

    out = Path(out_dir) if out_dir is not None else assets_dir() / STATS_DIR
    written = []
    for split in ("all", "train", "test"):
        features = mnist_features(extractor, mnist_uint8(split))
        stats = stats_from_features(features, extractor="mnist", protocol=PROTOCOL)
        path = save_stats(out / f"mnist_{split}.npz", stats)
        written.append(path)
    return written


# ---- scoring generated digits ----------------------------------------------------------------


@dataclass
class MnistScores:
    """FID vs the embedded MNIST set, and the share of samples classified as their label."""

    fid: float
    accuracy: float


class MnistScorer:
    """Scores uint8 digit images with the shipped MNIST classifier's features (`mnist` extractor).

    Used by `fewstep demo` and the benchmark scripts on samples from `fewstep.pipelines.scoring.generate_images`.
    """

    def __init__(self, device: str | torch.device = "cpu", reference: str = "all"):
        from fewstep.metrics.stats import load_stats

        self.extractor = build_mnist_feature_extractor(device=str(device))
        self.reference = load_stats(assets_dir() / STATS_DIR / f"mnist_{reference}.npz")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """float64 features [N, D]."""
        return torch.from_numpy(mnist_features(self.extractor, images))

    @torch.no_grad()
    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Share of images the classifier assigns to `labels`."""
        classifier = self.extractor.classifier
        device = next(classifier.parameters()).device
        logits = torch.cat([classifier(to_classifier_input(c.to(device))) for c in images.split(500)])
        return float((logits.argmax(1).cpu() == labels).double().mean())

    def score(self, images: torch.Tensor, labels: torch.Tensor) -> MnistScores:
        """FID_N against the embedded MNIST statistics, and classifier accuracy."""
        from fewstep.metrics.frechet import frechet_distance

        feats = self.features(images)
        mu, sigma = feats.mean(0), torch.cov(feats.T)
        fid = frechet_distance(mu, sigma, self.reference.mu, self.reference.sigma)
        return MnistScores(fid=fid, accuracy=self.accuracy(images, labels))


def _register() -> None:
    """Register the factory with the feature-extractor registry when that registry exists."""
    try:
        from fewstep.metrics.features import register_feature_extractor
    except ModuleNotFoundError as e:
        if e.name != "fewstep.metrics.features":
            raise
        return
    register_feature_extractor("mnist", build_mnist_feature_extractor)


_register()
