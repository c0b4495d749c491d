"""`get_dataset(name, split=..., **kw)`: one entry point for every dataset fewstep knows."""

from __future__ import annotations

from typing import Any, Callable

from torch.utils.data import Dataset

from fewstep.data import embedded, folders, mixtures, sequences


def _mixture(name: str) -> Callable[..., Dataset]:
    def build(split: str = "train", **kw: Any) -> Dataset:
        return mixtures.GaussianMixtureDataset(name, split=split, **kw)

    return build


def _folder(split: str = "all", **kw: Any) -> Dataset:
    if split != "all":
        raise ValueError("image folders have no built-in split; use split='all'")
    if "path" not in kw:
        raise TypeError("get_dataset('folder', path=FOLDER) needs path=")
    return folders.ImageFolderDataset(kw.pop("path"), **kw)


def _hf(split: str | None = None, **kw: Any) -> Dataset:
    if "path" not in kw:
        raise TypeError("get_dataset('hf', path=FOLDER) needs path= (a save_to_disk or image folder)")
    return folders.HFImageDataset(kw.pop("path"), split=split, **kw)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "mnist": embedded.load_mnist,
    "digits": embedded.load_digits,
    "photos": embedded.load_photo_crops,
    **{name: _mixture(name) for name in mixtures.MIXTURES},
    "text": sequences.TextSequenceDataset,
    "markov": sequences.MarkovSequenceDataset,
    "folder": _folder,
    "hf": _hf,
}


def list_datasets() -> list[str]:
    """Names accepted by `get_dataset`."""
    return list(DATASETS)


def get_dataset(name: str, split: str | None = "train", **kw: Any) -> Dataset:
    """Dataset `name` ("mnist", "digits", "photos", "8gaussians", "moons", "text", "markov", "folder", "hf").

    Embedded sets take split="train" | "test" | "all"; "folder" needs `path=` (split="all" or
    None); "hf" needs `path=` and takes the Hugging Face split name (None = the only / "train").
    Extra keywords go to the loader (e.g. `resolution=`, `channels=`, `n=`, `seq_len=` for text and markov).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "folder" and split in (None, "train"):
        split = "all"
    if name != "hf" and split is None:
        split = "all"
    return DATASETS[name](split=split, **kw)
