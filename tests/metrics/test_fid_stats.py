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


def test_load_errors_name_the_file(tmp_path):
    np.savez(tmp_path / "wrong.npz", foo=np.zeros(2))
    with pytest.raises(ValueError, match="wrong.npz.*no 'mu' and 'sigma'"):
        load_stats(tmp_path / "wrong.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_stats(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        load_stats(tmp_path / "junk.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single.npy.*single array"):
        load_stats(tmp_path / "single.npy")
    with pytest.raises(ValueError, match="is not a file"):
        load_stats(tmp_path)


def test_object_string_and_bad_metadata_arrays_name_the_file_and_what_is_expected(tmp_path):
    """np.load(allow_pickle=False) alone says only 'Object arrays cannot be loaded ...'."""
    np.savez(tmp_path / "objects.npz", mu=np.zeros(3), sigma=np.array([np.eye(3)], dtype=object))
    with pytest.raises(ValueError, match=r"objects.npz.*'sigma' is an array of Python objects.*expected float "
                                         r"sigma of shape \(d, d\)"):
        load_stats(tmp_path / "objects.npz")
    np.savez(tmp_path / "object_meta.npz", mu=np.zeros(3), sigma=np.eye(3), n=np.array([None], dtype=object))
    with pytest.raises(ValueError, match="object_meta.npz.*'n' is an array of Python objects"):
        load_stats(tmp_path / "object_meta.npz")
    np.savez(tmp_path / "strings.npz", mu=np.array(["0", "0", "0"]), sigma=np.eye(3))
    with pytest.raises(ValueError, match="strings.npz.*'mu' has dtype <U1; expected float mu"):
        load_stats(tmp_path / "strings.npz")
    np.savez(tmp_path / "bad_n.npz", mu=np.zeros(3), sigma=np.eye(3), n=np.arange(2))
    with pytest.raises(ValueError, match="bad_n.npz.*metadata"):
        load_stats(tmp_path / "bad_n.npz")
    np.savez(tmp_path / "shapes.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(ValueError, match="shapes.npz.*do not describe one Gaussian"):
        load_stats(tmp_path / "shapes.npz")


def test_sigma_that_is_not_a_covariance_is_refused_naming_the_file(tmp_path):
    """sigma = -I used to load (and score FD 0.000); a garbage upper triangle too (FD 2e-16)."""
    np.savez(tmp_path / "negative.npz", mu=np.zeros(4), sigma=-np.eye(4))
    with pytest.raises(ValueError, match="negative.npz.*not positive semi-definite.*smallest eigenvalue is -1"):
        load_stats(tmp_path / "negative.npz")
    rng = np.random.default_rng(3)
    sigma = np.cov(rng.standard_normal((50, 6)), rowvar=False)
    garbage = sigma.copy()
    garbage[np.triu_indices(6, 1)] = rng.standard_normal(15)
    np.savez(tmp_path / "garbage.npz", mu=np.zeros(6), sigma=garbage)
    with pytest.raises(ValueError, match="garbage.npz.*not symmetric"):
        load_stats(tmp_path / "garbage.npz")
    # a clear negative eigenvalue (-1e-4 of the trace) in an otherwise symmetric matrix
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    eigenvalues = np.array([-1e-4 * 6, 1, 1, 1, 1, 1])
    np.savez(tmp_path / "indefinite.npz", mu=np.zeros(6), sigma=(q * eigenvalues) @ q.T)
    with pytest.raises(ValueError, match="indefinite.npz.*not positive semi-definite"):
        load_stats(tmp_path / "indefinite.npz")


def test_round_off_is_within_the_covariance_tolerance(tmp_path):
    """Tolerances (docs/metrics.md): symmetric to 1e-6 (Frobenius, relative); eigenvalues >= -1e-6 trace.
    Rank-deficient float64 covariances, the same stored in float32, tiny asymmetry and the zero
    matrix all load; sigma comes back exactly symmetric."""
    rng = np.random.default_rng(4)
    rank_deficient = np.cov(rng.standard_normal((20, 64)) @ rng.standard_normal((64, 64)), rowvar=False)
    assert np.linalg.eigvalsh(rank_deficient)[0] < 0  # round-off: the null space comes out slightly negative
    asymmetric = rank_deficient + 1e-9 * np.abs(rank_deficient).max() * rng.standard_normal((64, 64))
    for name, sigma in (("f64", rank_deficient), ("f32", rank_deficient.astype(np.float32)),
                        ("asym", asymmetric), ("zero", np.zeros((64, 64)))):
        np.savez(tmp_path / f"{name}.npz", mu=np.zeros(64), sigma=sigma)
        loaded = load_stats(tmp_path / f"{name}.npz").sigma
        np.testing.assert_array_equal(loaded, loaded.T)
        np.testing.assert_allclose(loaded, sigma, rtol=0, atol=1e-8 * np.abs(sigma).max())
