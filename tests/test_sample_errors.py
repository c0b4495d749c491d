"""`fewstep sample`, `boss schedule` and `fit-sampler`: outputs checked before the work, specs checked against the teacher."""

import os
from pathlib import Path

import pytest
import torch

import fewstep.pipelines.scoring as scoring
from fewstep.cli import main
from fewstep.samplers import RectifiedFlowPath, get_schedule
from fewstep.samplers.spec import SamplerSpec

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "teachers"
MNIST, MIXTURE = str(ASSETS / "mnist_flow"), str(ASSETS / "mixture_flow")


@pytest.fixture
def no_work(monkeypatch):
    """Fail loudly if a command starts sampling or loading the teacher: errors must come first."""
    import fewstep.pipelines.loading as loading

    def forbidden(*args, **kwargs):
        raise AssertionError("the command did the work before checking its output")

    monkeypatch.setattr(scoring, "generate_images", forbidden)
    monkeypatch.setattr(loading, "load_teacher", forbidden)


def write_spec(file, steps=3, **provenance):
    path = RectifiedFlowPath()
    SamplerSpec.from_grid("dpmpp_2m", get_schedule("uniform", path, steps), path, provenance=provenance).save(file)
    return str(file)


@pytest.mark.parametrize("make_out", [
    lambda tmp: tmp / "a_file" / "samples",     # a path under a file
    lambda tmp: tmp / "a_file",                 # a file where the folder should be
])
def test_sample_out_is_checked_before_sampling(make_out, tmp_path, no_work, capsys):
    (tmp_path / "a_file").write_text("x")
    assert main(["sample", MNIST, "--n", "2", "--out", str(make_out(tmp_path))]) == 2
    assert "a file, not a folder" in capsys.readouterr().err


def test_sample_read_only_out_is_checked_before_sampling(tmp_path, no_work, monkeypatch, capsys):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    assert main(["sample", MNIST, "--n", "2", "--out", str(tmp_path / "samples")]) == 2
    assert "no permission" in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["boss", "schedule", MIXTURE, "--steps", "2"],
    ["fit-sampler", MIXTURE, "--steps", "2"],
])
def test_spec_outputs_are_checked_before_the_work(command, tmp_path, no_work, capsys):
    (tmp_path / "a_file").write_text("x")
    assert main([*command, "--out", str(tmp_path / "a_file" / "spec.safetensors")]) == 2
    assert "a file, not a folder" in capsys.readouterr().err
    assert main([*command, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main([*command, "--out", str(tmp_path / "a_file")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_sample_refuses_steps_or_solver_that_contradict_the_spec(tmp_path, no_work, capsys):
    spec = write_spec(tmp_path / "spec.safetensors", steps=3)
    for extra, message in ((["--steps", "5"], "3-step sampler spec"), (["--solver", "ddim"], "uses solver 'dpmpp_2m'"),
                           (["--schedule", "karras"], "its own grid")):
        assert main(["sample", MNIST, "--spec", spec, *extra, "--out", str(tmp_path / "s")]) == 2
        assert message in capsys.readouterr().err


def test_sample_warns_when_the_spec_was_made_for_another_teacher(tmp_path, capsys):
    spec = write_spec(tmp_path / "mixture.safetensors", sample_shape=[2], teacher_fingerprint="0" * 16, teacher=MIXTURE)
    assert main(["sample", MNIST, "--spec", spec, "--n", "1", "--out", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "shape (2,)" in err


def test_spec_made_by_boss_records_and_matches_its_teacher(tmp_path):
    from fewstep.pipelines.loading import load_teacher

    out = tmp_path / "boss.safetensors"
    assert main(["boss", "schedule", MIXTURE, "--steps", "2", "--fine-steps", "10", "--noises", "8", "--out", str(out)]) == 0
    spec, mixture, mnist = SamplerSpec.load(out), load_teacher(MIXTURE), load_teacher(MNIST)
    assert spec.provenance["teacher_fingerprint"] == mixture.fingerprint() != mnist.fingerprint()
    assert mixture.spec_mismatch(spec.provenance) is None and "shape" in mnist.spec_mismatch(spec.provenance)
    with torch.no_grad():  # a changed weight is another teacher
        next(mixture.network.parameters()).add_(0.01)
    assert "another teacher" in mixture.spec_mismatch(spec.provenance)


def test_broken_specs_name_their_file(tmp_path, capsys):
    from safetensors.torch import save_file

    no_ts = tmp_path / "no_ts.safetensors"
    save_file({"grid": torch.zeros(3)}, str(no_ts), metadata={
        "fewstep_spec": '{"format": "fewstep-sampler-spec/1", "solver": "ddim", "path": {"type": "rectified_flow"}}'})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(Path(write_spec(tmp_path / "good.safetensors")).read_bytes()[:40])
    for file, message in ((no_ts, r"lacks \['ts'\]"), (truncated, "not a readable safetensors file")):
        with pytest.raises(ValueError, match=message) as info:
            SamplerSpec.load(file)
        assert str(file) in str(info.value)
        assert main(["sample", MNIST, "--spec", str(file), "--out", str(tmp_path / "s")]) == 2
        assert str(file) in capsys.readouterr().err
