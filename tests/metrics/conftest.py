"""Shared fixtures for the fewstep fid tests (random FID-Inception weights, small image folders)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fid_helpers import random_images, random_inception_state_dict, write_images


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> str:
    """Path of a randomly initialised state dict of torch-fidelity's FID Inception-v3."""
    path = tmp_path_factory.mktemp("weights") / "random-inception.pth"
    torch.save(random_inception_state_dict(), path)
    return str(path)


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub folder and no weights environment variable."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("FEWSTEP_INCEPTION_WEIGHTS", raising=False)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.fixture()
def two_folders(tmp_path):
    """Folders a/ (40 images) and b/ (30 images, shifted colours) of 16x16 RGB PNGs."""
    a, b = tmp_path / "a", tmp_path / "b"
    write_images(a, random_images(40, 16, seed=0))
    write_images(b, random_images(30, 16, seed=1, low=40, high=220))
    return a, b
