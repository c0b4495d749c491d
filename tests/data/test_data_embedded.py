"""Embedded datasets: shapes, ranges, labels, and the seeded stratified held-out splits."""

import numpy as np
import pytest
import torch

from fewstep.data import get_dataset, list_datasets, load_digits, load_mnist, load_photo_crops
from fewstep.data.embedded import mnist_arrays, mnist_split_indices


def test_mnist_shapes_range_and_padding():
    ds = load_mnist("all")
    assert len(ds) == 5000 and ds.images.shape == (5000, 1, 32, 32)
    assert ds.images.dtype == torch.float32
    assert ds.images.min() == -1.0 and ds.images.max() == 1.0
    # 2-px border is the padded background (-1); the 28x28 centre equals the raw pixels.
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (ds.images[:, 0, border] == -1).all()
    raw, labels = mnist_arrays()
    torch.testing.assert_close(ds.images[:, 0, 2:30, 2:30], torch.from_numpy(raw).float() / 127.5 - 1, rtol=0, atol=1e-6)
    x, y = ds[7]
    assert x.shape == (1, 32, 32) and y == labels[7] and isinstance(y, int)
    assert ds.classes == [str(d) for d in range(10)]


def test_mnist_split_sizes_disjoint_balanced_deterministic():
    train, test = load_mnist("train"), load_mnist("test")
    assert (len(train), len(test)) == (4500, 500)
    assert torch.bincount(test.labels, minlength=10).tolist() == [50] * 10
    assert torch.bincount(train.labels, minlength=10).tolist() == [450] * 10
    tr, te = mnist_split_indices("train"), mnist_split_indices("test")
    assert len(np.intersect1d(tr, te)) == 0 and len(np.union1d(tr, te)) == 5000
    assert np.array_equal(te, mnist_split_indices("test"))  # same split every call
    assert torch.equal(test.images, load_mnist("all").images[torch.from_numpy(te)])


def test_digits_shapes_and_split():
    ds = load_digits("all")
    assert ds.images.shape == (1797, 1, 8, 8)
    assert ds.images.min() == -1.0 and ds.images.max() == 1.0
    train, test = load_digits("train"), load_digits("test")
    assert (len(train), len(test)) == (1597, 200)
    assert torch.bincount(test.labels, minlength=10).tolist() == [20] * 10


def test_photo_crops_are_rgb_32_with_photo_labels():
    ds = load_photo_crops("all")
    assert ds.images.shape[1:] == (3, 32, 32)
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0
    assert "astronaut" in ds.classes and "china" in ds.classes
    assert set(ds.labels.tolist()) == set(range(len(ds.classes)))
    test = load_photo_crops("test")
    assert torch.bincount(test.labels).tolist() == [2] * len(ds.classes)
    assert len(load_photo_crops("train")) + len(test) == len(ds)
    # crops are real image content, not constant padding
    assert ds.images.flatten(1).std(dim=1).min() > 0.01


def test_get_dataset_dispatch_and_errors():
    assert len(get_dataset("mnist", split="test")) == 500
    assert get_dataset("digits", split="all").images.shape == (1797, 1, 8, 8)
    assert {"mnist", "digits", "photos", "8gaussians", "moons", "folder", "hf"} <= set(list_datasets())
    with pytest.raises(ValueError, match="choose one of mnist"):
        get_dataset("cifar10")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        get_dataset("mnist", split="val")
    with pytest.raises(ValueError, match="path="):
        get_dataset("folder")
