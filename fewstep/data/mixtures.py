"""Class-labelled 2-D Gaussian mixtures: isotropic components with known means, stds and weights.

Their exact denoiser E[x0 | x_t] is closed-form; it lives in the sampling engine
(`fewstep.samplers.mixture.GaussianMixture(**mixture_parameters(name))`), so this module only
defines the parameters and draws labelled samples with plain torch.

- "8gaussians": 8 equal-weight components on a circle of radius 1 (std 0.1); class = component.
- "moons": two interleaved half-circle arcs of 8 components each (std 0.08); class = arc (0 / 1).
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from fewstep.data.base import check_split

MIXTURES: tuple[str, ...] = ("8gaussians", "moons")


def _check_name(name: str) -> None:
    if name not in MIXTURES:
        raise ValueError(f"unknown mixture {name!r}; choose one of {', '.join(MIXTURES)}")


def _eight_gaussians() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(means [8, 2], stds [8], component labels [8])."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = torch.stack([angles.cos(), angles.sin()], dim=1)
    return means, torch.full((8,), 0.1, dtype=torch.float64), torch.arange(8)


def _moons(per_arc: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(means [16, 2], stds [16], component labels [16]): sklearn-style moons, centred on 0."""
    a = torch.linspace(0, math.pi, per_arc, dtype=torch.float64)
    upper = torch.stack([a.cos(), a.sin()], dim=1)
    lower = torch.stack([1 - a.cos(), 0.5 - a.sin()], dim=1)
    means = torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    labels = torch.cat([torch.zeros(per_arc), torch.ones(per_arc)]).long()
    return means, torch.full((2 * per_arc,), 0.08, dtype=torch.float64), labels


def _components(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_name(name)
    return _eight_gaussians() if name == "8gaussians" else _moons()


def mixture_parameters(name: str) -> dict[str, torch.Tensor]:
    """Float64 parameters of mixture `name`: means [K, 2], stds [K] (isotropic), weights [K] (sum 1)."""
    means, stds, _ = _components(name)
    k = means.shape[0]
    return {"means": means, "stds": stds, "weights": torch.full((k,), 1.0 / k, dtype=torch.float64)}


def component_labels(name: str) -> torch.Tensor:
    """Class label of each component of mixture `name`: long [K]."""
    return _components(name)[2]


def mixture_classes(name: str) -> list[str]:
    """Class names of mixture `name` (index = label)."""
    n = int(component_labels(name).max()) + 1
    return [str(c) for c in range(n)]


def sample_mixture(
    name: str, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw n samples: (x float32 [n, 2], class labels long [n]); component by weight, then its Gaussian."""
    p = mixture_parameters(name)
    comp = torch.multinomial(p["weights"], n, replacement=True, generator=generator)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    x = p["means"][comp] + p["stds"][comp, None] * noise
    return x.float(), component_labels(name)[comp]


class GaussianMixtureDataset(Dataset):
    """`n` fixed samples of a named mixture: items `(x float32 [2], label int)`.

    Splits draw from independent seeds (train and all: `seed`, test: `seed + 1`), so the
    test samples are independent of the training ones.
    """

    def __init__(self, name: str, n: int = 10_000, split: str = "train", seed: int = 0) -> None:
        check_split(split)
        generator = torch.Generator().manual_seed(seed + (1 if split == "test" else 0))
        self.name = name
        self.x, self.labels = sample_mixture(name, n, generator)
        self.classes = mixture_classes(name)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.labels[i])
