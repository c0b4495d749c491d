"""Small file helpers shared by the CLI and the library."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

#: Environment variable naming another assets folder (teachers, MNIST classifier, statistics).
ASSETS_ENV = "FEWSTEP_ASSETS"


def assets_dir() -> Path:
    """The assets folder: `$FEWSTEP_ASSETS` when set, else `assets/` next to the fewstep package."""
    env = os.environ.get(ASSETS_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "assets"


def write_atomic(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call `write(tmp_path)` on a temporary file in the same folder, then rename it onto `path`.

    A crash or an exception leaves no half-written file behind (the temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def check_writable_target(path: str | os.PathLike, what: str, folder: bool = False) -> Path:
    """Raise an OSError naming `what` unless `path` can be written, before any work is done.

    `folder=False`: `path` is a file to write (it must not be a folder); `folder=True`: a folder
    to write into (it must not be a file). Missing folders on the way are fine when the nearest
    existing one is a writable folder; nothing is created or changed here.
    """
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise NotADirectoryError(f"{what} {path} is a file, not a folder; choose a folder")
        if not folder and path.is_dir():
            raise IsADirectoryError(f"{what} {path} is a folder; give a file name inside it")
    existing = next(p for p in (path if folder else path.parent, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {path} cannot be written: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{what} {path} cannot be written: no permission to create files in {existing} (or a read-only "
            "file system); choose a writable folder"
        )
    return path


def check_spec_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """--out of a command writing one file: writable, and not an existing file unless `overwrite`."""
    path = check_writable_target(path, "--out")
    if path.exists() and not overwrite:
        raise FileExistsError(f"--out {path} already exists; pass --overwrite to replace it, or choose another file name")
    return path


def describe_machine() -> str:
    """One line naming the hardware and versions a benchmark ran on (CPU model, cores, torch, GPU)."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {cores} cores, torch {torch.__version__}, {torch.get_num_threads()} torch threads{gpu}"


def save_pretrained_atomically(model: "object", out: str | os.PathLike) -> Path:
    """`model.save_pretrained` (safetensors) into a temp folder next to `out`, then swap it in (no half-written folder)."""
    import shutil

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tmp.chmod(0o755)  # mkdtemp makes it owner-only, and the weights file comes out 0600
        for file in tmp.iterdir():
            file.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
