"""`fewstep fid` end to end with a tiny extractor: numbers, outputs, bad inputs, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pytorch_fid.fid_score import calculate_frechet_distance
from torch_fidelity.metric_kid import kid_features_to_metric

from fewstep.commands import fid as fid_command
from fid_helpers import TinyFeatures, random_images, write_images

IO = ["--num-workers", "0", "--batch-size", "7"]
TINY = ["--features", "fid_helpers:tiny_features", *IO]
HERE = Path(__file__).parent


def _folder_features(folder: Path) -> torch.Tensor:
    """Reference features: decode with PIL.convert('RGB') (the pytorch-fid way), run TinyFeatures."""
    images = [np.array(Image.open(p).convert("RGB")) for p in sorted(folder.rglob("*.png"))]
    return torch.cat([TinyFeatures()(torch.from_numpy(image).permute(2, 0, 1)[None]) for image in images]).double()


def _pytorch_fid(x: torch.Tensor, y: torch.Tensor) -> float:
    """pytorch-fid's Frechet distance (scipy sqrtm) between two feature sets, float64."""
    x, y = x.double().numpy(), y.double().numpy()
    return float(calculate_frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)))


def _score(capsys, *argv: str, options: list[str] = TINY) -> dict:
    capsys.readouterr()
    assert fid_command.main([*argv, "--json", *options]) == 0
    return json.loads(capsys.readouterr().out)


def _error(capsys, *argv: str, options: list[str] = TINY) -> str:
    capsys.readouterr()
    assert fid_command.main([*argv, *options]) == 2
    return capsys.readouterr().err


def test_folder_vs_stats_matches_pytorch_fid(two_folders, tmp_path, capsys):
    """The CLI's FD equals pytorch-fid's `calculate_frechet_distance` on the same features.

    Tolerance rel 1e-8: both work in float64 on the same 12-d well-conditioned covariances;
    pytorch-fid's scipy sqrtm is accurate to ~1e-12 here, the rest is summation order.
    """
    a, b = two_folders
    written = _score(capsys, "stats", str(a), "--out", str(tmp_path / "a.npz"))
    assert written["inputs"][0]["n"] == 40 and written["extractor"] == "tiny"
    result = _score(capsys, str(b), str(tmp_path / "a.npz"))
    expected = _pytorch_fid(_folder_features(b), _folder_features(a))
    assert result["metric"] == "FD" and result["fd"] == pytest.approx(expected, rel=1e-8)
    assert expected > 0.01  # a real distance, not a degenerate 0 = 0


