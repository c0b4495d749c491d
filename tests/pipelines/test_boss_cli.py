"""`fewstep boss schedule` on the shipped 2-D flow teacher: the spec loads into FewStepScheduler."""

from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from fewstep import FewStepScheduler
from fewstep.cli import main
from fewstep.pipelines.loading import load_teacher
from fewstep.samplers.spec import SamplerSpec

TEACHER = Path(__file__).resolve().parents[2] / "assets" / "teachers" / "mixture_flow"


def test_boss_schedule_cli_writes_a_spec_the_pipeline_uses(tmp_path, capsys):
    out = tmp_path / "boss_k3.safetensors"
    code = main(["boss", "schedule", str(TEACHER), "--steps", "3", "--fine-steps", "20", "--noises", "48",
                 "--batch-size", "24", "--out", str(out)])
    assert code == 0 and "DP objective" in capsys.readouterr().out
    spec = SamplerSpec.load(out)
    assert spec.num_steps == 3 and spec.provenance["dp_objective"] <= spec.provenance["uniform_objective"]
    teacher = load_teacher(TEACHER)
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(TEACHER)
    pipe.scheduler = FewStepScheduler.from_config(pipe.scheduler.config, spec=str(out))
    points = pipe(class_labels=[0, 1, 2], num_inference_steps=3, output_type="pt", generator=torch.Generator().manual_seed(0))
    points = points.images if hasattr(points, "images") else points[0]
    assert torch.isfinite(torch.as_tensor(points)).all()
    assert teacher.path.kind == "flow"
    with pytest.raises(ValueError, match="made for path"):
        FewStepScheduler.from_config(DDPMScheduler().config, spec=str(out))


def test_boss_cli_errors(tmp_path, capsys):
    assert main(["boss", "schedule", str(tmp_path), "--steps", "2", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "not a saved pipeline" in capsys.readouterr().err
    assert main(["boss", "schedule", str(TEACHER), "--steps", "30", "--fine-steps", "20", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "larger than the fine grid" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
