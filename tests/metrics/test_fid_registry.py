"""Feature-extractor registry: names, lazy built-ins, package.module:callable specs, plain modules."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from fewstep.metrics import features
from fewstep.metrics.features import (
    available_feature_extractors,
    get_feature_extractor,
    register_feature_extractor,
)
from fid_helpers import TinyFeatures, TinyForwardOnly, TinyWithDevice, tiny_function


def test_builtins_listed_and_unknown_name_lists_choices():
    assert {"inception", "mnist"} <= set(available_feature_extractors())
    with pytest.raises(KeyError, match="inception"):
        get_feature_extractor("no-such-net")


def test_lazy_builtin_registers_on_first_lookup(monkeypatch):
    module = types.ModuleType("fewstep_fake_lazy_extractor")
    module.__dict__["register"] = lambda: register_feature_extractor("lazy-tiny", lambda device, weights: TinyFeatures())
    loader_calls = []

    def exec_on_import():
        loader_calls.append(1)
        module.register()

    monkeypatch.setitem(features._BUILTINS, "lazy-tiny", "fewstep_fake_lazy_extractor")
    monkeypatch.setitem(sys.modules, "fewstep_fake_lazy_extractor", module)
    monkeypatch.setattr(features.importlib, "import_module", lambda name: exec_on_import() or module)
    monkeypatch.delitem(features._REGISTRY, "lazy-tiny", raising=False)
    extractor = get_feature_extractor("lazy-tiny")
    assert loader_calls == [1] and extractor.name == "tiny" and not extractor.training
    features._REGISTRY.pop("lazy-tiny")


def test_spec_and_registered_factory_and_plain_module():
    spec = get_feature_extractor("fid_helpers:tiny_features")
    assert (spec.name, spec.feature_dim) == ("tiny", 12)
    register_feature_extractor("tiny-registered", lambda device="cpu", weights=None: TinyFeatures())
    try:
        assert get_feature_extractor("tiny-registered").feature_dim == 12
    finally:
        features._REGISTRY.pop("tiny-registered")
    images = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    wrapped = get_feature_extractor(nn.Flatten())
    assert torch.equal(wrapped(images), images.flatten(1).float()) and "unchanged" in wrapped.protocol
    with pytest.raises(ValueError, match="no attribute"):
        get_feature_extractor("fid_helpers:does_not_exist")
    with pytest.raises(ValueError, match="cannot import"):
        get_feature_extractor("no_such_module_xyz:thing")


def test_spec_kinds_function_forward_only_class_class_with_device():
    """A function images -> features is wrapped; an nn.Module subclass is instantiated (device= only
    when its own __init__ names it); both give TinyFeatures' numbers."""
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = TinyFeatures()(images)
    function = get_feature_extractor("fid_helpers:tiny_function")
    assert function.name == "fid_helpers:tiny_function" and "tiny_function" in function.protocol
    forward_only = get_feature_extractor("fid_helpers:TinyForwardOnly")
    assert isinstance(forward_only.module, TinyForwardOnly) and forward_only.name == "fid_helpers:TinyForwardOnly"
    with_device = get_feature_extractor("fid_helpers:TinyWithDevice", device="cpu")
    assert isinstance(with_device, TinyWithDevice) and with_device.built_on == "cpu"
    for extractor in (function, forward_only, with_device):
        torch.testing.assert_close(extractor(images), expected, rtol=0, atol=0)  # same arithmetic
    assert tiny_function(images).shape == (5, 12)


def test_spec_errors_say_what_is_accepted(monkeypatch):
    module = types.ModuleType("fewstep_fake_specs")

    class NeedsArgs(nn.Module):
        def __init__(self, width):
            super().__init__()

    module.NeedsArgs = NeedsArgs
    module.not_a_module = lambda device="cpu": 42
    module.not_a_tensor = lambda images: images.tolist()
    module.number = 3
    monkeypatch.setitem(sys.modules, "fewstep_fake_specs", module)
    with pytest.raises(ValueError, match="NeedsArgs.*needs arguments width"):
        get_feature_extractor("fewstep_fake_specs:NeedsArgs")
    with pytest.raises(ValueError, match="returned int, not an nn.Module.*function images -> features"):
        get_feature_extractor("fewstep_fake_specs:not_a_module")
    with pytest.raises(ValueError, match="returned list, not a tensor"):
        get_feature_extractor("fewstep_fake_specs:not_a_tensor")(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"names 3 \(int\), not a module"):
        get_feature_extractor("fewstep_fake_specs:number")
    with pytest.raises(ValueError, match="takes no weights"):
        get_feature_extractor("fid_helpers:tiny_function", weights="w.pth")
    with pytest.raises(ValueError, match="takes no `weights`"):
        get_feature_extractor("fid_helpers:TinyForwardOnly", weights="w.pth")
