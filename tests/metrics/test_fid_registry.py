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
from fid_helpers import TinyFeatures


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
    assert wrapped(images).shape == (3, 16) and "unchanged" in wrapped.protocol
    with pytest.raises(ValueError, match="no attribute"):
        get_feature_extractor("fid_helpers:does_not_exist")
    with pytest.raises(ValueError, match="cannot import"):
        get_feature_extractor("no_such_module_xyz:thing")
