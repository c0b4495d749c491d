"""BOSS straightening on the shipped 2-D flow teacher: the loss falls, the K-step Euler error to the
teacher's states shrinks, and the exported pipeline samples with its spec."""

from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from fewstep import FewStepScheduler
from fewstep.cli import main
from fewstep.distill.loop import Trainer, train
from fewstep.samplers import Denoiser, RectifiedFlowPath, sample

from distill_helpers import single_thread, tiny_config

TEACHER = Path(__file__).resolve().parents[2] / "assets" / "teachers" / "mixture_flow"


def straighten_config(run_dir: Path, spec: Path, *overrides: str):
    return tiny_config(run_dir, "model.type=pretrained", f"model.pretrained={TEACHER}", "objective.name=boss_straighten",
                       f"objective.spec={spec}", "objective.num_noises=256", "objective.fine_steps=20",
                       "data.batch_size=64", "optim.lr=3e-4", "optim.ema_decay=0", *overrides)


def endpoint_error(network: torch.nn.Module, states: torch.Tensor, labels: torch.Tensor, ts: torch.Tensor) -> float:
    """RMS distance of K-step Euler samples from the teacher's final state, same noise."""
    with torch.no_grad():
        out = sample(Denoiser(network, RectifiedFlowPath(), "flow_prediction"), states[:, 0], ts, "ddim", class_labels=labels).x
    return float((out - states[:, -1]).pow(2).mean().sqrt())


@pytest.fixture(scope="module")
def boss_spec(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("boss") / "k3.safetensors"
    assert main(["boss", "schedule", str(TEACHER), "--steps", "3", "--fine-steps", "20", "--noises", "64", "--out", str(out)]) == 0
    return out


def test_straightening_lowers_the_k_step_error(tmp_path, boss_spec):
    with single_thread():
        trainer = Trainer(straighten_config(tmp_path / "probe", boss_spec, "max_steps=1"))
        states, labels = trainer.dataset.tensors
        ts = trainer.objective.ts
        before = endpoint_error(trainer.objective.frozen, states, labels, ts)
        # the student starts from exactly the teacher's weights
        for p, q in zip(trainer.networks()["model"].parameters(), trainer.objective.frozen.parameters()):
            assert torch.equal(p, q)
        result = train(straighten_config(tmp_path / "run", boss_spec, "max_steps=60"))
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
    pipe = DiffusionPipeline.from_pretrained(result.pipeline)
    assert isinstance(pipe.scheduler, FewStepScheduler) and pipe.scheduler.sampler_spec.num_steps == 3
    assert endpoint_error(pipe.unet, states, labels, ts) < before
    points = pipe(class_labels=[0, 1], num_inference_steps=3, output_type="pt").images
    assert torch.isfinite(torch.as_tensor(points)).all()


def test_straightening_needs_a_spec_and_a_flow_teacher(tmp_path, boss_spec):
    with pytest.raises(ValueError, match="objective.spec"):
        Trainer(straighten_config(tmp_path / "a", Path(""), "objective.spec=null"))
    vp_teacher = TEACHER.parent / "mixture_vp"
    with pytest.raises(ValueError, match=r"boss_straighten needs a flow teacher, but model.pretrained is a vp model "
                                         r"\(prediction_type 'v_prediction'\)"):
        Trainer(straighten_config(tmp_path / "b", boss_spec, f"model.pretrained={vp_teacher}"))
    with pytest.raises(ValueError, match="vp_diffusion needs a vp teacher, but model.pretrained is a flow model"):
        Trainer(tiny_config(tmp_path / "c", "model.type=pretrained", f"model.pretrained={TEACHER}",
                            "objective.name=vp_diffusion"))
    with pytest.raises(ValueError, match="boss_straighten learns from a teacher: set model.type=pretrained"):
        tiny_config(tmp_path / "d", "objective.name=boss_straighten", f"objective.spec={boss_spec}")