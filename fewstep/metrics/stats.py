"""Feature statistics: a streaming float64 mean/covariance accumulator and `.npz` files.

Files hold `mu` (D,) float64 and `sigma` (D, D) float64 — the keys pytorch-fid and EDM read —
plus metadata `extractor` (str), `protocol` (str) and `n` (int). Files written by pytorch-fid
(only `mu`, `sigma`) load with the metadata marked unknown.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..io import write_atomic

UNKNOWN = "unknown"


@dataclass
class Stats:
    """Gaussian fit of a feature set: mu (D,), sigma (D, D) float64, with provenance."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int = 0
    extractor: str = UNKNOWN
    protocol: str = UNKNOWN

    @property
    def feature_dim(self) -> int:
        return int(self.mu.shape[0])


class StatsAccumulator:
    """Streaming float64 mean and scatter matrix, O(D^2) memory (Chan, Golub & LeVeque 1979).

    Each batch's mean and centred scatter are merged with the pairwise update
    `M = Ma + Mb + (mb - ma)(mb - ma)^T na nb / n`, which stays accurate where raw sums of
    outer products would cancel; accumulators from several processes merge the same way.
    """

    def __init__(self, feature_dim: int | None = None, device: str | torch.device = "cpu") -> None:
        self.n = 0
        self.device = torch.device(device)
        self.mean: Tensor | None = None
        self.scatter: Tensor | None = None
        if feature_dim:
            self._allocate(feature_dim)

    def _allocate(self, feature_dim: int) -> None:
        self.mean = torch.zeros(feature_dim, dtype=torch.float64, device=self.device)
        self.scatter = torch.zeros(feature_dim, feature_dim, dtype=torch.float64, device=self.device)

    @property
    def feature_dim(self) -> int:
        return 0 if self.mean is None else int(self.mean.shape[0])

    def merge(self, n: int, mean: Tensor, scatter: Tensor) -> None:
        """Merge a group of n rows with mean (D,) and centred scatter (D, D) into this one."""
        if n == 0:
            return
        if self.mean is None:
            self._allocate(mean.shape[0])
        if mean.shape[0] != self.feature_dim:
            raise ValueError(f"feature dimension changed from {self.feature_dim} to {mean.shape[0]}")
        mean, scatter = mean.to(self.scatter), scatter.to(self.scatter)
        total = self.n + n
        delta = mean - self.mean
        self.scatter += scatter + torch.outer(delta, delta) * (self.n * n / total)
        self.mean += delta * (n / total)
        self.n = total

    def update(self, features: Tensor) -> None:
        """Add a batch of features (N, D); rejects NaN / inf rows."""
        if features.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise ValueError("the feature extractor returned NaN or infinite features")
        x = features.to(self.device, torch.float64)
        mean = x.mean(0)
        centred = x - mean
        self.merge(x.shape[0], mean, centred.T @ centred)

    def update_from(self, other: "StatsAccumulator") -> None:
        """Merge another accumulator (e.g. another process's) into this one."""
        if other.mean is not None:
            self.merge(other.n, other.mean, other.scatter)

    def compute(self, extractor: str = UNKNOWN, protocol: str = UNKNOWN) -> Stats:
        """The unbiased covariance `scatter / (n - 1)` and mean as a `Stats` (needs n >= 2)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 images for a covariance, got {self.n}")
        return Stats(
            mu=self.mean.cpu().numpy().copy(),
            sigma=(self.scatter / (self.n - 1)).cpu().numpy(),
            n=self.n,
            extractor=extractor,
            protocol=protocol,
        )


def stats_from_features(features: Tensor | np.ndarray, extractor: str = UNKNOWN, protocol: str = UNKNOWN) -> Stats:
    """`Stats` of a feature matrix (N, D) in one go."""
    accumulator = StatsAccumulator()
    accumulator.update(torch.as_tensor(features))
    return accumulator.compute(extractor, protocol)


def save_stats(path: str | os.PathLike, stats: Stats) -> Path:
    """Write `stats` to `path` (.npz) atomically (`fewstep.io.write_atomic`)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"statistics files end in .npz (numpy appends it otherwise): {str(path)!r}")
    def write(tmp: str) -> None:
        with open(tmp, "wb") as file:
            np.savez(
                file,
                mu=np.asarray(stats.mu, dtype=np.float64),
                sigma=np.asarray(stats.sigma, dtype=np.float64),
                n=np.int64(stats.n),
                extractor=np.str_(stats.extractor),
                protocol=np.str_(stats.protocol),
            )

    write_atomic(path, write)
    return path


