"""The shipped one-step MSD students (assets/students) load with diffusers and generate their classes in one call."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DiffusionPipeline

import fewstep.pipelines  # noqa: F401  (registers the pipelines)
from fewstep.distill.evaluate import mixture_sample_report

STUDENTS = Path(__file__).resolve().parents[2] / "assets" / "students"


def _count_calls(pipe) -> list[int]:
    calls: list[int] = []
    pipe.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    return calls


def test_shipped_mixture_students_match_the_exact_mixture_in_one_step() -> None:
    pipe = DiffusionPipeline.from_pretrained(STUDENTS / "mixture_flow_msd")
    assert type(pipe).__name__ == "MultiStudentPipeline" and pipe.routing == [0, 0, 1, 1, 2, 2, 3, 3]
    calls = _count_calls(pipe)
    labels = torch.arange(8).repeat_interleave(200)
    x = pipe(class_labels=labels, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    report = mixture_sample_report(x, labels)
    assert calls == [1600]  # one call of the router for the whole batch: one step
    assert report["max_mean_error"] < 0.03 and report["cov_error"] < 0.03  # component std 0.1, means on the unit circle


def test_shipped_mnist_students_draw_the_requested_digits_in_one_step() -> None:
    from fewstep.distill.evaluate import mnist_label_accuracy

    pipe = DiffusionPipeline.from_pretrained(STUDENTS / "mnist_flow_msd")
    assert pipe.routing == [0] * 5 + [1] * 5 and pipe.student_times == [1.0]
    calls = _count_calls(pipe)
    labels = torch.arange(10).repeat_interleave(5)
    images = pipe(class_labels=labels, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert calls == [50] and images.shape == (50, 1, 32, 32)
    assert mnist_label_accuracy(images * 2 - 1, labels) >= 0.9


def test_shipped_slimflow_student_is_half_the_teacher_and_draws_digits_in_one_call(tmp_path) -> None:
    import json

    from fewstep.cli import main
    from fewstep.distill.evaluate import mnist_label_accuracy
    from fewstep.pipelines.loading import load_teacher

    folder = STUDENTS / "mnist_flow_slimflow"
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert type(pipe).__name__ == "OneStepFlowPipeline"
    teacher = load_teacher(STUDENTS.parent / "teachers" / "mnist_flow")
    size = sum(p.numel() for p in pipe.unet.parameters())
    assert size <= 0.6 * sum(p.numel() for p in teacher.network.parameters())  # 359k of 637k
    calls = _count_calls(pipe)
    labels = torch.arange(10).repeat_interleave(5)
    images = pipe(class_labels=labels, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert calls == [50] and images.shape == (50, 1, 32, 32)  # one call for the batch: one step by default
    assert mnist_label_accuracy(images * 2 - 1, labels) >= 0.9  # 98.8 % on 1,000 images
    # the CLI: `fewstep sample` takes the pipeline's own single step; `fewstep fid` scores the folder
    out = tmp_path / "samples"
    assert main(["sample", str(folder), "--n", "20", "--out", str(out)]) == 0
    assert json.loads((out / "sampling.json").read_text())["nfe"] == 1
    stats = STUDENTS.parent / "mnist_stats" / "mnist_all.npz"
    assert main(["fid", str(out), str(stats), "--features", "mnist"]) == 0
