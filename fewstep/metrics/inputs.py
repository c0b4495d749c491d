"""What `fewstep fid` can score: image folders, audio folders, ADM-style .npz image batches,
.npz statistics, and shipped reference statistics by name (`music:test`, `mnist:all`, ...).

Images are read as uint8 (C, H, W) with their own channel count where the extractors take it
(L -> 1, RGB -> 3, RGBA -> 4); the extractor converts per its protocol (Inception: gray
replicated, alpha dropped, which is what `PIL.Image.convert("RGB")` does in pytorch-fid and
torch-fidelity). Any other PIL mode (P, LA, CMYK, I;16, ...) is converted with
`convert("RGB")` here. Every conversion is counted and reported.

Audio clips (.wav, .flac, .ogg) are read as float32 (1, T) waveforms at the extractor's sample rate
(never resampled: another rate is an error), mono (stereo is an error), and cropped to their
first `clip_samples` samples or zero-padded at the end to that length (each crop / pad is
counted and reported). A silent, non-finite or undecodable file is an error naming the file.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from fewstep.metrics.stats import npz_keys

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
#: Shipped reference statistics by name: `NAME:SPLIT` is `<assets>/NAME_stats/NAME_SPLIT.npz`.
REFERENCE_PATTERN = re.compile(r"^([a-z][a-z0-9_]*):([a-z0-9_]+)$")
_NATIVE_MODES = {"L": "grayscale (1 channel, replicated to RGB by the extractor)", "RGB": None,
                 "RGBA": "RGBA (4 channels, alpha dropped by the extractor)"}


@dataclass
class Item:
    """One image or clip: global index, uint8 (C, H, W) image or float32 (1, T) waveform (None if
    unreadable), source name, notes."""

    index: int
    image: Tensor | None
    name: str
    conversion: str | None = None
    error: str | None = None


@dataclass
class InputReport:
    """What was read from one input: counts, skipped files, conversions and image sizes."""

    path: str
    kind: str
    n: int = 0
    skipped: list[str] = field(default_factory=list)
    conversions: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)


def available_references() -> list[str]:
    """Names of the shipped reference statistics (`music:test`, `mnist:all`, ...) under the assets folder."""
    from fewstep.io import assets_dir

    names = []
    for path in sorted(assets_dir().glob("*_stats/*.npz")):
        prefix = path.parent.name[: -len("_stats")]
        if path.stem.startswith(prefix + "_"):
            names.append(f"{prefix}:{path.stem[len(prefix) + 1:]}")
    return names


def resolve_input(path: str) -> str:
    """An existing path unchanged; a reference name `NAME:SPLIT` -> its shipped statistics file."""
    from fewstep.io import ASSETS_ENV, assets_dir

    match = REFERENCE_PATTERN.match(str(path))
    if Path(path).exists() or match is None:
        return path
    name, split = match.groups()
    stats = assets_dir() / f"{name}_stats" / f"{name}_{split}.npz"
    if not stats.is_file():
        raise FileNotFoundError(
            f"input {path!r} is neither a file or folder nor a shipped reference ({stats} does not exist); "
            f"references available: {', '.join(available_references()) or 'none'} (assets folder "
            f"{assets_dir()}, set ${ASSETS_ENV} to use another)"
        )
    return str(stats)


def input_kind(path: str | os.PathLike) -> str:
    """'folder' (images), 'audio' (a folder of .wav / .flac / .ogg clips), 'images' (.npz with arr_0) or
    'stats' (.npz with mu and sigma)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {str(path)!r} does not exist")
    if path.is_dir():
        return _folder_kind(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"input {str(path)!r} must be a folder (images or .wav/.flac/.ogg audio) or an .npz file "
                         "(statistics or arr_0 images)")
    keys = npz_keys(path)
    if "mu" in keys and "sigma" in keys:
        return "stats"
    if "arr_0" in keys:
        return "images"
    raise ValueError(
        f"{str(path)!r} has neither 'mu'/'sigma' (statistics) nor 'arr_0' (uint8 NHWC image batch); "
        f"keys found: {', '.join(keys) or 'none'}"
    )


def _folder_kind(folder: Path) -> str:
    """'audio' for a folder with audio clips (images beside them, e.g. `fewstep sample`'s spectrograms.png,
    are ignored with a warning), else 'folder' (images)."""
    files = [p for p in folder.rglob("*") if p.suffix]
    audio = [p for p in files if p.suffix.lower() in AUDIO_EXTENSIONS]
    if not audio:
        return "folder"
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if images:
        import warnings

        warnings.warn(f"{str(folder)!r}: scoring its {len(audio)} audio file(s); ignoring {len(images)} image file(s) "
                      f"beside them (e.g. {images[0].name})", stacklevel=2)
    return "audio"