def npz_keys(path: str | os.PathLike) -> list[str]:
    """Array names in an .npz file, read from its zip directory without loading any array."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [name[:-4] if name.endswith(".npy") else name for name in archive.namelist()]
    except zipfile.BadZipFile as error:
        raise ValueError(f"{str(path)!r} is not a valid .npz file: {error}") from error


def _read_array(data: "np.lib.npyio.NpzFile", key: str, path: Path, expected: str) -> np.ndarray:
    """`data[key]`, with errors (object arrays, unreadable members) that name the file and the key."""
    try:
        return data[key]
    except ValueError as error:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        if "allow_pickle" in str(error):
            raise ValueError(
                f"statistics file {str(path)!r}: {key!r} is an array of Python objects, which is not "
                f"loaded (it would need pickle); expected {expected}. Save plain numeric arrays "
                "(np.savez(path, mu=mu.astype(np.float64), sigma=sigma.astype(np.float64))) or "
                "recompute it with `fewstep fid stats INPUT --out FILE.npz`"
            ) from error
        raise ValueError(f"statistics file {str(path)!r}: cannot read {key!r}: {error}") from error
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"statistics file {str(path)!r}: cannot read {key!r} (damaged file?): {error}") from error


def _as_float64(array: np.ndarray, key: str, path: Path, expected: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"statistics file {str(path)!r}: {key!r} has dtype {array.dtype}; expected {expected}"
        )
    return np.asarray(array, dtype=np.float64)


def load_stats(path: str | os.PathLike) -> Stats:
    """Read `mu`, `sigma` (+ metadata if present) from an .npz (ours, pytorch-fid's or EDM's).

    Checks that `sigma` is a covariance (symmetric, PSD up to round-off; see
    `fewstep.metrics.frechet.check_covariance`) and returns it exactly symmetrised. Every error
    names the file.
    """
    from fewstep.metrics.frechet import check_covariance

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"statistics file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"statistics file {str(path)!r} is not a file; give an .npz with 'mu' and 'sigma'")
    mu_expected, sigma_expected = "float mu of shape (d,)", "float sigma of shape (d, d)"
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(
                f"{str(path)!r} holds a single array (.npy), not an .npz archive with 'mu' and 'sigma'; "
                "make one with `fewstep fid stats FOLDER --out FILE.npz`"
            )
        with data:
            if "mu" not in data or "sigma" not in data:
                raise ValueError(
                    f"{str(path)!r} has no 'mu' and 'sigma' arrays (keys: {', '.join(data.files)}); "
                    "make one with `fewstep fid stats FOLDER --out FILE.npz`"
                )
            mu = _as_float64(_read_array(data, "mu", path, mu_expected), "mu", path, mu_expected)
            sigma = _as_float64(_read_array(data, "sigma", path, sigma_expected), "sigma", path, sigma_expected)
            meta = {key: _read_array(data, key, path, "a scalar") for key in ("n", "extractor", "protocol")
                    if key in data}
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"cannot read statistics file {str(path)!r} (not an .npz, or damaged): {error}") from error
    except ValueError as error:
        if str(path) in str(error):
            raise
        raise ValueError(f"cannot read statistics file {str(path)!r} (not an .npz, or damaged): {error}") from error
    try:
        n = int(meta["n"]) if "n" in meta else 0
        extractor = str(meta["extractor"].item()) if "extractor" in meta else UNKNOWN
        protocol = str(meta["protocol"].item()) if "protocol" in meta else UNKNOWN
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"statistics file {str(path)!r}: metadata 'n', 'extractor', 'protocol' must be one integer and two "
            f"strings ({error}); remove them or recompute the file with `fewstep fid stats`"
        ) from error
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{str(path)!r}: mu {mu.shape} and sigma {sigma.shape} do not describe one Gaussian; expected "
            "mu of shape (d,) and sigma of shape (d, d)"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{str(path)!r} contains NaN or infinite statistics; recompute it")
    sigma = check_covariance(sigma, name=f"statistics file {str(path)!r}: sigma").numpy()
    return Stats(mu=mu, sigma=sigma, n=n, extractor=extractor, protocol=protocol)
