"""Reflow (Liu et al. 2023) and LoRA fine-tuning (peft) of the shipped 2-D flow teacher through the trainer loop."""

from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from fewstep.distill.loop import Trainer, train
from fewstep.distill.objectives.trajectory import has_lora, merge_lora
from fewstep.samplers import Denoiser, RectifiedFlowPath, get_schedule, sample

from distill_helpers import single_thread, tiny_config

TEACHER = Path(__file__).resolve().parents[2] / "assets" / "teachers" / "mixture_flow"


def finetune_config(run_dir: Path, objective: str, *overrides: str):
    return tiny_config(run_dir, "model.type=pretrained", f"model.pretrained={TEACHER}", f"objective.name={objective}",
                       "objective.num_noises=256", "objective.fine_steps=20", "data.batch_size=64", "optim.lr=3e-4",
                       "optim.ema_decay=0", *overrides)


def euler_error(network: torch.nn.Module, pairs: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    """RMS distance of `steps`-step Euler samples from the teacher's samples (pairs [N, 2, D]: noise, sample)."""
    path = RectifiedFlowPath()
    with torch.no_grad():
        out = sample(Denoiser(network, path, "flow_prediction"), pairs[:, 0], get_schedule("uniform", path, steps), "ddim",
                     class_labels=labels).x
    return float((out - pairs[:, 1]).pow(2).mean().sqrt())


def test_reflow_pairs_are_noise_and_teacher_sample_and_training_straightens(tmp_path):
    with single_thread():
        trainer = Trainer(finetune_config(tmp_path / "probe", "reflow", "max_steps=1"))
        pairs, labels = trainer.dataset.tensors
        assert pairs.shape == (256, 2, 2)
        # the first state is the seeded noise; the last is the teacher's 20-step Euler sample from it
        teacher_path = RectifiedFlowPath()
        with torch.no_grad():
            again = sample(Denoiser(trainer.objective.frozen, teacher_path, "flow_prediction"), pairs[:8, 0],
                           get_schedule("uniform", teacher_path, 20), "ddim", class_labels=labels[:8]).x
        torch.testing.assert_close(again, pairs[:8, 1], rtol=1e-5, atol=1e-5)
        before = euler_error(trainer.objective.frozen, pairs, labels, 1)
        result = train(finetune_config(tmp_path / "run", "reflow", "max_steps=80"))
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
    pipe = DiffusionPipeline.from_pretrained(result.pipeline)
    assert euler_error(pipe.unet, pairs, labels, 1) < 0.9 * before  # one step lands closer to the teacher's sample


def test_lora_trains_only_adapters_and_exports_a_merged_plain_model(tmp_path):
    with single_thread():
        trainer = Trainer(finetune_config(tmp_path / "probe", "reflow", "max_steps=1", "objective.lora_rank=4"))
        student, teacher = trainer.networks()["model"], trainer.objective.frozen
        trainable = [name for name, p in student.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in name for name in trainable)
        x, t, labels = torch.randn(16, 2), torch.full((16,), 500.0), torch.arange(16) % 8
        with torch.no_grad():  # LoRA's B starts at zero: the student starts as the teacher
            torch.testing.assert_close(student(x, t, class_labels=labels).sample, teacher(x, t, class_labels=labels).sample)
        result = train(finetune_config(tmp_path / "run", "reflow", "max_steps=40", "objective.lora_rank=4",
                                       "optim.lr=3e-3", "optim.ema_decay=0.9"))
    pipe = DiffusionPipeline.from_pretrained(result.pipeline)
    assert not has_lora(pipe.unet) and type(pipe.unet) is type(teacher)
    with torch.no_grad():
        moved = (pipe.unet(x, t, class_labels=labels).sample - teacher(x, t, class_labels=labels).sample).abs().max()
    assert moved > 1e-4  # the adapters learned something and it survived the merge


def test_merging_lora_keeps_the_function(tmp_path):
    with single_thread():
        trainer = Trainer(finetune_config(tmp_path / "probe", "reflow", "max_steps=1", "objective.lora_rank=2"))
    student = trainer.networks()["model"]
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
        x, t, labels = torch.randn(16, 2), torch.full((16,), 300.0), torch.arange(16) % 8
        merged = merge_lora(student)
        torch.testing.assert_close(merged(x, t, class_labels=labels).sample, student(x, t, class_labels=labels).sample,
                                   rtol=1e-5, atol=1e-5)
    assert not has_lora(merged) and has_lora(student)


def test_lora_resume_equals_uninterrupted(tmp_path):
    overrides = ("objective.lora_rank=2", "optim.ema_decay=0.9", "optim.lr=3e-3", "checkpoint_every=3")
    with single_thread():
        full = train(finetune_config(tmp_path / "full", "reflow", "max_steps=6", *overrides))
        first = finetune_config(tmp_path / "split", "reflow", "max_steps=6", *overrides)
        trainer = Trainer(first)
        trainer.config.max_steps = 3
        trainer.train()
        resumed = train(finetune_config(tmp_path / "split", "reflow", "max_steps=6", *overrides), resume="latest")
    assert resumed.start_step == 3
    assert resumed.losses == pytest.approx(full.losses[3:], rel=1e-6)
    a = DiffusionPipeline.from_pretrained(full.pipeline).unet.state_dict()
    b = DiffusionPipeline.from_pretrained(resumed.pipeline).unet.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_negative_lora_rank_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="lora_rank"):
        finetune_config(tmp_path, "reflow", "objective.lora_rank=-1")