def list_audio(folder: str | os.PathLike) -> list[Path]:
    """Audio files (.wav, .flac, .ogg) under `folder`, recursively, in sorted path order; an error if none."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"no audio files ({', '.join(e[1:] for e in AUDIO_EXTENSIONS)}) found under {str(folder)!r}")
    return files


def read_clip(path: Path, sample_rate: int, clip_samples: int) -> tuple[Tensor, str | None]:
    """Decode one mono audio file to float32 (1, clip_samples), plus a crop / pad note.

    Refused (ValueError with the fix): another sample rate, more than one channel, silence
    (`read_audio` refuses undecodable, empty and non-finite files). Clips are cropped to their
    first `clip_samples` samples, shorter ones zero-padded at the end.
    """
    from fewstep.audio import read_audio
    from fewstep.data.music import SILENCE

    audio, rate = read_audio(path)
    audio = np.asarray(audio, dtype=np.float32)
    if rate != sample_rate:
        raise ValueError(
            f"it is sampled at {rate} Hz, but the features take {sample_rate} Hz clips; resample it first, e.g. "
            f"fewstep.audio.read_audio(path, sample_rate={sample_rate}, resample=True) then write_audio"
        )
    if audio.ndim != 2 or audio.shape[0] != 1:
        channels = audio.shape[0] if audio.ndim == 2 else audio.ndim
        raise ValueError(
            f"it has {channels} channels, but the features take mono clips; downmix it first, e.g. "
            "fewstep.audio.read_audio(path, mono=True) then write_audio"
        )
    if not np.abs(audio).max() >= SILENCE:  # read_audio has refused empty and non-finite files
        raise ValueError(f"it is silent (every |sample| < {SILENCE:g}), so it has no loudness-normalised features")
    length = audio.shape[1]
    note = None
    if length > clip_samples:
        audio, note = audio[:, :clip_samples], f"cropped to the first {clip_samples / sample_rate:g} s"
    elif length < clip_samples:
        audio = np.pad(audio, ((0, 0), (0, clip_samples - length)))
        note = f"zero-padded at the end to {clip_samples / sample_rate:g} s"
    return torch.from_numpy(np.ascontiguousarray(audio)), note


class AudioFileDataset(torch.utils.data.Dataset):
    """A (sharded) list of audio files -> `Item`s of float32 (1, T); decoding errors are captured."""

    def __init__(self, files: list[Path], indices: list[int], sample_rate: int, clip_samples: int) -> None:
        self.files, self.indices = files, indices
        self.sample_rate, self.clip_samples = sample_rate, clip_samples

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Item:
        index = self.indices[i]
        path = self.files[index]
        try:
            clip, note = read_clip(path, self.sample_rate, self.clip_samples)
        except Exception as error:  # soundfile and the checks above raise several types
            return Item(index, None, str(path), error=str(error) if isinstance(error, ValueError)
                        else f"{type(error).__name__}: {error}")
        return Item(index, clip, str(path), conversion=note)


def iterate_audio_folder(
    folder: str | os.PathLike, batch_size: int, num_workers: int, sample_rate: int, clip_samples: int,
    rank: int = 0, world: int = 1,
) -> tuple[int, Iterator[list[Item]]]:
    """(number of clips, batches of `Item`s); rank r reads files r, r + world, ..."""
    files = list_audio(folder)
    dataset = AudioFileDataset(files, list(range(rank, len(files), world)), sample_rate, clip_samples)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate, shuffle=False
    )
    return len(files), iter(loader)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder`, recursively, in sorted path order; an error if there are none."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(
            f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found under {str(folder)!r}"
        )
    return files


def read_image(path: Path) -> tuple[Tensor, str | None]:
    """Decode one image file to uint8 (C, H, W) with C in {1, 3, 4}, plus a conversion note."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        mode = image.mode
        if mode in _NATIVE_MODES:
            note = _NATIVE_MODES[mode]
        else:
            image = image.convert("RGB")
            note = f"{mode} converted to RGB by PIL"
        array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1), note


