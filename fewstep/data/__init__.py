"""Embedded datasets (no downloads) and user data loaders.

Every dataset yields `(x, label)`: images are float32 [C, H, W] in [-1, 1]
(mnist [1, 32, 32], digits [1, 8, 8], photos [3, 32, 32], folders / hf [channels, res, res]);
mixtures yield points float32 [2]. See docs/data.md.
"""

from fewstep.data.base import TensorImageDataset, stratified_split
from fewstep.data.embedded import load_digits, load_mnist, load_photo_crops
from fewstep.data.folders import HFImageDataset, ImageFolderDataset
from fewstep.data.mixtures import (
    GaussianMixtureDataset,
    component_labels,
    mixture_parameters,
    sample_mixture,
)
from fewstep.data.registry import dataset_options, get_dataset, list_datasets

__all__ = [
    "GaussianMixtureDataset",
    "HFImageDataset",
    "ImageFolderDataset",
    "TensorImageDataset",
    "component_labels",
    "dataset_options",
    "get_dataset",
    "list_datasets",
    "load_digits",
    "load_mnist",
    "load_photo_crops",
    "mixture_parameters",
    "sample_mixture",
    "stratified_split",
]
