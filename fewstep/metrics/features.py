"""Feature extractors for FID / KID / FD: a registry of named networks plus user-given modules.

A `FeatureExtractor` is an `nn.Module` whose `forward(images)` takes uint8 images
(N, C, H, W) with C in {1, 3, 4} and returns float features (N, D); it does its own resize and
normalisation, and carries `name`, `feature_dim` and `protocol` (a one-line description of that
resize/normalisation, written into statistics files and printed with every score).

Names resolve in this order: registered factories, lazily imported built-ins (`inception`,
`mnist`, ...: importing the module registers the name), then `package.module:callable` specs.
Factories are called as `factory(device=..., weights=...)`.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

# name -> module that calls `register_feature_extractor(name, ...)` when imported.
_BUILTINS: dict[str, str] = {
    "inception": "fewstep.metrics.inception",
    "mnist": "fewstep.metrics.mnist",
}
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


@runtime_checkable
class FeatureExtractor(Protocol):
    """uint8 images (N, C, H, W), C in {1, 3, 4} -> float features (N, feature_dim)."""

    name: str
    feature_dim: int
    protocol: str

    def __call__(self, images: Tensor) -> Tensor: ...


def register_feature_extractor(name: str, factory: Callable[..., nn.Module]) -> None:
    """Register `factory(device=..., weights=...) -> FeatureExtractor` under `name`."""
    if not name or ":" in name:
        raise ValueError(f"invalid feature extractor name {name!r} (no ':' allowed)")
    _REGISTRY[name] = factory


def available_feature_extractors() -> list[str]:
    """Names accepted by `get_feature_extractor` (registered plus lazily importable built-ins)."""
    return sorted(set(_REGISTRY) | set(_BUILTINS))


def to_rgb(images: Tensor) -> Tensor:
    """(N, C, H, W) uint8 with C in {1, 3, 4} -> (N, 3, H, W): gray replicated, alpha dropped.

    This is what `PIL.Image.convert("RGB")` does in pytorch-fid and torch-fidelity (no
    compositing of transparent pixels onto a background).
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise ValueError(f"expected images of shape (N, C, H, W) with C in 1, 3, 4; got {tuple(images.shape)}")
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    return images[:, :3]


class ModuleFeatures(nn.Module):
    """Wraps a plain user `nn.Module`: uint8 images are passed to it unchanged, output flattened."""

    def __init__(self, module: nn.Module, name: str | None = None) -> None:
        super().__init__()
        self.module = module
        self.name = name or getattr(module, "name", None) or type(module).__name__
        self.feature_dim = int(getattr(module, "feature_dim", getattr(module, "num_features", 0)) or 0)
        self.protocol = getattr(module, "protocol", None) or (
            f"user module {type(module).__name__}: uint8 (N, C, H, W) images passed unchanged"
        )

    def forward(self, images: Tensor) -> Tensor:
        """(N, C, H, W) uint8 -> (N, D) float."""
        return self.module(images).flatten(1).float()


def _is_feature_extractor(module: object) -> bool:
    return isinstance(module, nn.Module) and all(
        hasattr(module, attr) for attr in ("name", "feature_dim", "protocol")
    )


def _as_extractor(module: nn.Module, device: str | torch.device, name: str | None = None) -> nn.Module:
    extractor = module if _is_feature_extractor(module) else ModuleFeatures(module, name)
    return extractor.to(device).eval().requires_grad_(False)


def _call_factory(factory: Callable[..., object], device: str | torch.device, weights: str | None) -> object:
    """Call `factory` with whichever of `device=` / `weights=` it accepts."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return factory(device=device, weights=weights)
    accepts_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {}
    if accepts_all or "device" in params:
        kwargs["device"] = device
    if accepts_all or "weights" in params:
        kwargs["weights"] = weights
    elif weights is not None:
        raise ValueError(f"--weights was given but {factory!r} takes no `weights` argument")
    return factory(**kwargs)


def _from_spec(spec: str, device: str | torch.device, weights: str | None) -> nn.Module:
    """`package.module:callable` -> the module it returns (a class is instantiated the same way)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import {module_name!r} from feature extractor spec {spec!r}: {error}") from error
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{module_name!r} has no attribute {attr!r} (feature extractor spec {spec!r})")
        target = getattr(target, part)
    result = target if isinstance(target, nn.Module) else _call_factory(target, device, weights)
    if not isinstance(result, nn.Module):
        raise ValueError(f"feature extractor spec {spec!r} returned {type(result).__name__}, not an nn.Module")
    return _as_extractor(result, device, name=spec)


def get_feature_extractor(
    name_or_spec: str | nn.Module, device: str | torch.device = "cpu", weights: str | None = None
) -> nn.Module:
    """A ready `FeatureExtractor` (eval mode, no grad, on `device`) from a name, spec or module."""
    if isinstance(name_or_spec, nn.Module):
        return _as_extractor(name_or_spec, device)
    if ":" in name_or_spec:
        return _from_spec(name_or_spec, device, weights)
    if name_or_spec not in _REGISTRY and name_or_spec in _BUILTINS:
        importlib.import_module(_BUILTINS[name_or_spec])  # registers the name
    if name_or_spec not in _REGISTRY:
        raise KeyError(
            f"unknown feature extractor {name_or_spec!r}; valid names: "
            f"{', '.join(available_feature_extractors())}, or a 'package.module:callable' spec"
        )
    extractor = _call_factory(_REGISTRY[name_or_spec], device, weights)
    return _as_extractor(extractor, device, name=name_or_spec)
