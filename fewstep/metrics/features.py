"""Feature extractors for FID / KID / FD: a registry of named networks plus user-given modules.

A `FeatureExtractor` is an `nn.Module` whose `forward(images)` takes uint8 images
(N, C, H, W) with C in {1, 3, 4} and returns float features (N, D); it does its own resize and
normalisation, and carries `name`, `feature_dim` and `protocol` (a one-line description of that
resize/normalisation, written into statistics files and printed with every score).
An audio extractor (`music`) instead takes float32 waveforms (N, 1, T) and says so with
`modality = "audio"` plus its `sample_rate` and `clip_samples`; it is registered with
`modality="audio"` so that `fewstep fid` can refuse images for it (and audio for image
extractors) before loading any weights.

Names resolve in this order: registered factories, lazily imported built-ins (`inception`,
`mnist`, ...: importing the module registers the name), then `package.module:callable` specs.
Factories are called with whichever of `device=` / `weights=` they name (or all, given `**kwargs`).

A `package.module:callable` spec may name (see `_from_spec`):
- an `nn.Module` instance: used as is;
- an `nn.Module` subclass: instantiated, with `device=` / `weights=` only if its own `__init__`
  names them (a subclass with only `forward()` is instantiated with no arguments);
- a feature function `f(images) -> features` (its first parameter is required and is not
  `device` / `weights`): wrapped, called on each uint8 batch;
- a factory (no required parameters, or only `device` / `weights`): called, must return an
  `nn.Module`.
A module or function without `name` / `feature_dim` / `protocol` is wrapped: it gets the uint8
images unchanged and its output is flattened to (N, D) float.
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
    "music": "fewstep.metrics.music",
}
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_MODALITIES: dict[str, str] = {}
MODALITIES = ("image", "audio")


@runtime_checkable
class FeatureExtractor(Protocol):
    """uint8 images (N, C, H, W), C in {1, 3, 4} -> float features (N, feature_dim)."""

    name: str
    feature_dim: int
    protocol: str

    def __call__(self, images: Tensor) -> Tensor: ...


def register_feature_extractor(name: str, factory: Callable[..., nn.Module], modality: str = "image") -> None:
    """Register `factory(device=..., weights=...) -> FeatureExtractor` under `name`; `modality`
    says what it embeds: 'image' (uint8 (N, C, H, W)) or 'audio' (float32 waveforms (N, 1, T))."""
    if not name or ":" in name:
        raise ValueError(f"invalid feature extractor name {name!r} (no ':' allowed)")
    if modality not in MODALITIES:
        raise ValueError(f"feature extractor modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    _REGISTRY[name] = factory
    _MODALITIES[name] = modality


def feature_extractor_modality(name: str) -> str | None:
    """'image' or 'audio' for a registered or built-in name (without building it); None for a spec."""
    if ":" in name:
        return None
    if name not in _REGISTRY and name in _BUILTINS:
        importlib.import_module(_BUILTINS[name])  # registers the name
    return _MODALITIES.get(name)


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
        return _flat_features(self.module(images), self.name)


class FunctionFeatures(nn.Module):
    """Wraps a user feature function `f(images) -> features`: uint8 images passed unchanged."""

    def __init__(self, function: Callable[[Tensor], Tensor], name: str | None = None) -> None:
        super().__init__()
        self.function = function
        self.name = name or getattr(function, "__qualname__", repr(function))
        self.feature_dim = int(getattr(function, "feature_dim", 0) or 0)
        self.protocol = getattr(function, "protocol", None) or (
            f"user function {getattr(function, '__qualname__', repr(function))}: uint8 (N, C, H, W) images "
            "passed unchanged"
        )

    def forward(self, images: Tensor) -> Tensor:
        """(N, C, H, W) uint8 -> (N, D) float."""
        return _flat_features(self.function(images), self.name)


def _flat_features(output: object, name: str) -> Tensor:
    if not isinstance(output, Tensor):
        raise ValueError(
            f"feature extractor {name!r} returned {type(output).__name__}, not a tensor; it must map uint8 "
            "images (N, C, H, W) to features (N, D)"
        )
    return output.flatten(1).float()


def _is_feature_extractor(module: object) -> bool:
    return isinstance(module, nn.Module) and all(
        hasattr(module, attr) for attr in ("name", "feature_dim", "protocol")
    )


def _as_extractor(module: nn.Module, device: str | torch.device, name: str | None = None) -> nn.Module:
    extractor = module if _is_feature_extractor(module) else ModuleFeatures(module, name)
    return extractor.to(device).eval().requires_grad_(False)


def _named_parameters(callable_: Callable[..., object]) -> tuple[set[str], bool, list[str]] | None:
    """(names it takes by keyword, whether it has **kwargs, required positional names) or None if unknown."""
    try:
        params = inspect.signature(callable_).parameters
    except (TypeError, ValueError):
        return None
    names = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    required = [n for n, p in params.items()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is inspect.Parameter.empty]
    return names, var_kw, required


def _call_factory(factory: Callable[..., object], device: str | torch.device, weights: str | None) -> object:
    """Call `factory` with whichever of `device=` / `weights=` it accepts."""
    signature = _named_parameters(factory)
    if signature is None:
        return factory(device=device, weights=weights)
    names, var_kw, _ = signature
    kwargs = {}
    if var_kw or "device" in names:
        kwargs["device"] = device
    if var_kw or "weights" in names:
        kwargs["weights"] = weights
    elif weights is not None:
        raise ValueError(f"--weights was given but {factory!r} takes no `weights` argument")
    return factory(**kwargs)


def _instantiate(cls: type, spec: str, device: str | torch.device, weights: str | None) -> nn.Module:
    """An `nn.Module` subclass instantiated with `device=` / `weights=` only where its own __init__ names them.

    (nn.Module's own `__init__(*args, **kwargs)` accepts neither, so a subclass with only
    `forward()` gets no arguments; the module is moved to the device afterwards.)
    """
    init = cls.__init__
    signature = None if init is nn.Module.__init__ else _named_parameters(init)
    names = signature[0] if signature else set()
    kwargs: dict[str, object] = {"weights": weights} if "weights" in names else {}
    if weights is not None and "weights" not in names:
        raise ValueError(f"--weights was given but {cls.__qualname__} (feature extractor spec {spec!r}) "
                         "takes no `weights` argument")
    if "device" in names:
        kwargs["device"] = device
    required = [n for n in (signature[2] if signature else []) if n != "self" and n not in kwargs]
    if required:
        raise ValueError(
            f"feature extractor spec {spec!r}: {cls.__qualname__}() needs arguments {', '.join(required)}; "
            "give defaults, or point the spec at a factory function that builds the module"
        )
    return cls(**kwargs)


def _is_feature_function(function: Callable[..., object]) -> bool:
    """A plain function whose first parameter is required and is not `device` / `weights`: f(images)."""
    signature = _named_parameters(function)
    return bool(signature and signature[2] and signature[2][0] not in ("device", "weights"))


def _from_spec(spec: str, device: str | torch.device, weights: str | None) -> nn.Module:
    """`package.module:callable` -> a feature extractor: a module instance, an nn.Module subclass
    (instantiated), a feature function `f(images)` (wrapped) or a factory (called)."""
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
    if isinstance(target, nn.Module):
        result = target
    elif isinstance(target, type) and issubclass(target, nn.Module):
        result = _instantiate(target, spec, device, weights)
    elif callable(target) and not isinstance(target, type) and _is_feature_function(target):
        if weights is not None:
            raise ValueError(f"--weights was given but the feature function {spec!r} takes no weights")
        return _as_extractor(FunctionFeatures(target, name=spec), device)
    elif callable(target):
        result = _call_factory(target, device, weights)
    else:
        raise ValueError(f"feature extractor spec {spec!r} names {target!r} ({type(target).__name__}), not a module, "
                         "class or function")
    if not isinstance(result, nn.Module):
        raise ValueError(
            f"feature extractor spec {spec!r} returned {type(result).__name__}, not an nn.Module; name an "
            "nn.Module (instance or class), a function images -> features, or a factory returning a module"
        )
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
