"""`get_dataset` checks its keyword options against the loader before loading anything."""

import pytest

from fewstep.data import dataset_options, get_dataset


def test_every_dataset_lists_its_options():
    assert dataset_options("8gaussians") == {"n": 10_000, "seed": 0}
    assert dataset_options("text") == {"seq_len": 64}
    assert dataset_options("folder") == {"resolution": 32, "channels": 3}
    assert dataset_options("hf") == {"image_column": "image", "label_column": "label", "resolution": 32, "channels": 3}
    assert dataset_options("mnist") == {}
    assert dataset_options("photos") == {"size": 32, "short_side": 128}
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'; choose one of mnist"):
        dataset_options("cifar10")


@pytest.mark.parametrize("name, options, message", [
    ("8gaussians", {"nonsense": 5}, r"unknown option 'nonsense' for dataset '8gaussians'; valid options of "
                                    r"'8gaussians': n \(default 10000\), seed \(default 0\)"),
    ("mnist", {"n": 5}, r"unknown option 'n' for dataset 'mnist'; dataset 'mnist' takes no options"),
    ("folder", {"path": "x", "n": 5, "m": 1}, r"unknown options 'n', 'm' for dataset 'folder'; valid options of "
                                              r"'folder': resolution \(default 32\), channels \(default 3\)"),
    ("text", {"seq_len": "long"}, r"option seq_len='long' of dataset 'text' must be of type int"),
    ("markov", {"n": 2.5}, r"option n=2.5 of dataset 'markov' must be of type int"),
    ("8gaussians", {"n": None}, r"option n=None of dataset '8gaussians' needs a value"),
    ("folder", {}, r"needs path="),
])
def test_unknown_or_mistyped_options_are_value_errors_listing_the_valid_ones(name, options, message):
    with pytest.raises(ValueError, match=message):
        get_dataset(name, split="all", **options)


def test_valid_options_pass_through():
    ds = get_dataset("8gaussians", n=12, seed=3)
    assert len(ds) == 12
    assert len(get_dataset("markov", split="train", vocab_size=4, seq_len=6, n=10)) == 10
