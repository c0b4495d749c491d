"""MSD / DMD: the DM gradient, a 1-D Gaussian oracle, partitions, routing, phase isolation, export and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from distill_helpers import single_thread, tiny_config

from fewstep.distill.distribution_matching import NetworkDenoiser, dm_gradient, dm_surrogate_loss
from fewstep.distill.loop import Trainer, train
from fewstep.distill.partitions import (
    PARTITIONS, check_partition, group_sizes, groups_from_routing, partition_classes, routing_table,
)
from fewstep.models import ClassConditionalMLP, MultiStudentModel
from fewstep.samplers import RectifiedFlowPath

REPO = Path(__file__).resolve().parents[2]
MIXTURE_TEACHER = str(REPO / "assets" / "teachers" / "mixture_flow")
MIXTURE_VP_TEACHER = str(REPO / "assets" / "teachers" / "mixture_vp")


def msd_config(run_dir: Path, *overrides: str):
    """Two students of the 2-D mixture flow teacher, tiny batches."""
    return tiny_config(run_dir, "model.type=pretrained", f"model.pretrained={MIXTURE_TEACHER}",
                       "objective={name: msd, num_students: 2, batch_per_student: 8, critic_steps: 2, guidance_scale: 2.0}",
                       "data.batch_size=32", "max_steps=3", "optim.lr=1e-3", *overrides)


# ---------------------------------------------------------------------------------------
# The distribution-matching gradient
# ---------------------------------------------------------------------------------------


def test_dm_gradient_is_zero_when_fake_and_real_denoisers_agree() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 4, 4, generator=generator)
    x0 = torch.randn(6, 3, 4, 4, generator=generator)
    assert torch.equal(dm_gradient(x, x0, x0.clone()), torch.zeros_like(x))
    x = x.requires_grad_(True)
    dm_surrogate_loss(x, dm_gradient(x.detach(), x0, x0.clone())).backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_dm_gradient_is_normalised_per_sample_and_the_surrogate_passes_it_through() -> None:
    generator = torch.Generator().manual_seed(1)
    x, real, fake = (torch.randn(4, 2, 3, generator=generator, dtype=torch.float64) for _ in range(3))
    grad = dm_gradient(x, real, fake)
    for i in range(4):
        expected = (fake[i] - real[i]) / (x[i] - real[i]).abs().mean()
        torch.testing.assert_close(grad[i], expected)
    leaf = x.clone().requires_grad_(True)
    dm_surrogate_loss(leaf, grad).backward()
    torch.testing.assert_close(leaf.grad, (grad / x.numel()).float().double(), rtol=1e-6, atol=1e-9)


def _gaussian_x0(x_t: torch.Tensor, t: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] for x0 ~ N(mean, std^2) on the flow path x_t = (1 - t) x0 + t eps (exact)."""
    a, s = 1 - t, t
    return mean + a * std**2 / (a**2 * std**2 + s**2) * (x_t - a * mean)


def test_one_step_affine_generator_converges_to_a_1d_gaussian_teacher() -> None:
    """DMD with exact real and fake scores moves G(z) = a z + b onto N(1.5, 0.5^2)."""
    generator = torch.Generator().manual_seed(0)
    target_mean, target_std = torch.tensor(1.5), torch.tensor(0.5)
    a = torch.tensor(1.0, requires_grad=True)
    b = torch.tensor(0.0, requires_grad=True)
    optimizer = torch.optim.Adam([a, b], lr=0.01)
    for _ in range(1500):
        z = torch.randn(256, 1, generator=generator)
        x = a * z + b
        t = 0.02 + 0.96 * torch.rand(256, 1, generator=generator)
        x_t = (1 - t) * x.detach() + t * torch.randn(256, 1, generator=generator)
        real = _gaussian_x0(x_t, t, target_mean, target_std)
        fake = _gaussian_x0(x_t, t, b.detach(), a.detach().abs())  # the generator's own exact denoiser
        optimizer.zero_grad()
        dm_surrogate_loss(x, dm_gradient(x.detach(), real, fake)).backward()
        optimizer.step()
    assert abs(b.item() - 1.5) < 0.05
    assert abs(abs(a.item()) - 0.5) < 0.05


