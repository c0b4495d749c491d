"""The shipped `mnist` feature extractor: accuracy, feature contract, input conversions, stats."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fewstep.data import load_mnist
from fewstep.io import assets_dir
from fewstep.metrics.features import available_feature_extractors, get_feature_extractor
from fewstep.metrics.stats import load_stats
from fewstep.metrics.mnist import (
    PROTOCOL,
    MnistFeatureExtractor,
    build_mnist_feature_extractor,
    classifier_accuracy,
    default_weights,
    mnist_uint8,
    to_classifier_input,
)
from fewstep.models import MnistClassifier


@pytest.fixture(scope="module")
def extractor():
    return build_mnist_feature_extractor()


@pytest.fixture(scope="module")
def test_images():
    return mnist_uint8("test")  # uint8 [500, 1, 28, 28]


def test_shipped_classifier_is_accurate_on_held_out_split(extractor):
    test = load_mnist("test")
    assert len(test) == 500
    assert classifier_accuracy(extractor.classifier, test.images, test.labels) >= 0.98


def test_features_have_documented_dim_and_are_deterministic(extractor, test_images):
    assert extractor.name == "mnist" and extractor.protocol == PROTOCOL
    assert extractor.feature_dim == 128
    a, b = extractor(test_images[:64]), extractor(test_images[:64])
    assert a.shape == (64, 128) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert a.std(dim=0).mean() > 0  # not collapsed
    extractor.train()  # FID code may call .train(); features must not change
    assert not extractor.training and torch.equal(extractor(test_images[:64]), a)


def test_rgb_rgba_and_gray_inputs_give_same_features(extractor, test_images):
    gray = test_images[:32]
    rgb = gray.expand(-1, 3, -1, -1)
    rgba = torch.cat([rgb, torch.full_like(gray, 255)], dim=1)
    want = extractor(gray)
    assert torch.allclose(extractor(rgb), want, atol=1e-6)
    assert torch.allclose(extractor(rgba), want, atol=1e-6)


def test_28px_inputs_are_padded_like_the_dataset(extractor, test_images):
    padded = F.pad(test_images[:32], (2, 2, 2, 2), value=0)
    assert torch.equal(extractor(test_images[:32]), extractor(padded))
    from_dataset = ((load_mnist("test").images[:32] + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(from_dataset, padded)


@pytest.mark.parametrize("size", [64, 45])
def test_other_sizes_are_resized_like_pil_bilinear(extractor, test_images, size):
    """Other sizes: antialiased bilinear to 32x32, checked against PIL's BILINEAR resize of the
    float image (mode "F", no uint8 rounding); tolerance 1e-5 on [-1, 1] inputs (measured 2e-7)
    and 1e-5 on the features."""
    from PIL import Image

    big = F.interpolate(test_images[:8].float(), size=size, mode="bilinear").round().to(torch.uint8)
    pil = [np.asarray(Image.fromarray(image[0].numpy().astype(np.float32), mode="F").resize((32, 32), Image.BILINEAR))
           for image in big]
    expected_input = torch.from_numpy(np.stack(pil))[:, None] / 127.5 - 1
    torch.testing.assert_close(to_classifier_input(big), expected_input, rtol=0, atol=1e-5)
    with torch.no_grad():
        expected = extractor.classifier.features(expected_input)
    torch.testing.assert_close(extractor(big), expected, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_rejected(extractor, test_images):
    with pytest.raises(TypeError, match="uint8"):
        extractor(test_images.float())
    with pytest.raises(ValueError, match="C in 1..4"):
        extractor(test_images[:, 0])


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MnistClassifier(widths=(8, 16), convs_per_stage=1).eval()
    model.save_pretrained(tmp_path / "clf")
    assert (tmp_path / "clf" / "diffusion_pytorch_model.safetensors").exists()
    loaded = build_mnist_feature_extractor(weights=str(tmp_path / "clf"))
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    assert loaded.feature_dim == 16
    assert torch.allclose(loaded(x), MnistFeatureExtractor(model)(x))


def test_missing_weights_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not found"):
        build_mnist_feature_extractor(weights=str(tmp_path / "nope"))
    monkeypatch.setenv("FEWSTEP_ASSETS", str(tmp_path))
    assert assets_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="train_mnist_classifier.py"):
        default_weights()


@pytest.mark.parametrize("split, n", [("all", 5000), ("train", 4500), ("test", 500)])
def test_reference_stats_files(split, n):
    stats = np.load(assets_dir() / "mnist_stats" / f"mnist_{split}.npz")
    assert stats["mu"].shape == (128,) and stats["sigma"].shape == (128, 128)
    assert stats["mu"].dtype == np.float64 and stats["sigma"].dtype == np.float64
    assert str(stats["extractor"]) == "mnist" and str(stats["protocol"]) == PROTOCOL
    assert int(stats["n"]) == n
    assert np.allclose(stats["sigma"], stats["sigma"].T)
    loaded = load_stats(
        assets_dir() / "mnist_stats" / f"mnist_{split}.npz"
    )
    assert (loaded.extractor, loaded.n, loaded.feature_dim) == ("mnist", n, 128)


def test_test_split_stats_match_recomputed_features(extractor, test_images):
    feats = extractor(test_images).double().numpy()
    stats = np.load(assets_dir() / "mnist_stats" / "mnist_test.npz")
    assert np.allclose(stats["mu"], feats.mean(0), atol=1e-5)
    assert np.allclose(stats["sigma"], np.cov(feats, rowvar=False), atol=1e-5)


def test_registered_as_mnist_feature_extractor(test_images):
    extractor = get_feature_extractor("mnist")
    assert extractor.name == "mnist" and extractor.feature_dim == 128
    assert "mnist" in available_feature_extractors()
    assert torch.equal(extractor(test_images[:8]), build_mnist_feature_extractor()(test_images[:8]))