def test_kid_matches_torch_fidelity_and_bootstrap_fid_inf_match_brute_force(two_folders, capsys):
    """KID vs torch-fidelity's `kid_features_to_metric` (same RandomState(seed) subsets, float64
    features: rel 1e-9); bootstrap vs brute-force resampling with the same generator and pytorch-fid
    per replicate (rel 1e-7); FID-infinity's per-size values vs pytorch-fid on the same subsets and
    its intercept vs a least-squares line through them."""
    a, b = two_folders
    seed, reps = 3, 30
    result = _score(capsys, str(a), str(b), "--kid", "--kid-subsets", "10", "--kid-subset-size", "25",
                    "--bootstrap", str(reps), "--fid-inf", "--seed", str(seed))
    xa, xb = _folder_features(a), _folder_features(b)

    theirs = kid_features_to_metric(xa, xb, kid_subsets=10, kid_subset_size=25, rng_seed=seed, verbose=False)
    assert result["kid"]["mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-9)
    assert result["kid"]["std"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-9)
    assert result["kid"]["subset_size"] == 25

    generator = torch.Generator().manual_seed(seed)
    replicates = []
    for _ in range(reps):  # rows of both sides resampled with replacement, a's draw first
        pick_a = torch.randint(len(xa), (len(xa),), generator=generator)
        pick_b = torch.randint(len(xb), (len(xb),), generator=generator)
        replicates.append(_pytorch_fid(xa[pick_a], xb[pick_b]))
    replicates = np.array(replicates)
    estimate = _pytorch_fid(xa, xb)
    q_low, q_high = np.percentile(replicates, [2.5, 97.5])
    boot = result["bootstrap"]
    assert boot["replicates"] == reps and boot["level"] == 0.95
    assert boot["std"] == pytest.approx(replicates.std(ddof=1), rel=1e-7)
    assert boot["bias"] == pytest.approx(replicates.mean() - estimate, rel=1e-6)
    assert boot["low"] == pytest.approx(max(2 * estimate - q_high, 0.0), rel=1e-7)
    assert boot["high"] == pytest.approx(2 * estimate - q_low, rel=1e-7)

    fd_inf = result["fd_inf"]
    sizes = np.array(fd_inf["sizes"])
    assert sizes[0] == len(xa) // 10 and sizes[-1] == len(xa) and len(sizes) == 15
    generator = torch.Generator().manual_seed(seed)
    for size, value in zip(sizes, fd_inf["values"]):  # subsets of a (without replacement) vs all of b
        subset = xa[torch.randperm(len(xa), generator=generator)[:size]]
        # below d = 12 rows the covariance is singular: scipy's sqrtm is then ~1e-7 off (ours is exact)
        assert value == pytest.approx(_pytorch_fid(subset, xb), rel=1e-8 if size > 12 else 1e-5)
    design = np.stack([np.ones(len(sizes)), 1.0 / sizes], 1)
    intercept = np.linalg.lstsq(design, np.array(fd_inf["values"]), rcond=None)[0][0]
    assert fd_inf["value"] == pytest.approx(intercept, rel=1e-9)


@pytest.mark.parametrize("spec", ["fid_helpers:tiny_function", "fid_helpers:TinyForwardOnly",
                                  "fid_helpers:TinyWithDevice", "fid_helpers:tiny_features"])
def test_features_spec_function_class_and_factory(two_folders, capsys, spec):
    """--features package.module:callable accepts a function images -> features, an nn.Module
    subclass with only forward() (instantiated), a class taking device=, and a factory; all give
    TinyFeatures' numbers (pytorch-fid on the reference features)."""
    a, b = two_folders
    result = _score(capsys, str(a), str(b), options=["--features", spec, *IO])
    assert result["fd"] == pytest.approx(_pytorch_fid(_folder_features(a), _folder_features(b)), rel=1e-8)
    assert result["extractor"] == ("tiny" if spec.endswith(("tiny_features", "TinyWithDevice")) else spec)
    assert result["feature_dim"] == 12


def test_npz_image_batch_equals_folder(two_folders, tmp_path, capsys):
    a, b = two_folders
    images = np.stack([np.array(Image.open(p)) for p in sorted(a.glob("*.png"))])
    np.savez(tmp_path / "samples.npz", arr_0=images)  # ADM layout: uint8 (N, H, W, C)
    from_folder = _score(capsys, str(a), str(b))
    from_npz = _score(capsys, str(tmp_path / "samples.npz"), str(b))
    assert from_npz["fd"] == pytest.approx(from_folder["fd"], rel=1e-12)
    assert from_npz["inputs"][0]["kind"] == "images"


def test_text_output_states_protocol(two_folders, capsys):
    a, b = two_folders
    capsys.readouterr()
    assert fid_command.main([str(a), str(b), *TINY]) == 0
    out = capsys.readouterr().out
    assert out.startswith("FD: ") and "protocol: test: RGB /255, 2x2 average pool" in out


def test_grayscale_rgba_mixed_sizes_are_converted_and_reported(tmp_path, capsys):
    folder = tmp_path / "mixed"
    write_images(folder / "rgb", random_images(4, 16, seed=0))
    write_images(folder / "gray", random_images(3, 16, seed=1)[..., :1])
    rgba = np.concatenate([random_images(2, 16, seed=2), np.full((2, 16, 16, 1), 7, np.uint8)], -1)
    write_images(folder / "rgba", rgba)
    write_images(folder / "big", random_images(2, 32, seed=3))
    Image.fromarray(random_images(1, 16, seed=4)[0]).convert("P").save(folder / "palette.png")
    result = _score(capsys, "stats", str(folder), "--out", str(tmp_path / "mixed.npz"))
    side = result["inputs"][0]
    assert side["n"] == 12
    assert side["sizes"] == {"16x16": 10, "32x32": 2}
    conversions = " ".join(f"{n} {k}" for k, n in side["conversions"].items())
    assert "3 grayscale" in conversions and "2 RGBA" in conversions and "1 P converted" in conversions
    expected = _folder_features(folder)  # PIL convert('RGB') of every file, one at a time
    with np.load(tmp_path / "mixed.npz") as stats:
        np.testing.assert_allclose(stats["mu"], expected.mean(0).numpy(), rtol=1e-6)
        np.testing.assert_allclose(stats["sigma"], np.cov(expected.numpy(), rowvar=False), rtol=1e-5, atol=1e-9)


def test_bad_inputs_give_clear_errors_and_leave_no_file(tmp_path, two_folders, capsys):
    a, b = two_folders
    out = tmp_path / "out.npz"
    (tmp_path / "empty").mkdir()
    assert "no images" in _error(capsys, "stats", str(tmp_path / "empty"), "--out", str(out))
    assert "does not exist" in _error(capsys, str(tmp_path / "missing"), str(b))

    corrupt = tmp_path / "corrupt"
    write_images(corrupt, random_images(5, 16))
    (corrupt / "00002.png").write_bytes(b"\x89PNG broken")
    message = _error(capsys, "stats", str(corrupt), "--out", str(out))
    assert "00002.png" in message and "--skip-bad" in message
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    skipped = _score(capsys, "stats", str(corrupt), "--out", str(out), "--skip-bad")
    assert skipped["inputs"][0]["n"] == 4 and len(skipped["inputs"][0]["skipped"]) == 1 and out.exists()

    single = tmp_path / "single"
    write_images(single, random_images(1, 16))
    assert "at least 2" in _error(capsys, "stats", str(single), "--out", str(tmp_path / "s.npz"))
    assert not (tmp_path / "s.npz").exists()

    np.savez(tmp_path / "wrong_dim.npz", mu=np.zeros(5), sigma=np.eye(5))
    assert "5-d statistics" in _error(capsys, str(a), str(tmp_path / "wrong_dim.npz"))
    np.savez(tmp_path / "other.npz", mu=np.zeros(12), sigma=np.eye(12), n=3, extractor="inception", protocol="x")
    assert "computed with extractor 'inception'" in _error(capsys, str(a), str(tmp_path / "other.npz"))

    capsys.readouterr()
    nan_args = [str(a), str(b), "--features", "fid_helpers:nan_features", "--num-workers", "0"]
    assert fid_command.main(nan_args) == 2 and "NaN" in capsys.readouterr().err
    assert "KID needs" in _error(capsys, str(a), str(out), "--kid")


@pytest.fixture()
def no_extraction(monkeypatch):
    """Make building the extractor or extracting features fail loudly: errors must come first."""
    from fewstep.metrics import extract, features

    def started(*args, **kwargs):
        raise AssertionError("feature extraction started before the output path was checked")

    monkeypatch.setattr(features, "get_feature_extractor", started)
    monkeypatch.setattr(extract, "extract_features", started)


def test_stats_out_is_checked_before_any_feature_is_computed(two_folders, tmp_path, capsys, monkeypatch,
                                                             no_extraction):
    a, _ = two_folders
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    message = _error(capsys, "stats", str(a), "--out", str(a_file / "sub" / "x.npz"))
    assert "a_file" in message and "not a folder" in message

    existing = tmp_path / "existing.npz"
    existing.write_bytes(b"keep me")
    message = _error(capsys, "stats", str(a), "--out", str(existing))
    assert "existing.npz" in message and "already exists" in message and "--overwrite" in message
    assert existing.read_bytes() == b"keep me"

    assert "is a folder" in _error(capsys, "stats", str(a), "--out", str(tmp_path))
    assert "end in .npz" in _error(capsys, "stats", str(a), "--out", str(tmp_path / "x.stats"))
    assert "only used with" in _error(capsys, str(a), str(a), "--overwrite")

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: report the folder as read-only, as access(2) would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == read_only
                            else real_access(path, mode, **kw))
    try:
        for out in (read_only / "x.npz", read_only / "new" / "x.npz"):
            message = _error(capsys, "stats", str(a), "--out", str(out))
            assert "read_only" in message and "cannot" in message and "writable" in message
    finally:
        read_only.chmod(0o755)
    assert list(read_only.iterdir()) == []


