"""The reference FID network: torch-fidelity's TF-ported Inception-v3, 2048-d pool features.

Protocol (identical to pytorch-fid's `InceptionV3` with FID weights and to torch-fidelity):
uint8 RGB -> float32 -> TensorFlow-1.x bilinear resize to 299 x 299 (`align_corners=False`,
no half-pixel centres, no antialiasing) -> `(x - 128) / 128` -> Inception-v3 (2015-12-05 TF
weights) -> 2048-d average-pool features. torchmetrics' `FrechetInceptionDistance` defaults to
`antialias=True`, a *different* resize that changes FID; pass `antialias=False` to match.

Weights are looked up as: `weights=` (`--weights PATH`) > `$FEWSTEP_INCEPTION_WEIGHTS` > the torch
hub cache `<torch.hub.get_dir()>/checkpoints/weights-inception-2015-12-05-6726825d.pth` (where
torch-fidelity and torchmetrics download them). Nothing is downloaded here; the file is loaded
with `torch.load(weights_only=True)` (no unpickling).
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import torch
from torch import Tensor, nn

from fewstep.metrics.features import register_feature_extractor, to_rgb

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
WEIGHTS_ENV = "FEWSTEP_INCEPTION_WEIGHTS"
INPUT_SIZE = 299
PROTOCOL = (
    "torch-fidelity/pytorch-fid FID protocol: RGB uint8 -> TF1 bilinear resize to 299x299 "
    "(align_corners=False, no antialias) -> (x-128)/128 -> Inception-v3 TF weights, 2048-d pool"
)
# Inception-v3 stages of torch-fidelity's network, in forward order, up to the 2048-d pool.
_STAGES = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool",
)


def hub_weights_path() -> Path:
    """Where torch-fidelity / torchmetrics keep the FID Inception weights in the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def resolve_weights(weights: str | os.PathLike | None = None) -> Path:
    """The weights file to use: explicit path > $FEWSTEP_INCEPTION_WEIGHTS > torch hub cache."""
    for source, candidate in (("--weights", weights), (f"${WEIGHTS_ENV}", os.environ.get(WEIGHTS_ENV))):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"Inception weights file {str(path)!r} (from {source}) does not exist")
            return path
    path = hub_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"the FID Inception-v3 weights file {WEIGHTS_FILE} was not found in the torch hub folder "
            f"{path.parent} and nothing can be downloaded here; on a machine with internet fetch "
            f"{WEIGHTS_URL} and put it in {path.parent}/, or pass --weights PATH, or set "
            f"{WEIGHTS_ENV}=PATH"
        )
    return path


def load_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict read with `torch.load(weights_only=True)`; a clear error if it is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt / non-tensor files
        raise ValueError(f"cannot read Inception weights {str(path)!r} as a tensor state dict: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} is not a state dict of tensors (expected torch-fidelity's {WEIGHTS_FILE})")
    return state


def build_network(state_dict: dict[str, Tensor]) -> nn.Module:
    """torch-fidelity's `FeatureExtractorInceptionV3` built around `state_dict` (no download)."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    # torch-fidelity only knows "download" or "torch.load(path, weights_only=False)"; hand it
    # the already safely-loaded state dict in place of the download instead.
    with mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: state_dict):
        try:
            return tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
        except RuntimeError as error:  # load_state_dict(strict=True) key / shape mismatch
            raise ValueError(
                f"the weights do not fit torch-fidelity's FID Inception-v3 ({WEIGHTS_FILE} expected): "
                f"{str(error).splitlines()[0]}"
            ) from error


def tf1_bilinear_resize(images: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """TensorFlow-1.x `resize_bilinear(align_corners=False)`: source = dest * in / out, no half pixel.

    images: (N, C, H, W) float32 -> (N, C, size, size). Separable: rows first, then columns,
    with the same float32 arithmetic (`lo + (hi - lo) * frac`) as torch-fidelity's reference
    implementation, so the output equals it (bit for bit on the x86 CPUs tested; the test allows
    1e-4 on the 0-255 scale) while reading each input pixel fewer times.
    """

    def axis(n_in: int) -> tuple[Tensor, Tensor, Tensor]:
        coord = torch.arange(size, dtype=torch.float32, device=images.device) * torch.tensor(
            n_in / size, dtype=torch.float32
        )
        lo = coord.long()
        return lo, (lo + 1).clamp_max(n_in - 1), coord - lo.float()

    lo_x, hi_x, frac_x = axis(images.shape[3])
    lo_y, hi_y, frac_y = axis(images.shape[2])
    left, right = images.index_select(3, lo_x), images.index_select(3, hi_x)
    rows = left + (right - left) * frac_x.view(1, 1, 1, size)
    top, bottom = rows.index_select(2, lo_y), rows.index_select(2, hi_y)
    return top + (bottom - top) * frac_y.view(1, 1, size, 1)


def preprocess(images: Tensor) -> Tensor:
    """uint8 (N, C, H, W), C in {1, 3, 4} -> float32 (N, 3, 299, 299) in [-1, 1] by the FID protocol."""
    if images.dtype != torch.uint8:
        raise ValueError(f"Inception features expect uint8 images in [0, 255], got dtype {images.dtype}")
    x = to_rgb(images).float()
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = tf1_bilinear_resize(x, INPUT_SIZE)
    return (x - 128) / 128


class InceptionFeatures(nn.Module):
    """FID Inception-v3 pool features (2048-d) by the torch-fidelity / pytorch-fid protocol."""

    name = "inception"
    feature_dim = 2048
    protocol = PROTOCOL

    def __init__(self, network: nn.Module, channels_last: bool = True) -> None:
        """channels_last: NHWC convolutions, ~1.4x faster on CPU; features then differ from the
        NCHW reference by float32 round-off (~1e-5 relative); False uses the reference layout (equal
        to float32 round-off, bit for bit on the x86 CPUs tested)."""
        super().__init__()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.network = network.to(memory_format=self.memory_format)

    def forward(self, images: Tensor) -> Tensor:
        """(N, C, H, W) uint8 -> (N, 2048) float32."""
        x = preprocess(images.to(next(self.network.parameters()).device))
        x = x.contiguous(memory_format=self.memory_format)
        for stage in _STAGES:
            x = getattr(self.network, stage)(x)
        return x.flatten(1)


def inception_features(
    device: str | torch.device = "cpu", weights: str | None = None, channels_last: bool = True
) -> InceptionFeatures:
    """Factory for the `inception` extractor (weights: path, else env var, else torch hub cache)."""
    network = build_network(load_weights(resolve_weights(weights)))
    return InceptionFeatures(network.to(device), channels_last).eval().requires_grad_(False)


register_feature_extractor("inception", inception_features)
