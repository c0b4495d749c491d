"""2-D Gaussian mixtures: parameters are well-formed and samples follow them, class by class."""

import pytest
import torch

from fewstep.data import (
    GaussianMixtureDataset,
    component_labels,
    get_dataset,
    mixture_parameters,
    sample_mixture,
)
from fewstep.data.mixtures import MIXTURES


@pytest.mark.parametrize("name", MIXTURES)
def test_parameters_are_well_formed(name):
    p = mixture_parameters(name)
    k = p["means"].shape[0]
    assert p["means"].shape == (k, 2) and p["stds"].shape == (k,) and p["weights"].shape == (k,)
    assert all(v.dtype == torch.float64 for v in p.values())
    assert torch.isclose(p["weights"].sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (p["stds"] > 0).all() and component_labels(name).shape == (k,)


@pytest.mark.parametrize("name", MIXTURES)
def test_class_means_and_spread_match_parameters(name):
    p, comp_labels = mixture_parameters(name), component_labels(name)
    x, labels = sample_mixture(name, 40_000, torch.Generator().manual_seed(0))
    assert x.shape == (40_000, 2) and x.dtype == torch.float32
    for c in comp_labels.unique():
        in_class = comp_labels == c
        w = p["weights"][in_class] / p["weights"][in_class].sum()
        mean = (w[:, None] * p["means"][in_class]).sum(0)
        # E|x - mean|^2 of a mixture = sum_k w_k (|mu_k - mean|^2 + 2 std_k^2)
        second = (w * (((p["means"][in_class] - mean) ** 2).sum(1) + 2 * p["stds"][in_class] ** 2)).sum()
        xs = x[labels == c].double()
        share = p["weights"][in_class].sum()
        assert abs(len(xs) / len(x) - share) < 0.02
        assert torch.allclose(xs.mean(0), mean, atol=4 * (second / len(xs)).sqrt().item() + 1e-3)
        assert abs(((xs - mean) ** 2).sum(1).mean() / second - 1) < 0.05


def test_dataset_items_splits_and_registry():
    ds = get_dataset("8gaussians", n=1000)
    x, y = ds[3]
    assert x.shape == (2,) and isinstance(y, int) and ds.classes == [str(i) for i in range(8)]
    # train draws with `seed`, test with `seed + 1` (documented): the samples are known exactly
    train_x, train_labels = sample_mixture("8gaussians", 1000, torch.Generator().manual_seed(0))
    assert torch.equal(ds.x, train_x) and torch.equal(ds.labels, train_labels)
    assert torch.equal(x, train_x[3]) and y == int(train_labels[3])
    test_x, _ = sample_mixture("8gaussians", 1000, torch.Generator().manual_seed(1))
    assert torch.equal(get_dataset("8gaussians", split="test", n=1000).x, test_x)
    assert torch.equal(GaussianMixtureDataset("8gaussians", n=10, seed=5).x,
                       sample_mixture("8gaussians", 10, torch.Generator().manual_seed(5))[0])
    assert get_dataset("moons", n=10).classes == ["0", "1"]
    with pytest.raises(ValueError, match="choose one of 8gaussians"):
        mixture_parameters("swissroll")
