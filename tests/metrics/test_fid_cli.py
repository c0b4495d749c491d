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

from fewstep.commands import fid as fid_command
from fewstep.metrics.frechet import frechet_distance
from fewstep.metrics.kid import kernel_inception_distance
from fid_helpers import TinyFeatures, random_images, write_images

TINY = ["--features", "fid_helpers:tiny_features", "--num-workers", "0", "--batch-size", "7"]
HERE = Path(__file__).parent


def _folder_features(folder: Path) -> torch.Tensor:
    """Reference features: decode with PIL.convert('RGB') (the pytorch-fid way), run TinyFeatures."""
    images = [np.array(Image.open(p).convert("RGB")) for p in sorted(folder.rglob("*.png"))]
    return torch.cat([TinyFeatures()(torch.from_numpy(image).permute(2, 0, 1)[None]) for image in images]).double()


def _score(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert fid_command.main([*argv, "--json", *TINY]) == 0
    return json.loads(capsys.readouterr().out)


def _error(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert fid_command.main([*argv, *TINY]) == 2
    return capsys.readouterr().err


def test_folder_vs_stats_equals_independent_computation(two_folders, tmp_path, capsys):
    a, b = two_folders
    written = _score(capsys, "stats", str(a), "--out", str(tmp_path / "a.npz"))
    assert written["inputs"][0]["n"] == 40 and written["extractor"] == "tiny"
    result = _score(capsys, str(b), str(tmp_path / "a.npz"))
    xa, xb = _folder_features(a), _folder_features(b)
    expected = frechet_distance(xb.mean(0), np.cov(xb.numpy(), rowvar=False), xa.mean(0),
                                np.cov(xa.numpy(), rowvar=False))
    assert result["metric"] == "FD" and result["fd"] == pytest.approx(expected, rel=1e-9)


def test_kid_bootstrap_and_fid_inf_on_two_folders(two_folders, capsys):
    a, b = two_folders
    result = _score(capsys, str(a), str(b), "--kid", "--kid-subsets", "10", "--kid-subset-size", "25",
                    "--bootstrap", "30", "--fid-inf", "--seed", "3")
    mean, std = kernel_inception_distance(_folder_features(a), _folder_features(b), 10, 25, seed=3)
    assert result["kid"]["mean"] == pytest.approx(mean, rel=1e-9) and result["kid"]["std"] == pytest.approx(std)
    boot = result["bootstrap"]
    assert boot["replicates"] == 30 and boot["low"] <= boot["high"] and boot["std"] > 0
    assert np.isfinite(result["fd_inf"]["value"])


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
