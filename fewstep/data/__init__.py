"""Embedded datasets (no downloads) and user data loaders.

Every dataset yields `(x, label)`: images are float32 [C, H, W] in [-1, 1]
(mnist [1, 32, 32], digits [1, 8, 8], photos [3, 32, 32], folders / hf [channels, res, res]);
mixtures yield points float32 [2]; music and audio folders yield dicts with "audio" float32
[1, T], "prompt" and "lyrics". See docs/data.md.
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
from fewstep.data.music import (
    INSTRUMENTS,
    KEYS,
    TEMPOS,
    AudioFolderDataset,
    MusicClipLabel,
    MusicDataset,
    random_label,
    synthesize_clip,
)
from fewstep.data.registry import dataset_options, get_dataset, list_datasets

__all__ = [
    "INSTRUMENTS",
    "KEYS",
    "TEMPOS",
    "AudioFolderDataset",
    "GaussianMixtureDataset",
    "HFImageDataset",
    "ImageFolderDataset",
    "MusicClipLabel",
    "MusicDataset",
    "TensorImageDataset",
    "component_labels",
    "dataset_options",
    "get_dataset",
    "list_datasets",
    "load_digits",
    "load_mnist",
    "load_photo_crops",
    "mixture_parameters",
    "random_label",
    "sample_mixture",
    "stratified_split",
    "synthesize_clip",
]
