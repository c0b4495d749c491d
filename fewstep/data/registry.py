"""`get_dataset(name, split=..., **kw)`: one entry point for every dataset fewstep knows.

Keywords are checked against the loader's options before anything is loaded: an unknown option
or a value of the wrong type is a ValueError that lists the dataset's valid options
(`dataset_options(name)`).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch.utils.data import Dataset

from fewstep.data import embedded, folders, mixtures, music, sequences


def _mixture(name: str) -> Callable[..., Dataset]:
    def build(split: str = "train", **kw: Any) -> Dataset:
        return mixtures.GaussianMixtureDataset(name, split=split, **kw)

    return build


def _folder(split: str = "all", **kw: Any) -> Dataset:
    if split != "all":
        raise ValueError("image folders have no built-in split; use split='all'")
    if "path" not in kw:
        raise ValueError("get_dataset('folder', path=FOLDER) needs path= (a folder of images)")
    return folders.ImageFolderDataset(kw.pop("path"), **kw)


def _hf(split: str | None = None, **kw: Any) -> Dataset:
    if "path" not in kw:
        raise ValueError("get_dataset('hf', path=FOLDER) needs path= (a save_to_disk or image folder)")
    return folders.HFImageDataset(kw.pop("path"), split=split, **kw)


def _audio_folder(split: str = "all", **kw: Any) -> Dataset:
    if split != "all":
        raise ValueError("audio folders have no built-in split; use split='all'")
    if "path" not in kw:
        raise ValueError("get_dataset('audio_folder', path=FOLDER) needs path= (a folder of .wav / .flac / .ogg files)")
    return music.AudioFolderDataset(kw.pop("path"), **kw)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "mnist": embedded.load_mnist,
    "digits": embedded.load_digits,
    "photos": embedded.load_photo_crops,
    **{name: _mixture(name) for name in mixtures.MIXTURES},
    "text": sequences.TextSequenceDataset,
    "markov": sequences.MarkovSequenceDataset,
    "music": music.MusicDataset,
    "folder": _folder,
    "hf": _hf,
    "audio_folder": _audio_folder,
}


#: the callable whose keyword parameters are each dataset's options, and the parameters that are not options.
_SIGNATURES: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    **{name: (mixtures.GaussianMixtureDataset, ("self", "name", "split")) for name in mixtures.MIXTURES},
    "folder": (folders.ImageFolderDataset, ("self", "root")),
    "hf": (folders.HFImageDataset, ("self", "path", "split")),
    "audio_folder": (music.AudioFolderDataset, ("self", "path")),
}
#: datasets that read user data from `path=` (not counted among their options).
PATH_DATASETS: tuple[str, ...] = ("folder", "hf", "audio_folder")


def _parameters(name: str) -> dict[str, inspect.Parameter]:
    fn, skip = _SIGNATURES.get(name, (DATASETS[name], ("self",)))
    return {
        p.name: p for p in inspect.signature(fn).parameters.values()
        if p.name not in skip and p.name != "split" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def dataset_options(name: str) -> dict[str, Any]:
    """{option: default} that `get_dataset(name, ...)` accepts besides `split` (and `path` for folder / hf / audio_folder)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return {k: (None if p.default is inspect.Parameter.empty else p.default) for k, p in _parameters(name).items()}


def _describe(name: str) -> str:
    options = dataset_options(name)
    if not options:
        return f"dataset {name!r} takes no options"
    return f"valid options of {name!r}: " + ", ".join(f"{k} (default {v!r})" for k, v in options.items())


def _check_value(name: str, key: str, value: Any, param: inspect.Parameter) -> None:
    """Reject a value whose type cannot be what the option's default (or annotation) says."""
    default = param.default
    if value is None:
        if default is None or "None" in str(param.annotation):
            return
        raise ValueError(f"option {key}=None of dataset {name!r} needs a value; {_describe(name)}")
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ValueError(f"option {key}={value!r} of dataset {name!r} must be of type {type(default).__name__} "
                         f"(its default is {default!r}); {_describe(name)}")


def check_options(name: str, options: dict[str, Any]) -> None:
    """ValueError naming any unknown option (or wrong-typed value) of dataset `name`, listing the valid ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    params = _parameters(name)
    options = {k: v for k, v in options.items() if not (k == "path" and name in PATH_DATASETS)}
    unknown = [k for k in options if k not in params]
    if unknown:
        raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for dataset "
                         f"{name!r}; {_describe(name)}")
    for key, value in options.items():
        _check_value(name, key, value, params[key])


def list_datasets() -> list[str]:
    """Names accepted by `get_dataset`."""
    return list(DATASETS)


def get_dataset(name: str, split: str | None = "train", **kw: Any) -> Dataset:
    """Dataset `name` ("mnist", "digits", "photos", "8gaussians", "moons", "text", "markov", "music", "folder", "hf",
    "audio_folder").

    Embedded sets take split="train" | "test" | "all"; "folder" and "audio_folder" need `path=`
    (split="all" or None); "hf" needs `path=` and takes the Hugging Face split name (None = the
    only / "train"). Extra keywords go to the loader (e.g. `resolution=`, `channels=`, `n=`,
    `seq_len=` for text and markov, `seconds=`, `sample_rate=` for music and audio_folder).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    check_options(name, kw)
    if name in ("folder", "audio_folder") and split in (None, "train"):
        split = "all"
    if name != "hf" and split is None:
        split = "all"
    return DATASETS[name](split=split, **kw)
