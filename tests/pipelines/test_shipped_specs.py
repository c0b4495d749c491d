"""Learned sampler specs shipped in assets/specs: each loads on its teacher and reproduces its recorded held-out error."""

from pathlib import Path

import pytest
import torch

from fewstep.cli import main
from fewstep.pipelines.loading import load_teacher
from fewstep.samplers import CFGDenoiser, sample
from fewstep.samplers.learned import teacher_outputs
from fewstep.samplers.spec import SamplerSpec

ASSETS = Path(__file__).resolve().parents[2] / "assets"
SPECS = sorted((ASSETS / "specs").glob("*.safetensors"))


def test_every_teacher_has_specs_at_nfe_4_6_8():
    names = {p.stem for p in SPECS}
    for teacher in ("mixture_flow", "mixture_vp", "mnist_flow", "mnist_vp"):
        assert {f"{teacher}_nfe{n}" for n in (4, 6, 8)} <= names


@pytest.mark.parametrize("spec_file", [p for p in SPECS if p.stem.startswith("mixture")], ids=lambda p: p.stem)
def test_mixture_spec_reproduces_its_heldout_error_and_beats_its_start(spec_file):
    """Re-run the fit's held-out evaluation (seed 0 noises after the training ones) from the spec alone."""
    spec = SamplerSpec.load(spec_file)
    teacher = load_teacher(ASSETS / "teachers" / spec.provenance["teacher"].split("/")[-1])
    assert teacher.spec_mismatch(spec.provenance) is None and spec.num_steps == int(spec_file.stem[-1])
    spec.check_compatible(teacher.path)
    noises, heldout = 256, 64  # fewstep fit-sampler's defaults, with which these were made
    noise = torch.randn((noises + heldout, *teacher.sample_shape), generator=torch.Generator().manual_seed(0))
    cond = {k: v[noises:] for k, v in teacher.class_labels(noises + heldout).items()}
    targets = teacher_outputs(teacher.denoiser, noise[noises:], spec.provenance["teacher_steps"], **cond)
    with torch.no_grad():
        out = sample(teacher.denoiser, noise[noises:], **spec.sample_args(), **cond).x
    error = float((out - targets).pow(2).mean().sqrt())
    assert error == pytest.approx(spec.provenance["heldout_rmse_after"], rel=1e-4)
    assert error < 0.5 * spec.provenance["heldout_rmse_before"]  # the learned sampler is far closer than its start


@pytest.mark.parametrize("spec_file", [p for p in SPECS if p.stem.startswith("mnist")], ids=lambda p: p.stem)
def test_mnist_spec_matches_its_teacher_and_records_its_fit(spec_file):
    spec = SamplerSpec.load(spec_file)
    teacher = load_teacher(ASSETS / "teachers" / spec_file.stem.rsplit("_", 1)[0])
    assert teacher.spec_mismatch(spec.provenance) is None
    spec.check_compatible(teacher.path, int(spec_file.stem[-1]))
    provenance = spec.provenance
    assert provenance["guidance_scale"] == 2.0 and provenance["learn"] == "grid" and provenance["teacher_steps"] == 32
    # the kept sampler is never worse than the analytic start on the validation pairs that chose it
    assert provenance["validation_after"] <= provenance["validation_before"]


def test_null_class_guidance_equals_cfg_with_explicit_null_labels():
    teacher = load_teacher(ASSETS / "teachers" / "mixture_flow")
    x, t, labels = torch.randn(6, 2), torch.tensor(0.4, dtype=torch.float64), torch.arange(6) % 8
    explicit = CFGDenoiser(teacher.denoiser, 2.5, {"class_labels": torch.full_like(labels, teacher.num_classes)})
    with torch.no_grad():
        torch.testing.assert_close(teacher.guided(2.5)(x, t, class_labels=labels), explicit(x, t, class_labels=labels))
        unguided = teacher.denoiser(x, t, class_labels=labels)
        assert not torch.allclose(teacher.guided(2.5)(x, t, class_labels=labels), unguided)
    assert teacher.guided(1.0) is teacher.denoiser


def test_sample_warns_when_the_guidance_differs_from_the_fit(tmp_path, capsys):
    spec = ASSETS / "specs" / "mnist_flow_nfe4.safetensors"
    assert SamplerSpec.load(spec).provenance["guidance_scale"] == 2.0
    out = tmp_path / "s"
    assert main(["sample", str(ASSETS / "teachers" / "mnist_flow"), "--spec", str(spec), "--n", "2", "--out", str(out)]) == 0
    assert "fitted with --guidance-scale 2.0; sampling with 1.0" in capsys.readouterr().err
    assert main(["sample", str(ASSETS / "teachers" / "mnist_flow"), "--spec", str(spec), "--n", "2",
                 "--guidance-scale", "2", "--out", str(tmp_path / "t")]) == 0
    assert "warning" not in capsys.readouterr().err
