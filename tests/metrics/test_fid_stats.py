"""Streaming statistics and .npz files: exactness, merging, round trip, pytorch-fid files, atomicity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewstep.metrics import stats as stats_module
from fewstep.metrics.stats import Stats, StatsAccumulator, load_stats, save_stats, stats_from_features


def test_streaming_equals_numpy_on_uneven_batches():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((257, 9)) * 3 + 1000.0  # large offset: raw sums would cancel
    acc = StatsAccumulator()
    for chunk in np.array_split(x, [1, 50, 51, 200]):
        acc.update(torch.tensor(chunk))
    result = acc.compute()
    assert acc.n == 257 and result.mu.dtype == np.float64 and result.sigma.dtype == np.float64
    np.testing.assert_allclose(result.mu, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(result.sigma, np.cov(x, rowvar=False), rtol=1e-11, atol=1e-12)


def test_merging_accumulators_equals_one_pass():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal((100, 5)))
    whole, left, right = StatsAccumulator(), StatsAccumulator(), StatsAccumulator()
    whole.update(x)
    left.update(x[:37])
    right.update(x[37:])
    left.update_from(right)
    np.testing.assert_allclose(left.compute().sigma, whole.compute().sigma, rtol=1e-12)
    np.testing.assert_allclose(left.compute().mu, whole.compute().mu, rtol=1e-12)


def test_accumulator_rejects_nan_and_too_few():
    acc = StatsAccumulator()
    with pytest.raises(ValueError, match="NaN"):
        acc.update(torch.tensor([[1.0, float("nan")]]))
    acc.update(torch.ones(1, 2))
    with pytest.raises(ValueError, match="at least 2"):
        acc.compute()


def test_round_trip_with_metadata(tmp_path):
    rng = np.random.default_rng(2)
    original = stats_from_features(rng.standard_normal((30, 4)), extractor="tiny", protocol="p: x/255")
    path = save_stats(tmp_path / "ref.npz", original)
    loaded = load_stats(path)
    np.testing.assert_array_equal(loaded.mu, original.mu)
    np.testing.assert_array_equal(loaded.sigma, original.sigma)
    assert (loaded.n, loaded.extractor, loaded.protocol) == (30, "tiny", "p: x/255")
    with np.load(path, allow_pickle=False) as raw:  # what pytorch-fid / EDM read
        assert raw["mu"].dtype == np.float64 and raw["sigma"].shape == (4, 4)
    assert [p.name for p in tmp_path.iterdir()] == ["ref.npz"]  # no temp file left


def test_reads_pytorch_fid_style_file(tmp_path):
    np.savez(tmp_path / "pf.npz", mu=np.zeros(3, np.float32), sigma=np.eye(3, dtype=np.float32))
    loaded = load_stats(tmp_path / "pf.npz")
    assert loaded.extractor == "unknown" and loaded.n == 0 and loaded.sigma.dtype == np.float64


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(stats_module.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_stats(tmp_path / "out.npz", Stats(np.zeros(2), np.eye(2), 2))
    assert list(tmp_path.iterdir()) == []


def test_load_errors(tmp_path):
    np.savez(tmp_path / "wrong.npz", foo=np.zeros(2))
    with pytest.raises(ValueError, match="no 'mu' and 'sigma'"):
        load_stats(tmp_path / "wrong.npz")
    with pytest.raises(FileNotFoundError):
        load_stats(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError):
        load_stats(tmp_path / "junk.npz")