def test_network_denoiser_matches_the_samplers_conversion_at_per_sample_times() -> None:
    from fewstep.samplers import Denoiser

    net = ClassConditionalMLP(dim=2, width=16, num_blocks=1, num_class_embeds=3).eval()
    path = RectifiedFlowPath()
    x, labels = torch.randn(5, 2), torch.tensor([0, 1, 2, 0, 1])
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    ours = NetworkDenoiser(net, path, "flow_prediction")(x, t, labels)
    for i in range(5):
        reference = Denoiser(net, path, "flow_prediction")(x[i:i + 1], t[i], class_labels=labels[i:i + 1])
        torch.testing.assert_close(ours[i:i + 1], reference)


# ---------------------------------------------------------------------------------------
# Partitions and routing
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", PARTITIONS)
def test_partitions_are_disjoint_balanced_and_cover_every_class(method: str) -> None:
    for num_classes in range(1, 13):
        means = torch.randn(num_classes, 5, generator=torch.Generator().manual_seed(num_classes))
        for k in range(1, num_classes + 1):
            groups = partition_classes(num_classes, k, method, seed=3, class_means=means)
            assert len(groups) == k
            assert sorted(c for g in groups for c in g) == list(range(num_classes))
            sizes = [len(g) for g in groups]
            assert max(sizes) - min(sizes) <= 1 and sorted(sizes) == sorted(group_sizes(num_classes, k))
            assert groups_from_routing(routing_table(groups, num_classes)) == groups


def test_similarity_partition_groups_nearby_class_means() -> None:
    # classes 0, 2, 4 near (0, 0); classes 1, 3, 5 near (10, 10)
    means = torch.tensor([[0.0, 0.0], [10, 10], [0.1, 0], [10, 10.2], [0, 0.2], [10.1, 10]])
    assert partition_classes(6, 2, "similarity", class_means=means) == [[0, 2, 4], [1, 3, 5]]
    assert partition_classes(6, 2, "contiguous") == [[0, 1, 2], [3, 4, 5]]


def test_random_partition_depends_on_the_seed_only() -> None:
    assert partition_classes(10, 3, "random", seed=1) == partition_classes(10, 3, "random", seed=1)
    assert any(partition_classes(10, 3, "random", seed=s) != partition_classes(10, 3, "random", seed=1) for s in range(2, 6))


def test_bad_partitions_are_refused() -> None:
    with pytest.raises(ValueError, match="more than the teacher's 4 classes"):
        partition_classes(4, 5)
    with pytest.raises(ValueError, match="missing \\[3\\], repeated \\[1\\]"):
        check_partition([[0, 1], [1, 2]], 4)
    with pytest.raises(ValueError, match="not a partition"):
        partition_classes(4, 2, "kmeans")


def _students() -> list[ClassConditionalMLP]:
    torch.manual_seed(0)
    return [ClassConditionalMLP(dim=2, width=w, num_blocks=1, num_class_embeds=7).eval() for w in (8, 16, 24)]


def test_routed_batched_output_equals_per_sample_output() -> None:
    students, routing = _students(), [2, 0, 1, 1, 0, 2]
    router = MultiStudentModel.from_students(students, routing).eval()
    x, labels = torch.randn(12, 2), torch.tensor([0, 1, 2, 3, 4, 5, 5, 3, 1, 4, 2, 2])
    timestep = torch.linspace(10, 990, 12)
    batched = router(x, timestep, class_labels=labels).sample
    for i in range(12):
        owner = students[routing[int(labels[i])]]
        single = owner(x[i:i + 1], timestep[i:i + 1], class_labels=labels[i:i + 1]).sample
        torch.testing.assert_close(batched[i:i + 1], single)
    assert router.groups() == [[1, 4], [2, 3], [0, 5]]
    with pytest.raises(ValueError, match="null class 6 has no student"):
        router(x[:1], timestep[:1], class_labels=torch.tensor([6]))