def test_fewstep_cli_reports_output_errors_in_one_line(two_folders, tmp_path, capsys, monkeypatch, no_extraction):
    """Through `fewstep fid` itself: NotADirectoryError / FileExistsError are one-line user errors."""
    from fewstep import cli

    monkeypatch.delenv("FEWSTEP_TRACEBACK", raising=False)
    a, _ = two_folders
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "exists.npz").write_text("x")
    for out, needle in ((tmp_path / "a_file" / "x.npz", "not a folder"), (tmp_path / "exists.npz", "--overwrite")):
        capsys.readouterr()
        assert cli.main(["fid", "stats", str(a), "--out", str(out), *TINY]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fewstep fid: error: --out ") and needle in err and "Traceback" not in err


def test_stats_overwrite_replaces_an_existing_file_and_missing_folders_are_created(two_folders, tmp_path, capsys):
    a, _ = two_folders
    existing = tmp_path / "existing.npz"
    existing.write_bytes(b"old")
    _score(capsys, "stats", str(a), "--out", str(existing), "--overwrite")
    nested = tmp_path / "new" / "deeper" / "a.npz"
    _score(capsys, "stats", str(a), "--out", str(nested))
    with np.load(existing) as replaced, np.load(nested) as fresh:
        assert int(replaced["n"]) == 40 and int(fresh["n"]) == 40


def test_statistics_that_are_not_covariances_are_refused_naming_the_file(two_folders, tmp_path, capsys):
    """sigma = -I used to give FD 0.000 and exit 0, a garbage upper triangle 2e-16."""
    a, _ = two_folders
    np.savez(tmp_path / "negative.npz", mu=np.zeros(12), sigma=-np.eye(12))
    message = _error(capsys, str(a), str(tmp_path / "negative.npz"))
    assert "negative.npz" in message and "not positive semi-definite" in message and "-1" in message

    features = _folder_features(a).numpy()
    sigma = np.cov(features, rowvar=False)
    sigma[np.triu_indices(12, 1)] = np.random.default_rng(0).standard_normal(66)
    np.savez(tmp_path / "garbage.npz", mu=features.mean(0), sigma=sigma)
    message = _error(capsys, str(a), str(tmp_path / "garbage.npz"))
    assert "garbage.npz" in message and "not symmetric" in message
    message = _error(capsys, str(tmp_path / "garbage.npz"), str(tmp_path / "negative.npz"))
    assert "garbage.npz" in message


def test_object_array_npz_errors_name_the_file_and_what_is_expected(two_folders, tmp_path, capsys):
    a, _ = two_folders
    np.savez(tmp_path / "objects.npz", mu=np.array([np.zeros(12)], dtype=object), sigma=np.eye(12))
    message = _error(capsys, str(a), str(tmp_path / "objects.npz"))
    assert "objects.npz" in message and "'mu'" in message and "Python objects" in message
    assert "expected float mu of shape (d,)" in message
    np.savez(tmp_path / "object_images.npz", arr_0=np.array([np.zeros((4, 4, 3), np.uint8)] * 2 + [None], dtype=object))
    message = _error(capsys, "stats", str(tmp_path / "object_images.npz"), "--out", str(tmp_path / "o.npz"))
    assert "object_images.npz" in message and "Python objects" in message and "uint8 NHWC" in message
    np.savez(tmp_path / "strings.npz", mu=np.array(["a"] * 12), sigma=np.eye(12))
    message = _error(capsys, str(a), str(tmp_path / "strings.npz"))
    assert "strings.npz" in message and "'mu' has dtype <U1" in message


def test_missing_inception_weights_offline(two_folders, offline_hub, capsys, tmp_path):
    a, _ = two_folders
    capsys.readouterr()
    code = fid_command.main(["stats", str(a), "--out", str(tmp_path / "x.npz"), "--num-workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "weights-inception-2015-12-05-6726825d.pth" in err and str(offline_hub) in err
    assert not (tmp_path / "x.npz").exists()


def _cli_module() -> str:
    """`-m fewstep` once every registered command imports; this command alone otherwise."""
    try:
        from fewstep.cli import build_parser

        build_parser()
        return "fewstep"
    except ImportError:
        return "fewstep.commands.fid"


def test_two_processes_equal_one(two_folders, tmp_path):
    """Two processes under `accelerate launch` give the same numbers as one process.

    accelerate 1.x's `--cpu --num_processes 2` starts a single process unless MPI is set up
    (`--mpirun_hostfile`); `--multi_gpu --num_processes 2` starts two through torchrun, and on a
    machine without CUDA (or with `--device cpu`) fewstep joins them over gloo on the CPU.
    """
    a, b = two_folders
    module = _cli_module()
    prefix = ["fid"] if module == "fewstep" else []
    args = [*prefix, str(a), str(b), "--json", "--kid", "--kid-subsets", "5", "--kid-subset-size", "20", *TINY, "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
                            timeout=120)
    assert single.returncode == 0, single.stderr
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", module, *args]
    double = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = json.loads(single.stdout), json.loads(double.stdout)
    assert two["processes"] == 2 and one["processes"] == 1
    assert [s["n"] for s in two["inputs"]] == [40, 30]
    assert two["fd"] == pytest.approx(one["fd"], rel=1e-10)
    assert two["kid"]["mean"] == pytest.approx(one["kid"]["mean"], rel=1e-10)
