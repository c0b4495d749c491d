"""FID Inception: protocol parity with torch-fidelity, feature/FID parity with torchmetrics, weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from fewstep.commands import fid as fid_command
from fewstep.metrics.inception import (
    WEIGHTS_ENV,
    WEIGHTS_FILE,
    WEIGHTS_URL,
    inception_features,
    preprocess,
    resolve_weights,
    tf1_bilinear_resize,
)
from fewstep.metrics.features import get_feature_extractor
from fid_helpers import random_images, write_images


# Tolerances for float32 results of different code paths (ours vs torch-fidelity / torchmetrics):
# equal on the x86 CPUs measured, but the order of float32 operations is not part of the protocol.
RESIZE_ATOL = 1e-4  # resized pixels in [0, 255]: ~7 float32 ulps at 255, 1e-6 of the range
INPUT_ATOL = 1e-6  # network input in [-1, 1]: ~8 ulps at 1.0
FEATURE_TOL = {"rtol": 1e-5, "atol": 1e-5}  # pool features, O(0.1-1): float32 round-off of ~100 layers


@pytest.mark.parametrize("shape", [(32, 32), (28, 20), (64, 48), (400, 333), (299, 299)])
def test_tf1_resize_matches_torch_fidelity(shape):
    images = torch.randint(0, 256, (2, 3, *shape), generator=torch.Generator().manual_seed(0)).float()
    ours = tf1_bilinear_resize(images, 299)
    reference = interpolate_bilinear_2d_like_tensorflow1x(images, size=(299, 299), align_corners=False)
    torch.testing.assert_close(ours, reference, rtol=0, atol=RESIZE_ATOL)


def test_torchmetrics_default_antialias_is_a_different_protocol():
    images = torch.randint(0, 256, (1, 3, 32, 32), generator=torch.Generator().manual_seed(1)).float()
    antialiased = torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear", antialias=True)
    assert (antialiased - tf1_bilinear_resize(images)).abs().max() > 1.0


def test_channel_conversion_matches_pil_convert_rgb():
    """Grayscale and RGBA go through the extractor exactly as PIL.convert('RGB') + torch-fidelity."""
    rng = np.random.default_rng(2)
    for mode, channels in (("L", 1), ("RGBA", 4)):
        array = rng.integers(0, 256, (24, 24, channels), dtype=np.uint8)
        image = Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)
        rgb = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float()
        expected = (interpolate_bilinear_2d_like_tensorflow1x(rgb, size=(299, 299), align_corners=False) - 128) / 128
        ours = preprocess(torch.from_numpy(array).permute(2, 0, 1)[None])
        torch.testing.assert_close(ours, expected, rtol=0, atol=INPUT_ATOL)


def test_missing_weights_offline_error_says_where(offline_hub):
    with pytest.raises(FileNotFoundError) as info:
        resolve_weights()
    message = str(info.value)
    for needle in (WEIGHTS_FILE, str(offline_hub), WEIGHTS_URL, "--weights", WEIGHTS_ENV):
        assert needle in message
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        resolve_weights("nope.pth")


def test_weights_lookup_order(tmp_path, offline_hub, monkeypatch):
    env_file, explicit = tmp_path / "env.pth", tmp_path / "explicit.pth"
    env_file.touch()
    explicit.touch()
    monkeypatch.setenv(WEIGHTS_ENV, str(env_file))
    assert resolve_weights() == env_file
    assert resolve_weights(str(explicit)) == explicit
    monkeypatch.delenv(WEIGHTS_ENV)
    offline_hub.mkdir(parents=True)
    (offline_hub / WEIGHTS_FILE).touch()
    assert resolve_weights() == offline_hub / WEIGHTS_FILE


def test_wrong_weights_are_rejected(tmp_path):
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "small.pth")
    with pytest.raises(ValueError, match="do not fit"):
        get_feature_extractor("inception", weights=str(tmp_path / "small.pth"))
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # a module, not tensors
    with pytest.raises(ValueError, match="cannot read Inception weights"):
        get_feature_extractor("inception", weights=str(tmp_path / "pickled.pth"))


def test_fid_matches_torchmetrics(tmp_path, inception_weights, offline_hub, capsys):
    """Same images, same (random) weights loaded through the real hub-cache path on both sides.

    (pytorch-fid's calculate_frechet_distance is compared on statistics in test_fid_frechet.py;
    its scipy sqrtm takes about a minute at d = 2048 on 2 cores.)

    Features (NCHW) equal torchmetrics' `FrechetInceptionDistance(feature=2048, antialias=False)`
    network's to FEATURE_TOL (bit for bit on the CPUs measured); the default channels_last
    convolutions agree to float32 round-off (rtol 1e-4, atol 1e-3). With 3 images per side the 2048 x 2048 covariances have rank 2: our low-rank path
    is exact, while torchmetrics' eigvals and pytorch-fid's sqrtm pick up sqrt(round-off) from
    ~2046 null eigenvalues (measured with 4 images: both ~7.6e-7 relative below ours, which
    equals the exact feature-space computation to 1e-16).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    a_images, b_images = random_images(3, 32, seed=10), random_images(3, 32, seed=11, low=30, high=230)
    write_images(tmp_path / "a", a_images)
    write_images(tmp_path / "b", b_images)
    offline_hub.mkdir(parents=True)
    (offline_hub / WEIGHTS_FILE).symlink_to(inception_weights)

    assert fid_command.main(["stats", str(tmp_path / "a"), "--out", str(tmp_path / "a.npz"),
                             "--num-workers", "0", "--batch-size", "3"]) == 0
    capsys.readouterr()
    assert fid_command.main([str(tmp_path / "b"), str(tmp_path / "a.npz"), "--json", "--num-workers", "0"]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert ours["extractor"] == "inception" and [side["n"] for side in ours["inputs"]] == [3, 3]

    metric = FrechetInceptionDistance(feature=2048, antialias=False, feature_extractor_weights_path=inception_weights)
    to_tensor = lambda images: torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    metric.update(to_tensor(a_images), real=True)
    metric.update(to_tensor(b_images), real=False)
    torchmetrics_fid = float(metric.compute())
    assert ours["fid"] == pytest.approx(torchmetrics_fid, rel=1e-4)

    two = to_tensor(a_images[:2])
    reference = metric.inception(two)
    exact = inception_features(weights=inception_weights, channels_last=False)  # NCHW like the reference
    torch.testing.assert_close(exact(two), reference, **FEATURE_TOL)
    fast = get_feature_extractor("inception")  # default: channels_last convolutions
    torch.testing.assert_close(fast(two), reference, rtol=1e-4, atol=1e-3)

    print(f"FID ours {ours['fid']!r} torchmetrics {torchmetrics_fid!r}")