def test_multi_student_model_round_trips_through_save_pretrained(tmp_path) -> None:
    router = MultiStudentModel.from_students(_students(), [2, 0, 1, 1, 0, 2])
    router.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["routing"] == [2, 0, 1, 1, 0, 2] and [s["config"]["width"] for s in config["student_specs"]] == [8, 16, 24]
    loaded = MultiStudentModel.from_pretrained(tmp_path).eval()
    x, labels = torch.randn(6, 2), torch.arange(6)
    torch.testing.assert_close(loaded(x, 500, class_labels=labels).sample, router.eval()(x, 500, class_labels=labels).sample)


def test_routing_tables_that_leave_a_student_idle_or_name_a_missing_one_are_refused() -> None:
    with pytest.raises(ValueError, match="students \\[1\\] own no class"):
        MultiStudentModel.from_students(_students()[:2], [0, 0, 0])
    with pytest.raises(ValueError, match="routed to students outside"):
        MultiStudentModel.from_students(_students()[:2], [0, 1, 2])


# ---------------------------------------------------------------------------------------
# The objective in the loop
# ---------------------------------------------------------------------------------------


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


@pytest.mark.parametrize("gan", [0.0, 0.1])
def test_phases_are_isolated(tmp_path, gan: float) -> None:
    """The generator loss leaves no gradient on the critic (or GAN head); the critic loss none on the student."""
    with single_thread():
        trainer = Trainer(msd_config(tmp_path / "run", f"objective.gan_weight={gan}"))
        objective = trainer.objective
        batch = next(trainer._batches())
        generator = torch.Generator().manual_seed(0)
        objective.loss(batch, 0, generator, "generator")["loss"].backward()
        assert _grads(objective.networks["student_0"]) and _grads(objective.networks["student_1"])
        for name in [n for n in objective.networks if not n.startswith("student_")]:
            assert not _grads(objective.networks[name]), name
        for net in objective.networks.values():
            net.zero_grad(set_to_none=True)
        objective.loss(batch, 0, generator, "critic")["loss"].backward()
        assert _grads(objective.networks["critic_0"]) and _grads(objective.networks["critic_1"])
        if gan:
            assert _grads(objective.networks["head_0"])
        for k in range(2):
            assert not _grads(objective.networks[f"student_{k}"])


def test_critic_and_generator_update_counts_follow_critic_steps(tmp_path) -> None:
    with single_thread():
        trainer = Trainer(msd_config(tmp_path / "run", "objective.critic_steps=3", "max_steps=2"))
        trainer.train()
    critic_opt, student_opt = trainer.optimizers[trainer.phase_names.index("critic")], trainer.optimizers[trainer.phase_names.index("generator")]
    critic_param = next(trainer.objective.networks["critic_1"].parameters())
    student_param = next(trainer.objective.networks["student_1"].parameters())
    assert int(critic_opt.state[critic_param]["step"]) == 6
    assert int(student_opt.state[student_param]["step"]) == 2
    assert trainer.objective.phases == ("critic", "critic", "critic", "generator")


@pytest.mark.parametrize("teacher", [MIXTURE_TEACHER, MIXTURE_VP_TEACHER])
def test_exported_pipeline_reloads_and_matches_the_objectives_samples(tmp_path, teacher: str) -> None:
    from diffusers import DiffusionPipeline

    import fewstep.pipelines  # noqa: F401  (registers the pipelines)

    with single_thread():
        result = train(msd_config(tmp_path / "run", f"model.pretrained={teacher}", "max_steps=2"))
        pipe = DiffusionPipeline.from_pretrained(result.pipeline)
        assert type(pipe).__name__ == "MultiStudentPipeline" and pipe.routing == [0, 0, 0, 0, 1, 1, 1, 1]
        labels = torch.tensor([3, 7, 7, 1, 4])
        images = pipe(class_labels=labels, output_type="pt", generator=torch.Generator().manual_seed(5)).images
        trainer = Trainer(msd_config(tmp_path / "run", f"model.pretrained={teacher}", "max_steps=2"), resume="latest")
        trainer._restore()
        with trainer.ema_weights() as networks:
            expected = trainer.objective.sample(networks, labels, torch.Generator().manual_seed(5), 1)
    torch.testing.assert_close(images, expected, rtol=1e-4, atol=1e-5)
    assert images.std() > 0


