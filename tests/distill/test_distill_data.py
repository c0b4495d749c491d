"""The loop's data stream: stateless per-step batches, disjoint across processes, documented shapes and labels."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from distill_helpers import tiny_config

from fewstep.distill.loop import StepBatchSampler, Trainer


def test_each_epoch_is_a_permutation_split_disjointly_across_processes() -> None:
    n, batch, procs = 50, 4, 3  # 4 micro-batches per epoch, 2 items dropped
    streams = [list(itertools.islice(iter(StepBatchSampler(n, batch, procs, r, seed=1)), 8)) for r in range(procs)]
    for epoch in range(2):
        items = [i for r in range(procs) for b in streams[r][4 * epoch : 4 * epoch + 4] for i in b]
        assert len(items) == len(set(items)) == 48 and max(items) < n
    assert streams[0][:4] != streams[0][4:]  # a new order each epoch


def test_starting_mid_stream_reproduces_the_uninterrupted_stream() -> None:
    full = list(itertools.islice(iter(StepBatchSampler(30, 4, 2, 1, seed=5)), 12))
    resumed = list(itertools.islice(iter(StepBatchSampler(30, 4, 2, 1, seed=5, start=7)), 5))
    assert resumed == full[7:]


def test_too_small_dataset_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="lower data.batch_size"):
        StepBatchSampler(10, 8, 2, 0, seed=0)


def _first_batch_indices(trainer: Trainer, batch_size: int) -> list[int]:
    return next(iter(StepBatchSampler(len(trainer.dataset), batch_size, 1, 0, seed=trainer.config.seed)))


def test_mixture_batches_have_the_documented_shapes_and_labels(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tmp_path / "run", "data.batch_size=16"))
    x, labels = next(trainer._batches())
    assert x.shape == (16, 2) and x.dtype == torch.float32
    assert labels.shape == (16,) and labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 8
    # the batch is the dataset's items at the sampler's first 16 indices (seed 0, step 0)
    index = torch.tensor(_first_batch_indices(trainer, 16))
    assert torch.equal(x, trainer.dataset.x[index]) and torch.equal(labels, trainer.dataset.labels[index])


def test_mnist_batches_have_the_documented_shapes_and_labels(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tmp_path / "run", "data.name=mnist", "data.options={}", "data.batch_size=8",
                                  "model.type=unet", "model.num_classes=10", "model.block_out_channels=8,16"))
    x, labels = next(trainer._batches())
    assert x.shape == (8, 1, 32, 32) and -1 <= x.min() and x.max() <= 1
    assert labels.shape == (8,) and 0 <= labels.min() and labels.max() <= 9
    index = torch.tensor(_first_batch_indices(trainer, 8))
    assert torch.equal(x, trainer.dataset.images[index]) and torch.equal(labels, trainer.dataset.labels[index])
