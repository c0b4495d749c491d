"""User image data: folders of image files and Hugging Face datasets (local only).

Both return `(image float32 [channels, resolution, resolution] in [-1, 1], label int)`.
Every image is converted the same way (`load_image`): alpha dropped, palette / grayscale
expanded to RGB, then resized (bicubic, antialiased) so its short side is `resolution` and
centre-cropped to a square; `channels=1` takes the mean of R, G and B. So folders of mixed
sizes and modes (RGB, RGBA, L, P) load into one uniform shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _check_format(resolution: int, channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if int(resolution) != resolution or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution}")


def convert_image(img: Any, resolution: int, channels: int) -> torch.Tensor:
    """PIL image (any size, 8-bit mode) -> float32 [channels, resolution, resolution] in [-1, 1]."""
    from PIL import Image

    if img.mode.startswith("I") or img.mode == "F":
        raise ValueError(f"{img.mode} (16/32-bit) images are not supported; save them as 8-bit")
    img = img.convert("RGB")
    w, h = img.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
    if channels == 1:
        x = x.mean(dim=0, keepdim=True)
    return x / 127.5 - 1.0


def load_image(path: Path, resolution: int, channels: int) -> torch.Tensor:
    """Read and convert one image file; any failure is a ValueError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return convert_image(img, resolution, channels)
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e}; remove or replace the file") from e


def _check_header(path: Path) -> None:
    from PIL import Image

    try:
        with Image.open(path):
            pass
    except (OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e}; remove or replace the file") from e


def find_images(root: Path) -> list[Path]:
    """All image files under `root` (recursive, sorted); FileNotFoundError if none."""
    if not root.exists():
        raise FileNotFoundError(
            f"image folder {root} does not exist; pass a folder of images "
            f"(one sub-folder per class, or images directly inside)"
        )
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder; pass the folder that holds the images")
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}; expected image "
            f"files directly inside it or in one sub-folder per class"
        )
    return files


def _class_of(root: Path, path: Path) -> str | None:
    """First-level sub-folder name of `path` under `root`, or None for files directly in root."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


class ImageFolderDataset(Dataset):
    """Images under `root` (recursive; png/jpg/jpeg/webp/bmp), class = first-level sub-folder.

    Items are `(float32 [channels, resolution, resolution] in [-1, 1], label)`; `classes` holds
    the sorted sub-folder names (index = label). A folder with images directly inside and no
    class sub-folders is one class named after the folder. File headers are checked on
    construction, so unreadable files fail early with their path.
    """

    def __init__(self, root: str | Path, resolution: int = 32, channels: int = 3) -> None:
        _check_format(resolution, channels)
        self.root = Path(root)
        self.resolution, self.channels = int(resolution), int(channels)
        self.files = find_images(self.root)
        names = [_class_of(self.root, p) for p in self.files]
        if all(n is None for n in names):
            self.classes = [self.root.name]
            self.labels = [0] * len(self.files)
        else:
            loose = [p for p, n in zip(self.files, names) if n is None]
            if loose:
                raise ValueError(
                    f"{loose[0]} lies directly in {self.root} while other images are in class "
                    f"sub-folders; move it into a sub-folder (or remove it)"
                )
            self.classes = sorted(set(names))
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = [index[n] for n in names]
        for p in self.files:
            _check_header(p)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return load_image(self.files[i], self.resolution, self.channels), self.labels[i]


def _is_saved_dataset(path: Path) -> bool:
    return any((path / f).exists() for f in ("dataset_dict.json", "dataset_info.json", "state.json"))


def _open_hf(path: Path, split: str | None) -> Any:
    """A `datasets.Dataset` from a `save_to_disk` folder or a local imagefolder."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"Hugging Face datasets need the `datasets` package (`pip install datasets`); "
            f"importing it failed: {e}"
        ) from e
    if not path.exists():
        raise FileNotFoundError(
            f"dataset path {path} does not exist; pass a folder written by "
            f"Dataset.save_to_disk or a local image folder"
        )
    if _is_saved_dataset(path):
        ds = datasets.load_from_disk(str(path))
    else:
        ds = datasets.load_dataset("imagefolder", data_dir=str(path))
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds.keys())
        key = split if split is not None else ("train" if "train" in ds else None)
        if key not in ds:
            raise ValueError(
                f"{path} holds splits {names}; pass split= one of them (got {split!r})"
            )
        ds = ds[key]
    elif split not in (None, "all", "train"):
        raise ValueError(f"{path} holds a single dataset without splits; omit split= (got {split!r})")
    return ds


class HFImageDataset(Dataset):
    """Local Hugging Face image dataset: items `(float32 [channels, res, res] in [-1, 1], label)`.

    `path` is a `save_to_disk` folder (`load_from_disk`) or a plain image folder (loaded with the
    `imagefolder` builder, which labels by sub-folder). Images are converted like
    `ImageFolderDataset`'s. `label_column=None` labels everything 0. `classes` comes from a
    `ClassLabel` feature, else from the sorted distinct label values.
    """

    def __init__(
        self,
        path: str | Path,
        split: str | None = None,
        image_column: str = "image",
        label_column: str | None = "label",
        resolution: int = 32,
        channels: int = 3,
    ) -> None:
        _check_format(resolution, channels)
        self.path = Path(path)
        self.resolution, self.channels = int(resolution), int(channels)
        self.ds = _open_hf(self.path, split)
        self.image_column = image_column
        columns = list(self.ds.column_names)
        for col, arg in ((image_column, "image_column"), (label_column, "label_column")):
            if col is not None and col not in columns:
                hint = " or label_column=None for unlabelled data" if arg == "label_column" else ""
                raise ValueError(
                    f"{self.path} has no column {col!r}; pass {arg}= one of {columns}{hint}"
                )
        self.classes, self.labels = self._labels(label_column)

    def _labels(self, label_column: str | None) -> tuple[list[str], list[int]]:
        if label_column is None:
            return ["0"], [0] * len(self.ds)
        values = self.ds[label_column]
        names = getattr(self.ds.features[label_column], "names", None)
        if names is not None:
            return list(names), [int(v) for v in values]
        classes = sorted(set(values), key=str)
        index = {v: i for i, v in enumerate(classes)}
        return [str(c) for c in classes], [index[v] for v in values]

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        img = self.ds[i][self.image_column]
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img))
        try:
            x = convert_image(img, self.resolution, self.channels)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot convert row {i} of {self.path}: {e}") from e
        return x, self.labels[i]