def test_fewstep_sample_cli_runs_a_multi_student_pipeline_in_one_step(tmp_path) -> None:
    """`fewstep sample PIPELINE --steps 1` calls each image's student once."""
    from fewstep.pipelines.loading import load_teacher
    from fewstep.pipelines.scoring import generate_images

    with single_thread():
        result = train(msd_config(tmp_path / "run", "max_steps=1"))
        teacher = load_teacher(result.pipeline)
        calls = []
        for student in teacher.network.students:
            student.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
        from fewstep.samplers import get_schedule

        images, labels, nfe = generate_images(teacher, num_images=16, seed=0, batch_size=16, guidance_scale=1.0, device="cpu",
                                              ts=get_schedule("uniform", teacher.path, 1), solver="ddim")
    assert nfe == 1 and sum(calls) == 16 and len(calls) == 2


def test_resume_equals_the_uninterrupted_run(tmp_path) -> None:
    from safetensors.torch import load_file

    def run(folder: str, *extra: str):
        return msd_config(tmp_path / folder, "max_steps=4", "checkpoint_every=2", "checkpoints_total_limit=null", *extra)

    with single_thread():
        full = train(run("full"))
        train(run("cut", "max_steps=2"))
        resumed = train(run("cut"), resume="latest")
    assert resumed.start_step == 2
    a = load_file(str(full.pipeline / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed.pipeline / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Bad input: clear errors before anything is written
# ---------------------------------------------------------------------------------------


def _nothing_written(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def test_more_students_than_classes_is_refused_before_writing(tmp_path) -> None:
    with pytest.raises(ValueError, match="num_students=9 is more than the teacher's 8 classes"):
        Trainer(msd_config(tmp_path / "run", "objective.num_students=9"))
    assert _nothing_written(tmp_path / "run")


def test_critic_steps_below_one_is_refused() -> None:
    from fewstep.distill.objectives.msd import DistributionMatchingOptions

    with pytest.raises(ValueError, match="critic_steps must be >= 1"):
        DistributionMatchingOptions(critic_steps=0)
    with pytest.raises(ValueError, match="student_times must start at 1.0"):
        DistributionMatchingOptions(student_times=[0.5, 0.8])


def test_a_student_with_another_output_shape_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="student makes samples of shape \\(3,\\) but the teacher \\(2,\\)"):
        Trainer(msd_config(tmp_path / "run", "model.type=mlp", "model.dim=3", f"model.teacher={MIXTURE_TEACHER}"))
    assert _nothing_written(tmp_path / "run")


def test_an_unconditional_teacher_is_refused(tmp_path) -> None:
    from diffusers import UNet2DModel

    from fewstep.pipelines import ClassConditionalPipeline, FewStepScheduler

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    ClassConditionalPipeline(unet=unet, scheduler=FewStepScheduler(prediction_type="flow_prediction")).save_pretrained(tmp_path / "uncond")
    with pytest.raises(ValueError, match="not class-conditional"):
        Trainer(msd_config(tmp_path / "run", f"model.pretrained={tmp_path / 'uncond'}"))


def test_resuming_with_another_partition_or_student_count_is_refused(tmp_path) -> None:
    with single_thread():
        train(msd_config(tmp_path / "run", "max_steps=1"))
    with pytest.raises(ValueError, match="another routing"):
        Trainer(msd_config(tmp_path / "run", "max_steps=2", "objective.partition=random", "objective.partition_seed=3"),
                resume="latest")
    with pytest.raises(ValueError, match="written for other networks"):
        Trainer(msd_config(tmp_path / "run", "max_steps=2", "objective.num_students=4"), resume="latest")


def test_gan_head_reads_a_unet_bottleneck() -> None:
    from fewstep.distill.distribution_matching import DiscriminatorHead, FeatureTap, feature_width
    from fewstep.models import small_unet

    unet = small_unet(16, 1, 3, (8, 16), 1, False)
    tap = FeatureTap(unet)
    unet(torch.randn(5, 1, 16, 16), torch.full((5,), 10), class_labels=torch.zeros(5, dtype=torch.long))
    features = tap.take()
    assert features.shape == (5, 16, 8, 8) and feature_width(unet) == 16
    assert DiscriminatorHead(16)(features).shape == (5,)
    with pytest.raises(RuntimeError, match="run the network's forward first"):
        tap.take()


def test_regression_pairs_are_the_teachers_ode_samples_and_enter_the_generator_loss(tmp_path) -> None:
    from fewstep.samplers import get_schedule, sample

    with single_thread():
        trainer = Trainer(msd_config(tmp_path / "run", "objective.regression_weight=0.5", "objective.regression_pairs=20",
                                     "objective.regression_steps=4"))
        item = trainer.dataset[3]
        assert len(item) == 5  # (real x, label, noise, teacher sample, pair label)
        noise, target, label = item[2], item[3], item[4]
        teacher = trainer.teacher
        expected = sample(teacher.guided(2.0), noise[None], get_schedule("logsnr", teacher.path, 4), "dpmpp_2m",
                          class_labels=torch.tensor([int(label)])).x[0]
        torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-6)
        batch = next(trainer._batches())
        logs = trainer.objective.loss(batch, 0, torch.Generator().manual_seed(0), "generator")
    assert logs["regression"] > 0


def test_few_step_students_train_and_sample_at_their_times(tmp_path) -> None:
    with single_thread():
        trainer = Trainer(msd_config(tmp_path / "run", "objective.student_times=[1.0, 0.5]", "max_steps=2"))
        trainer.train()
        labels = torch.tensor([0, 5])
        with trainer.ema_weights() as networks:
            two_step = trainer.objective.sample(networks, labels, torch.Generator().manual_seed(0), 1)
            one_step = trainer.objective.generate(trainer.objective.student(0, networks), labels,
                                                  torch.randn((2, 2), generator=torch.Generator().manual_seed(0)), None, 0)
    assert trainer.objective.signature()["student_times"] == [1.0, 0.5]
    assert not torch.allclose(two_step, one_step)  # the second evaluation (after re-noising to t = 0.5) changed them
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert pipe.student_times == [1.0, 0.5]
    calls = []
    pipe.unet.register_forward_hook(lambda module, args, out: calls.append(float(args[1].reshape(-1)[0])))
    out = pipe(class_labels=labels, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert calls == [1000.0, 500.0] and torch.isfinite(out).all()  # the training times, by default


def test_tsm_student_initialises_smaller_msd_students_while_the_critic_stays_the_teacher(tmp_path) -> None:
    """TSM fits a narrow MLP to the teacher; MSD from it (model.pretrained=TSM, model.teacher=teacher) keeps its size."""
    from safetensors.torch import load_file

    from fewstep.pipelines.loading import load_teacher

    with single_thread():
        tsm = train(tiny_config(tmp_path / "tsm", "model.type=mlp", "model.width=16", "model.num_blocks=1",
                                f"model.teacher={MIXTURE_TEACHER}", "objective.name=tsm", "max_steps=30"))
        assert tsm.losses[-1] < tsm.losses[0]  # it fits the teacher's outputs
        trainer = Trainer(msd_config(tmp_path / "msd", f"model.pretrained={tsm.pipeline}", f"model.teacher={MIXTURE_TEACHER}"))
    student, critic = trainer.objective.networks["student_1"], trainer.objective.networks["critic_1"]
    assert student.config.width == 16 and critic.config.width == load_teacher(MIXTURE_TEACHER).network.config.width
    tsm_weights = load_file(str(tsm.pipeline / "unet" / "diffusion_pytorch_model.safetensors"))
    for name, value in student.state_dict().items():
        torch.testing.assert_close(value, tsm_weights[name])


def test_model_teacher_satisfies_objectives_that_need_a_teacher_and_is_refused_by_those_that_use_none() -> None:
    from fewstep.distill.config import load_config

    config = load_config(None, ["objective.name=tsm", "model.type=unet", f"model.teacher={MIXTURE_TEACHER}"])
    assert config.model.teacher == MIXTURE_TEACHER
    with pytest.raises(ValueError, match="learns from a teacher"):
        load_config(None, ["objective.name=tsm", "model.type=unet"])
    with pytest.raises(ValueError, match="does not start from a pretrained pipeline or use a teacher"):
        load_config(None, ["objective.name=masked_diffusion", "model.type=masked_transformer", "model.vocab_size=5",
                           f"model.teacher={MIXTURE_TEACHER}"])