class FolderDataset(torch.utils.data.Dataset):
    """A (sharded) list of image files -> `Item`s; decoding errors are captured, not raised."""

    def __init__(self, files: list[Path], indices: list[int], root: Path) -> None:
        self.files, self.indices, self.root = files, indices, root

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Item:
        index = self.indices[i]
        path = self.files[index]
        name = str(path)
        try:
            image, note = read_image(path)
        except Exception as error:  # PIL raises many types for corrupt files
            return Item(index, None, name, error=f"{type(error).__name__}: {error}")
        return Item(index, image, name, conversion=note)


def _collate(items: list[Item]) -> list[Item]:
    return items


def iterate_folder(
    folder: str | os.PathLike, batch_size: int, num_workers: int, rank: int = 0, world: int = 1
) -> tuple[int, Iterator[list[Item]]]:
    """(number of images on this rank, batches of `Item`s); rank r reads files r, r + world, ..."""
    files = list_images(folder)
    indices = list(range(rank, len(files), world))
    dataset = FolderDataset(files, indices, Path(folder))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate, shuffle=False
    )
    return len(files), iter(loader)


def _open_npz_array(path: Path, key: str = "arr_0") -> tuple[zipfile.ZipFile, object, tuple, np.dtype, bool]:
    """Open one array of an .npz for streaming: (archive, file object at data, shape, dtype, fortran).

    Every error names the file and says what is expected (ValueError).
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{str(path)!r} is not a valid .npz file: {error}") from error
    try:
        stream = archive.open(f"{key}.npy")
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran, dtype = read_header[version](stream)  # header only, no data read
    except KeyError as error:
        archive.close()
        raise ValueError(f"{str(path)!r} has no {key!r} array (keys: {', '.join(npz_keys(path))})") from error
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        archive.close()
        raise ValueError(
            f"{str(path)!r}: cannot read the header of {key} ({error}); expected a uint8 NHWC image array "
            "saved with np.savez"
        ) from error
    if dtype.hasobject:
        archive.close()
        raise ValueError(
            f"{str(path)!r}: {key} holds Python objects (it would need pickle to load, which is refused); "
            "expected a uint8 NHWC image array (np.savez(path, arr_0=images.astype(np.uint8)))"
        )
    return archive, stream, shape, dtype, fortran


def iterate_npz_images(
    path: str | os.PathLike, batch_size: int, rank: int = 0, world: int = 1
) -> tuple[int, Iterator[list[Item]]]:
    """(number of images, batches) from an ADM-style .npz whose arr_0 is uint8 (N, H, W, C).

    The array is streamed from the zip member batch by batch (memory O(batch)); rank r reads
    the contiguous block of rows [r N / world, (r + 1) N / world).
    """
    path = Path(path)
    archive, stream, shape, dtype, fortran = _open_npz_array(path)
    if dtype != np.uint8 or len(shape) != 4 or shape[3] not in (1, 3, 4) or fortran:
        archive.close()
        raise ValueError(
            f"{str(path)!r}: arr_0 must be a C-ordered uint8 array (N, H, W, C) with C in 1, 3, 4 "
            f"(ADM's sample format); got dtype {dtype}, shape {shape}"
        )
    n, row_bytes = shape[0], int(np.prod(shape[1:]))
    note = {1: _NATIVE_MODES["L"], 3: None, 4: _NATIVE_MODES["RGBA"]}[shape[3]]
    start, stop = n * rank // world, n * (rank + 1) // world

    def batches() -> Iterator[list[Item]]:
        try:
            try:
                stream.seek(stream.tell() + start * row_bytes)
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
                raise ValueError(f"{str(path)!r}: cannot read arr_0 (damaged file?): {error}") from error
            for first in range(start, stop, batch_size):
                count = min(batch_size, stop - first)
                try:
                    raw = stream.read(count * row_bytes)
                except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
                    raise ValueError(f"{str(path)!r}: cannot read arr_0 at row {first} (damaged file?): {error}") from error
                if len(raw) != count * row_bytes:
                    raise ValueError(f"{str(path)!r}: arr_0 is truncated at row {first}")
                block = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).reshape(count, *shape[1:]).copy())
                yield [
                    Item(first + j, block[j].permute(2, 0, 1), f"{path.name}[{first + j}]", note)
                    for j in range(count)
                ]
        finally:
            archive.close()

    return n, batches()


def count_images(path: str | os.PathLike, kind: str) -> int:
    """Number of images (or clips) in a folder or .npz batch without decoding any."""
    if kind == "folder":
        return len(list_images(path))
    if kind == "audio":
        return len(list_audio(path))
    archive, _, shape, _, _ = _open_npz_array(Path(path))
    archive.close()
    return int(shape[0])
