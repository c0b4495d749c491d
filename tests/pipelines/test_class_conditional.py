"""ClassConditionalPipeline: any diffusers scheduler, CFG via the null class, save/reload, the shipped 2-D teachers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from PIL import Image

from fewstep.models import ClassConditionalMLP, small_unet
from fewstep.pipelines.class_conditional import ClassConditionalPipeline

TEACHERS = Path(__file__).resolve().parents[2] / "assets" / "teachers"


def _pipe(model: torch.nn.Module, scheduler) -> ClassConditionalPipeline:
    torch.manual_seed(0)
    pipe = ClassConditionalPipeline(unet=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return small_unet(sample_size=8, in_channels=1, num_classes=3, block_out_channels=(8, 16), layers_per_block=1)


@pytest.mark.parametrize("scheduler", [DDPMScheduler(), DPMSolverMultistepScheduler(), FlowMatchEulerDiscreteScheduler(shift=1.0)])
def test_any_scheduler_gives_images_in_every_output_type(scheduler) -> None:
    pipe = _pipe(_tiny_unet(), scheduler)
    kw = dict(class_labels=[0, 2], num_inference_steps=3, guidance_scale=2.0)
    pil = pipe(**kw, generator=torch.Generator().manual_seed(1)).images
    arr = pipe(**kw, generator=torch.Generator().manual_seed(1), output_type="np").images
    pt = pipe(**kw, generator=torch.Generator().manual_seed(1), output_type="pt").images
    assert len(pil) == 2 and isinstance(pil[0], Image.Image) and pil[0].size == (8, 8)
    assert arr.shape == (2, 8, 8, 1) and 0 <= arr.min() and arr.max() <= 1
    assert pt.shape == (2, 1, 8, 8)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr, atol=1e-6)
    assert np.array_equal(np.asarray(pil[1]), (arr[1, ..., 0] * 255).round().astype(np.uint8))


class _Recorder(torch.nn.Module):
    """Stands in for a network: output = x + class label, and records each call's labels."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, x, timestep, class_labels=None):
        self.calls.append(class_labels.clone())
        return type("Out", (), {"sample": x + class_labels.float().reshape(-1, *[1] * (x.ndim - 1))})()


def test_guidance_batches_null_and_class_labels_and_extrapolates() -> None:
    unet = _tiny_unet()
    pipe = _pipe(unet, FlowMatchEulerDiscreteScheduler(shift=1.0))
    recorder = _Recorder(unet)
    pipe.unet = recorder
    x = torch.zeros(2, 1, 8, 8)
    out = pipe._model_output(x, torch.tensor(500.0), torch.tensor([0, 2]), guidance_scale=3.0)
    assert recorder.calls[-1].tolist() == [3, 3, 0, 2]  # null class (num_class_embeds - 1 = 3) first
    # u + w (c - u) with u = null label 3, c = label: 3 + 3 (c - 3)
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([3 + 3 * (0 - 3.0), 3 + 3 * (2 - 3.0)]))
    pipe._model_output(x, torch.tensor(500.0), torch.tensor([1, 1]), guidance_scale=1.0)
    assert recorder.calls[-1].tolist() == [1, 1]  # no guidance: one conditional call


def test_bad_labels_and_output_types_are_rejected() -> None:
    pipe = _pipe(_tiny_unet(), DDPMScheduler())
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 2\]"):
        pipe(class_labels=[7], num_inference_steps=2)
    with pytest.raises(ValueError, match="output_type"):
        pipe(class_labels=[0], num_inference_steps=2, output_type="latent")
    points = _pipe(ClassConditionalMLP(num_class_embeds=3), FlowMatchEulerDiscreteScheduler(shift=1.0))
    with pytest.raises(ValueError, match="not images"):
        points(class_labels=[0], num_inference_steps=2)


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_save_and_reload_gives_the_same_samples(tmp_path: Path, kind: str) -> None:
    model = ClassConditionalMLP(num_class_embeds=5) if kind == "mlp" else _tiny_unet()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0) if kind == "mlp" else DPMSolverMultistepScheduler()
    pipe = _pipe(model, scheduler)
    kw = dict(class_labels=[0, 1, 2, 1], num_inference_steps=4, guidance_scale=1.5, output_type="pt")
    before = pipe(**kw, generator=torch.Generator().manual_seed(3)).images
    pipe.save_pretrained(tmp_path / "pipe")
    if kind == "mlp":  # named by its public path, so saved files survive moves of the class's module
        assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["unet"] == ["fewstep", "ClassConditionalMLP"]
    for loader in (DiffusionPipeline, ClassConditionalPipeline):
        loaded = loader.from_pretrained(tmp_path / "pipe")
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded) is ClassConditionalPipeline and type(loaded.unet) is type(model)
        assert type(loaded.scheduler) is type(scheduler)
        # a reloaded network may differ from the in-memory one by ~1e-7 (memory layout, kernels): tolerance
        assert torch.allclose(loaded(**kw, generator=torch.Generator().manual_seed(3)).images, before, atol=1e-5)


@pytest.mark.parametrize("name, scheduler_cls", [("mixture_flow", FlowMatchEulerDiscreteScheduler), ("mixture_vp", DPMSolverMultistepScheduler)])
def test_shipped_2d_teacher_matches_the_mixture(name: str, scheduler_cls: type) -> None:
    """Per-class sample means within 0.05 of the true component means, spread close to the true std 0.1."""
    from fewstep.data import component_labels, mixture_parameters

    folder = TEACHERS / name
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, scheduler_cls)
    params = mixture_parameters("8gaussians")
    assert component_labels("8gaussians").tolist() == list(range(8))  # class = component
    labels = torch.arange(8).repeat_interleave(200)
    x = torch.as_tensor(pipe(class_labels=labels, num_inference_steps=50, output_type="pt",
                             generator=torch.Generator().manual_seed(0)).images).double()
    for k in range(8):
        xk = x[labels == k]
        assert torch.linalg.norm(xk.mean(0) - params["means"][k]) < 0.05, (k, xk.mean(0))
        assert 0.06 < float(xk.std(0).mean()) < 0.16, (k, xk.std(0))


@pytest.mark.parametrize("name", ["mixture_flow", "mixture_vp"])
def test_shipped_2d_teacher_runs_under_fewstep_scheduler(name: str) -> None:
    """`FewStepScheduler.from_config(pipe.scheduler.config)` inherits the teacher's path: 10 steps stay on the mixture."""
    from fewstep import FewStepScheduler
    from fewstep.data import mixture_parameters

    folder = TEACHERS / name
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = FewStepScheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m", schedule="logsnr")
    labels = torch.arange(8).repeat_interleave(100)
    x = torch.as_tensor(pipe(class_labels=labels, num_inference_steps=10, output_type="pt",
                             generator=torch.Generator().manual_seed(0)).images).double()
    means = torch.stack([x[labels == k].mean(0) for k in range(8)])
    assert torch.linalg.norm(means - mixture_parameters("8gaussians")["means"], dim=1).max() < 0.08


@pytest.mark.parametrize("name", ["mnist_flow", "mnist_vp"])
def test_shipped_mnist_teacher_draws_its_labels(name: str) -> None:
    """Guided samples (w = 2, 20 steps of the shipped scheduler) of each digit are recognised by the MNIST classifier."""
    from fewstep.distill.evaluate import mnist_label_accuracy

    folder = TEACHERS / name
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    labels = torch.arange(10).repeat(2)
    images = pipe(class_labels=labels, num_inference_steps=20, guidance_scale=2.0, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (20, 1, 32, 32)
    assert mnist_label_accuracy(images * 2 - 1, labels) >= 0.9
