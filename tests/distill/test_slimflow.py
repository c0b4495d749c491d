"""SlimFlow (Zhu et al. 2024): annealing reflow, flow-guided distillation, the one-step pipeline, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from torch import nn

import fewstep.pipelines  # noqa: F401  (registers the pipelines)
from fewstep.data.mixtures import mixture_parameters
from fewstep.distill.loop import Trainer, train
from fewstep.distill.objectives import build_objective
from fewstep.distill.objectives.slimflow import (
    AnnealingReflowOptions, FlowGuidedOptions, annealed_noise, beta_at, flip_pairs, pair_distance, pseudo_huber_c, two_step_target,
)
from fewstep.distill.teacher_pairs import PairRecipe, teacher_pair_dataset
from fewstep.io import assets_dir
from fewstep.models import ClassConditionalMLP
from fewstep.pipelines import OneStepFlowPipeline
from fewstep.pipelines.loading import LoadedTeacher, load_teacher
from fewstep.samplers import Denoiser, GaussianMixture, NetworkDenoiser, RectifiedFlowPath, get_schedule, sample

from distill_helpers import single_thread, tiny_config

TEACHER = assets_dir() / "teachers" / "mixture_flow"
VP_TEACHER = assets_dir() / "teachers" / "mixture_vp"
PAIRS = ("objective.num_noises=256", "objective.fine_steps=6", "objective.shard_size=128")


def reflow_config(run_dir: Path, *overrides: str):
    return tiny_config(run_dir, f"model.teacher={TEACHER}", "objective.name=slimflow_reflow", *PAIRS,
                       "objective.anneal_steps=10", *overrides)


def distill_config(run_dir: Path, student: Path, *overrides: str):
    return tiny_config(run_dir, "model.type=pretrained", f"model.pretrained={student}", "objective.name=slimflow_distill",
                       f"objective.pairs_teacher={TEACHER}", *PAIRS, *overrides)


# -- annealing ----------------------------------------------------------------------------------


def test_beta_falls_linearly_then_stays():
    assert [beta_at(s, 1000) for s in (0, 250, 500, 1000, 5000)] == [1.0, 0.75, 0.5, 0.0, 0.0]
    assert beta_at(50, 100, beta_start=0.8, beta_end=0.2) == pytest.approx(0.5)
    assert beta_at(0, 0) == 0.0 and beta_at(7, 0, 1.0, 1.0) == 1.0  # anneal_steps=0: beta_end throughout


def test_annealed_noise_has_unit_variance_and_is_the_paired_noise_at_beta_zero():
    g = torch.Generator().manual_seed(0)
    paired, fresh = torch.randn(200_000, 3, generator=g), torch.randn(200_000, 3, generator=g)
    for beta in (0.0, 0.3, 0.7, 1.0):
        noise = annealed_noise(paired, fresh, beta)
        assert noise.var(0).sub(1).abs().max() < 0.01 and noise.mean(0).abs().max() < 0.01
    assert torch.equal(annealed_noise(paired, fresh, 0.0), paired)
    assert torch.equal(annealed_noise(paired, fresh, 1.0), fresh)
    # the correlation with the paired noise is sqrt(1 - beta^2)
    corr = (annealed_noise(paired, fresh, 0.6) * paired).mean()
    assert corr == pytest.approx(0.8, abs=0.01)


def test_flip_moves_image_and_noise_together():
    noise, data = torch.randn(64, 1, 4, 4), torch.randn(64, 1, 4, 4)
    flipped_noise, flipped_data = flip_pairs(noise, data, torch.Generator().manual_seed(0))
    both = [torch.equal(flipped_noise[i], noise[i].flip(-1)) and torch.equal(flipped_data[i], data[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(flipped_noise[i], noise[i]) and torch.equal(flipped_data[i], data[i]) for i in range(64)]
    assert all(a != b for a, b in zip(both, kept))  # each pair entirely flipped or entirely kept
    assert 16 < sum(both) < 48


class ScaledInput(nn.Module):
    """A network whose velocity is w x (w = 0: the loss is the target's mean square; w = 1 exposes x_t)."""

    def __init__(self, template: nn.Module, w: float) -> None:
        super().__init__()
        self.config, self.weight = template.config, nn.Parameter(torch.tensor(float(w)))
        self.sample_shape = (2,)

    def forward(self, x, timestep, class_labels=None):
        return type("Out", (), {"sample": x * self.weight})()


def reflow_objective(teacher, w: float):
    options = AnnealingReflowOptions(num_noises=64, fine_steps=4, anneal_steps=100)
    return build_objective("slimflow_reflow", options, ScaledInput(teacher.network, w), teacher)


def test_the_loss_regresses_the_velocity_to_the_annealed_noise():
    teacher = load_teacher(TEACHER)
    objective = reflow_objective(teacher, 0.0)
    states, labels = objective.make_dataset().tensors
    noise, data = states[:, 0], states[:, 1]
    # (seed 5: the training noise must not coincide with the pairs' own seeded noise)
    at_zero = objective.loss((states, labels), 100, torch.Generator().manual_seed(5))  # beta = 0: the pairs' coupling
    assert float(at_zero["beta"]) == 0.0
    torch.testing.assert_close(at_zero["loss"], ((noise - data) ** 2).mean())
    at_one = objective.loss((states, labels), 0, torch.Generator().manual_seed(5))  # beta = 1: independent noise
    fresh = torch.randn(noise.shape, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(fresh, noise)
    torch.testing.assert_close(at_one["loss"], ((fresh - data) ** 2).mean())
    # with velocity = x the loss also checks the interpolant x_t = (1 - t) data + t noise and the target's sign
    identity = reflow_objective(teacher, 1.0)
    g = torch.Generator().manual_seed(5)
    torch.randn(noise.shape, generator=g)  # the fresh noise (unused at beta = 0), then the times
    t = (1e-3 + (1 - 1e-3) * torch.rand(64, generator=g, dtype=torch.float64)).float()[:, None]
    x_t = (1 - t) * data + t * noise
    expected = ((x_t - (noise - data)) ** 2).mean()
    torch.testing.assert_close(identity.loss((states, labels), 100, torch.Generator().manual_seed(5))["loss"], expected)


class ExactFlow(nn.Module):
    """The exact x0-predictor of the unconditional 8-Gaussian mixture on the flow path (a teacher with no error)."""

    def __init__(self) -> None:
        super().__init__()
        params = mixture_parameters("8gaussians")
        self.denoiser = GaussianMixture(params["means"], params["stds"]).denoiser(RectifiedFlowPath())
        self.path, self.anchor = self.denoiser.path, nn.Parameter(torch.zeros(1))

    def forward(self, x, t, class_labels=None):
        return self.denoiser(x.double(), t).to(x.dtype)


def exact_teacher() -> LoadedTeacher:
    net = ExactFlow()
    return LoadedTeacher(network=net, denoiser=net, path=net.path, prediction_type="flow_prediction", sample_shape=(2,),
                         num_classes=1, scheduler_config={}, source="exact 8gaussians")


def one_step_error(model: nn.Module, held: tuple[torch.Tensor, torch.Tensor]) -> float:
    """RMS distance of the student's one Euler step from the exact teacher's ODE sample, same held-out noise."""
    states, labels = held
    with torch.no_grad():
        v = model(states[:, 0], torch.full((labels.numel(),), 1000.0), class_labels=labels).sample
    return float((states[:, 0] - v - states[:, 1]).pow(2).mean().sqrt())


def train_small_student(teacher: LoadedTeacher, seed: int, steps: int = 400, **options) -> nn.Module:
    torch.manual_seed(seed)
    model = ClassConditionalMLP(dim=2, width=64, num_blocks=2, num_class_embeds=2)
    objective = build_objective("slimflow_reflow", AnnealingReflowOptions(num_noises=2048, fine_steps=16, shard_size=2048,
                                                                          **options), model, teacher)
    states, labels = objective.make_dataset().tensors
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        rows = torch.randint(0, labels.numel(), (256,), generator=g)
        loss = objective.loss((states[rows], labels[rows]), step, g)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def test_annealed_reflow_beats_fresh_noise_flow_matching_in_one_step():
    """Same small MLP, same steps, on the exact mixture's pairs. Seeds 0-3 gave annealed 0.127-0.152 and
    fresh-noise flow matching (beta = 1 throughout) 0.646-0.730 RMS; the assertion leaves a wide margin."""
    teacher = exact_teacher()
    with single_thread():
        held = teacher_pair_dataset(teacher, PairRecipe.from_solver("dpmpp_2m", teacher.path, 16, seed=99, shard_size=512),
                                    512, progress=False).tensors
        annealed = one_step_error(train_small_student(teacher, 0, anneal_steps=200), held)
        fresh = one_step_error(train_small_student(teacher, 0, beta_end=1.0), held)
    assert annealed < 0.4 * fresh
    assert annealed < 0.25  # the one-step student lands near the exact ODE's sample (the mixture's radius is 1)


# -- flow-guided distillation ------------------------------------------------------------------


class LinearFlow(nn.Module):
    """A velocity field v(x, t) = A x + b (time-independent): x0 = x - t v on the flow path."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x, timestep, class_labels=None):
        return type("Out", (), {"sample": x @ self.a.T + self.b})()


def test_two_step_target_is_detached_and_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 2, generator=g) * 0.3, torch.randn(2, generator=g)
    guide = NetworkDenoiser(LinearFlow(a, b), RectifiedFlowPath(), "flow_prediction")
    z = torch.randn(16, 2, generator=g)
    u = torch.randn(16, 2, generator=g, requires_grad=True)  # the student's velocity at t = 1
    s = 0.2 + 0.6 * torch.rand(16, generator=g, dtype=torch.float64)
    target = two_step_target(z, u, s, guide, torch.zeros(16, dtype=torch.long))
    assert not target.requires_grad
    sb = s.float()[:, None]
    x_mid = z - sb * u.detach()
    closed = x_mid - (1 - sb) * (x_mid @ a.T + b)  # one Euler step of the linear flow from time 1 - s to 0
    torch.testing.assert_close(target, closed, rtol=1e-5, atol=1e-6)


def test_distances():
    a, b = torch.zeros(3, 4), torch.full((3, 4), 0.5)
    assert float(pair_distance(a, b, "l2")) == pytest.approx(0.25)
    c = pseudo_huber_c(4)
    assert c == pytest.approx(0.00054 * 2)
    assert float(pair_distance(a, b, "pseudo_huber")) == pytest.approx(math.sqrt(4 * 0.25 + c * c) - c, rel=1e-6)
    assert float(pair_distance(a, b, "pseudo_huber", c=1.0)) == pytest.approx(math.sqrt(2.0) - 1.0, rel=1e-6)


def test_distill_loss_is_the_one_step_term_plus_the_weighted_two_step_term():
    """Loss terms: one_step = d(z - v, sample); two_step = d(z - v, two-step target); weight 0 drops the second."""
    teacher = load_teacher(TEACHER)
    student = ClassConditionalMLP(dim=2, width=32, num_blocks=1, num_class_embeds=9)
    with single_thread():
        objective = build_objective("slimflow_distill", FlowGuidedOptions(num_noises=32, fine_steps=4), student, teacher)
        states, labels = objective.make_dataset().tensors
        out = objective.loss((states, labels), 0, torch.Generator().manual_seed(3))
        no_guide = build_objective("slimflow_distill", FlowGuidedOptions(num_noises=32, fine_steps=4, guidance_weight=0),
                                   student, teacher).loss((states, labels), 0, torch.Generator().manual_seed(3))
    z, data = states[:, 0], states[:, 1]
    ones = torch.ones(32, dtype=torch.float64)
    with torch.no_grad():
        one_step = z - objective.velocity(z, ones, labels)
    torch.testing.assert_close(out["one_step"], ((one_step - data) ** 2).mean())
    torch.testing.assert_close(out["loss"], out["one_step"] + out["two_step"])
    assert "two_step" not in no_guide and torch.allclose(no_guide["loss"], out["one_step"])
    # the gradient flows only through the student's one-step sample, never into the frozen guide
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.network.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


# -- the two stages through the loop, the pipeline, save / load -------------------------------


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    run = tmp_path_factory.mktemp("slimflow") / "reflow"
    with single_thread():
        result = train(reflow_config(run, "max_steps=40", f"objective.pairs_dir={run.parent / 'pairs'}"))
    return result


def test_stage_one_exports_a_one_step_flow_pipeline(stage1):
    pipe = DiffusionPipeline.from_pretrained(stage1.pipeline)
    assert isinstance(pipe, OneStepFlowPipeline)
    assert sum(p.numel() for p in pipe.unet.parameters()) < sum(p.numel() for p in load_teacher(TEACHER).network.parameters()) / 4
    calls = []
    pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    one = pipe(class_labels=[0, 1, 2], output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert len(calls) == 1  # one network call by default
    # more steps integrate the student's flow with Euler, exactly as fewstep's sampler does
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
    four = pipe(class_labels=[0, 1, 2], num_inference_steps=4, output_type="pt", latents=z).images
    path = RectifiedFlowPath()
    euler = sample(Denoiser(pipe.unet, path, "flow_prediction"), z, get_schedule("uniform", path, 4), "ddim",
                   class_labels=torch.tensor([0, 1, 2])).x
    torch.testing.assert_close(torch.as_tensor(four), euler, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(torch.as_tensor(one)).all()
    with pytest.raises(ValueError, match="guidance_scale=1"):
        pipe(class_labels=[0], guidance_scale=2.0)


def test_stage_two_distils_and_reuses_the_stage_one_pairs(stage1, tmp_path):
    pairs = stage1.run_dir.parent / "pairs"
    before = {p.name: p.stat().st_mtime_ns for p in pairs.iterdir()}
    with single_thread():
        result = train(distill_config(tmp_path / "distill", stage1.pipeline, "max_steps=30", f"objective.pairs_dir={pairs}"))
    assert {p.name: p.stat().st_mtime_ns for p in pairs.iterdir()} == before  # nothing made again
    assert sum(result.losses[-5:]) < sum(result.losses[:5])
    pipe = DiffusionPipeline.from_pretrained(result.pipeline)
    assert isinstance(pipe, OneStepFlowPipeline)
    reloaded = DiffusionPipeline.from_pretrained(result.pipeline)
    a = pipe(class_labels=[1, 5], output_type="pt", generator=torch.Generator().manual_seed(0)).images
    b = reloaded(class_labels=[1, 5], output_type="pt", generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-4, atol=1e-5)


def test_resume_equals_uninterrupted(tmp_path):
    """beta depends on the step: a resumed run must continue the annealing where it stopped."""
    overrides = ("optim.ema_decay=0.9", "checkpoint_every=4", "objective.anneal_steps=6")
    with single_thread():
        full = train(reflow_config(tmp_path / "full", "max_steps=8", *overrides))
        trainer = Trainer(reflow_config(tmp_path / "split", "max_steps=8", *overrides))
        trainer.config.max_steps = 4
        trainer.train()
        resumed = train(reflow_config(tmp_path / "split", "max_steps=8", *overrides), resume="latest")
    assert resumed.start_step == 4
    assert resumed.losses == pytest.approx(full.losses[4:], rel=1e-5)


# -- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_refused_before_anything_is_written(tmp_path, stage1):
    with pytest.raises(ValueError, match="flow teacher"):
        Trainer(tiny_config(tmp_path / "a", f"model.teacher={VP_TEACHER}", "objective.name=slimflow_reflow", *PAIRS))
    with pytest.raises(ValueError, match="shape"):
        Trainer(reflow_config(tmp_path / "b", "model.dim=3"))
    with pytest.raises(ValueError, match="classes"):
        Trainer(reflow_config(tmp_path / "c", "model.num_classes=4"))
    for key in ("beta_start=1.5", "beta_end=-0.1"):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            reflow_config(tmp_path / "d", f"objective.{key}")
    with pytest.raises(ValueError, match="LPIPS"):
        distill_config(tmp_path / "e", stage1.pipeline, "objective.distance=lpips")
    with pytest.raises(ValueError, match="teacher"):
        Trainer(tiny_config(tmp_path / "f", "objective.name=slimflow_reflow"))
    # pairs of another teacher: refused, the folder untouched, no run folder written
    pairs = stage1.run_dir.parent / "pairs"
    before = {p.name: p.stat().st_mtime_ns for p in pairs.iterdir()}
    with pytest.raises(ValueError, match="another teacher"):
        Trainer(reflow_config(tmp_path / "g", f"objective.pairs_dir={pairs}", f"model.teacher={stage1.pipeline}"))
    assert {p.name: p.stat().st_mtime_ns for p in pairs.iterdir()} == before
    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").iterdir())
    for name in "abcfg":
        assert not (tmp_path / name / "checkpoints").exists()


def test_straightness_is_zero_for_straight_flows_and_positive_for_curved_ones():
    from fewstep.distill.evaluate import straightness

    path = RectifiedFlowPath()
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, generator=g)
    # the flow of a point mass at `target` moves on straight lines: v = (x - target) / t
    point = type("Point", (), {"path": path, "__call__": lambda self, x, t, **c: target.expand_as(x)})()
    z = torch.randn(64, 2, generator=g)
    assert straightness(point, z, steps=8) < 1e-10
    # a two-component mixture's flow bends (the posterior mean moves as t falls): S > 0
    mixture = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 0.1).denoiser(path)
    curved = straightness(mixture, z.double(), steps=32)
    assert curved > 0.05
