"""In-memory image datasets and the deterministic stratified split shared by the embedded sets."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

Split = Literal["train", "test", "all"]
SPLITS: tuple[str, ...] = ("train", "test", "all")


class TensorImageDataset(Dataset):
    """Images already in memory: item i is `(images[i] [C, H, W] float in [-1, 1], int label)`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
        if images.ndim != 4 or labels.shape != (images.shape[0],):
            raise ValueError(
                f"expected images [N, C, H, W] and labels [N], got {tuple(images.shape)} and "
                f"{tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.long()
        self.classes = list(classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def check_split(split: str) -> None:
    """Raise ValueError unless `split` is "train", "test" or "all"."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def stratified_split(
    labels: np.ndarray, held_out_per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split holding out `held_out_per_class` items of every class: (train_idx, test_idx), sorted."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) <= held_out_per_class:
            raise ValueError(
                f"class {c} has {len(members)} items, cannot hold out {held_out_per_class}"
            )
        test.append(rng.choice(members, size=held_out_per_class, replace=False))
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def select_split(
    images: torch.Tensor,
    labels: np.ndarray,
    classes: list[str],
    split: str,
    held_out_per_class: int,
    seed: int,
) -> TensorImageDataset:
    """Build the `split` part of a labelled image set using `stratified_split`."""
    check_split(split)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    if split == "all":
        return TensorImageDataset(images, labels_t, classes)
    train_idx, test_idx = stratified_split(labels, held_out_per_class, seed)
    idx = torch.as_tensor(train_idx if split == "train" else test_idx)
    return TensorImageDataset(images[idx], labels_t[idx], classes)


def uint8_to_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Map uint8-range values [0, 255] to float32 in [-1, 1]."""
    return torch.as_tensor(np.asarray(images), dtype=torch.float32) / 127.5 - 1.0
