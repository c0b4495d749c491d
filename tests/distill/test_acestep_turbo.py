"""ACE-Step-style turbo: fixed grids, the exported guidance-free pipeline, DMD shared with MSD, regression, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AceStepPipeline, DiffusionPipeline
from distill_helpers import single_thread

import fewstep.pipelines  # noqa: F401  (registers AceStepTurboPipeline with diffusers)
from fewstep.distill import distribution_matching
from fewstep.distill.config import load_config
from fewstep.distill.loop import Trainer, train
from fewstep.distill.objectives.acestep_turbo import AceStepTurboOptions, euler_chain, velocity
from fewstep.pipelines.music import load_music_pipeline, load_music_teacher, music_conditions
from fewstep.pipelines.turbo import AceStepTurboPipeline, acestep_times, select_grid, student_grids

REPO = Path(__file__).resolve().parents[2]
TEACHER = REPO / "assets" / "music" / "generator"
PROMPTS = ["piano, 120 bpm, C major", "guitar, 90 bpm, A minor"]
LYRICS = ["la lo", "na ni"]


def turbo_config(run_dir: Path, *overrides: str):
    return load_config(None, ["model.type=pretrained", f"model.pretrained={TEACHER}", "objective.name=acestep_turbo",
                              "objective.steps=[8, 1]", "data.name=music", "data.options={n_train: 8, n_test: 4}",
                              "data.batch_size=4", "log_with=none", "checkpoint_every=0", "optim.lr=1e-3",
                              "optim.ema_decay=0.9", "max_steps=2", f"run_dir={run_dir}", *overrides])


@pytest.fixture(scope="module")
def turbo(tmp_path_factory) -> Path:
    """A DMD turbo student (grids: 8 and 1 steps at shifts 3, 2, 1) after two training steps, exported."""
    with single_thread():
        return train(turbo_config(tmp_path_factory.mktemp("turbo") / "run")).pipeline


def _nothing_written(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


# -- the grids -----------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [8, 4, 1])
@pytest.mark.parametrize("shift", [1.0, 2.0, 3.0])
def test_grids_are_the_pipelines_own_schedule(steps: int, shift: float) -> None:
    theirs = AceStepPipeline._get_timestep_schedule(None, num_inference_steps=steps, shift=shift, dtype=torch.float64)
    assert acestep_times(steps, shift) == pytest.approx(theirs.tolist(), abs=1e-12)


def test_a_custom_grid_must_start_at_noise_and_decrease() -> None:
    assert student_grids([8], [3.0], [1.0, 0.5, 0.1]) == [{"steps": 3, "shift": None, "times": [1.0, 0.5, 0.1]}]
    for times in ([1.0, 0.5, 0.7], [1.0, 0.5, 0.5], [0.9, 0.5], [1.0, 0.5, 0.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="strictly decrease"):
            AceStepTurboOptions(times=times)


def test_grid_selection_defaults_and_refusals() -> None:
    grids = student_grids([8, 4], [3.0, 1.0])
    assert select_grid(grids, None, None) == {"steps": 8, "shift": 3.0, "times": acestep_times(8, 3.0)}
    assert select_grid(grids, 4, 1.0)["times"] == acestep_times(4, 1.0)
    with pytest.raises(ValueError, match="runs 8 / 4 steps.*num_inference_steps=5"):
        select_grid(grids, 5, None)
    with pytest.raises(ValueError, match="shift 3, 1 for 8 steps, not shift=2"):
        select_grid(grids, 8, 2.0)


# -- the exported pipeline -----------------------------------------------------------------


def test_exported_time_lists_match_the_training_grids_for_each_shift(turbo) -> None:
    pipe = AceStepTurboPipeline.from_pretrained(str(turbo))
    assert pipe.student_grids == student_grids([8, 1], [3.0, 2.0, 1.0])
    info = json.loads((turbo / "music.json").read_text())
    assert info["turbo"]["grids"] == pipe.student_grids and info["teacher"] == str(TEACHER)
    assert DiffusionPipeline.from_pretrained(str(turbo)).__class__ is AceStepTurboPipeline
    pipe.set_progress_bar_config(disable=True)
    for grid in pipe.student_grids:
        seen: list[float] = []
        pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(float(kw["timestep"][0])), with_kwargs=True)
        pipe(prompt=PROMPTS[0], lyrics=LYRICS[0], audio_duration=1.0, num_inference_steps=grid["steps"],
             shift=grid["shift"], output_type="latent")
        assert seen == pytest.approx(grid["times"], abs=1e-6)
        pipe.transformer._forward_pre_hooks.clear()
    assert pipe.default_inference_steps == 8


def test_the_pipeline_refuses_other_step_counts_shifts_grids_and_guidance(turbo) -> None:
    pipe = load_music_pipeline(turbo)
    for kwargs, message in (({"num_inference_steps": 60}, "runs 8 / 1 steps"), ({"shift": 2.5}, "not shift=2.5"),
                            ({"timesteps": [1.0, 0.5]}, "only its trained grids"), ({"guidance_scale": 4.0}, "guidance")):
        with pytest.raises(ValueError, match=message):
            pipe(prompt=PROMPTS[0], audio_duration=1.0, **kwargs)
    with pytest.raises(ValueError, match="solver or sampler spec does not apply"):
        load_music_pipeline(turbo, solver="dpmpp_2m")


@pytest.mark.parametrize("loader", [AceStepTurboPipeline, AceStepPipeline])
def test_one_network_call_per_step_with_one_row_per_clip(turbo, loader) -> None:
    """Guidance-free: the turbo pipeline and even a plain AceStepPipeline asked for guidance run one call per step."""
    pipe = loader.from_pretrained(str(turbo))
    pipe.set_progress_bar_config(disable=True)
    rows: list[int] = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["hidden_states"].shape[0]), with_kwargs=True)
    kwargs = {"guidance_scale": 7.0, "timesteps": acestep_times(8, 3.0)} if loader is AceStepPipeline else {}
    pipe(prompt=PROMPTS, lyrics=LYRICS, audio_duration=1.0, output_type="latent", **kwargs)
    assert rows == [2] * 8


def test_the_student_chain_is_what_the_pipeline_samples(turbo) -> None:
    pipe = load_music_pipeline(turbo)
    z = torch.randn(2, 32, 8, generator=torch.Generator().manual_seed(0))
    conditions = music_conditions(pipe, PROMPTS, LYRICS, 1.0)
    for steps, shift in ((8, 2.0), (1, 1.0)):
        ours = euler_chain(pipe.transformer, z, conditions, acestep_times(steps, shift))
        theirs = pipe(prompt=PROMPTS, lyrics=LYRICS, audio_duration=1.0, latents=z, num_inference_steps=steps,
                      shift=shift, output_type="latent").audios
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_backward_simulation_keeps_the_graph_of_the_last_step_only() -> None:
    teacher = load_music_teacher(TEACHER)
    net = teacher.network.requires_grad_(True)
    conditions = music_conditions(teacher.pipeline, PROMPTS, LYRICS, 1.0)
    z = torch.randn(2, 32, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    times = acestep_times(4, 3.0)
    last = euler_chain(net, z, conditions, times, 2, grad="last")
    full = euler_chain(net, z, conditions, times, 2, grad="all")
    torch.testing.assert_close(last, full)
    # "last": the two earlier Euler steps ran without a graph, so z does not reach x0 at step 2 (the network does)
    assert last.requires_grad and torch.autograd.grad(last.sum(), z, allow_unused=True)[0] is None
    (through_all,) = torch.autograd.grad(full.sum(), z)
    assert float(through_all.abs().max()) > 0


# -- training ------------------------------------------------------------------------------


def test_dmd_shares_the_distribution_matching_code_and_gradient_with_msd(tmp_path, monkeypatch) -> None:
    """Both distillers' generator losses go through the one `distribution_matching_loss`, and the gradient reaching
    the student's samples is DMD's (x0_fake - x0_real) / mean|x - x0_real| / numel in both."""
    from test_msd import msd_config

    calls: list[tuple[torch.Tensor, ...]] = []
    shared = distribution_matching.distribution_matching_loss

    def spy(x, x0_real, x0_fake):
        loss, logs = shared(x, x0_real, x0_fake)
        calls.append((x, x0_real.detach(), x0_fake.detach(), loss))
        return loss, logs

    monkeypatch.setattr(distribution_matching, "distribution_matching_loss", spy)
    with single_thread():
        msd = Trainer(msd_config(tmp_path / "msd", "objective.num_students=1"))
        turbo = Trainer(turbo_config(tmp_path / "turbo"))
    for trainer in (msd, turbo):
        calls.clear()
        batch = next(trainer._batches())
        out = trainer.objective.loss(batch, 0, torch.Generator().manual_seed(0), "generator")
        assert len(calls) == 1 and torch.equal(out["loss"], calls[0][3])
        x, x0_real, x0_fake, _ = calls[0]
        (grad,) = torch.autograd.grad(out["loss"], x)
        dims = tuple(range(1, x.ndim))
        expected = (x0_fake - x0_real) / (x.detach() - x0_real).abs().mean(dims, keepdim=True) / x.numel()
        torch.testing.assert_close(grad, expected, atol=1e-9, rtol=1e-5)
        assert float(grad.abs().max()) > 0


def test_the_real_score_is_the_guided_teacher_and_the_fake_score_the_critic(tmp_path, monkeypatch) -> None:
    calls: list[tuple[torch.Tensor, ...]] = []
    shared = distribution_matching.distribution_matching_loss
    monkeypatch.setattr(distribution_matching, "distribution_matching_loss",
                        lambda x, r, f: calls.append((x.detach(), r, f)) or shared(x, r, f))
    noised: list[tuple[torch.Tensor, ...]] = []
    with single_thread():
        trainer = Trainer(turbo_config(tmp_path / "run", "objective.guidance_scale=3.0"))
    objective = trainer.objective
    original = objective.noised
    monkeypatch.setattr(objective, "noised", lambda x, g: noised.append(original(x, g)) or noised[-1])
    batch = next(trainer._batches())
    objective.loss(batch, 0, torch.Generator().manual_seed(1), "generator")
    (x_t, t, _), (_, x0_real, x0_fake) = noised[0], calls[0]
    conditions = objective.conditions(batch)
    null = dict(conditions, encoder_hidden_states=objective.pipe.condition_encoder.null_condition_emb.expand_as(
        conditions["encoder_hidden_states"]))
    with torch.no_grad():
        v_cond, v_null = (velocity(objective.teacher.network, x_t, t, c) for c in (conditions, null))
        v_fake = velocity(objective.networks["critic"], x_t, t, conditions)
    torch.testing.assert_close(x0_real, x_t - t[:, None, None] * (v_null + 3.0 * (v_cond - v_null)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x0_fake, x_t - t[:, None, None] * v_fake, atol=1e-5, rtol=1e-5)


def test_phases_train_their_own_network_and_the_teacher_stays_frozen(tmp_path) -> None:
    with single_thread():
        trainer = Trainer(turbo_config(tmp_path / "run"))
        objective = trainer.objective
        assert objective.phases == ("critic", "critic", "generator")
        student = {id(p) for p in objective.networks["student"].parameters()}
        critic = {id(p) for p in objective.networks["critic"].parameters()}
        assert {id(p) for g in objective.param_groups("critic") for p in g["params"]} == critic
        assert {id(p) for g in objective.param_groups("generator") for p in g["params"]} == student
        before = {k: v.clone() for k, v in objective.teacher.network.state_dict().items()}
        trainer.train()
    after = objective.teacher.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_each_micro_batch_draws_a_step_count_then_a_shift_uniformly(tmp_path) -> None:
    with single_thread():
        trainer = Trainer(turbo_config(tmp_path / "run", "objective.steps=[8, 4, 1]"))
    generator = torch.Generator().manual_seed(0)
    counts: dict[tuple[float, ...], int] = {}
    for _ in range(1800):
        times, k = trainer.objective.draw_grid(generator)
        assert 0 <= k < len(times)
        counts[tuple(times)] = counts.get(tuple(times), 0) + 1
    grids = student_grids([8, 4], [3.0, 2.0, 1.0])
    assert set(counts) == {tuple(g["times"]) for g in grids} | {(1.0,)}
    assert 520 < counts[(1.0,)] < 680  # a third of the draws: 1 step (the same grid at every shift)
    assert all(160 < counts[tuple(g["times"])] < 240 for g in grids)  # a ninth each: 8 or 4 steps at one shift


def test_regression_pairs_are_the_guided_teachers_endpoints_and_the_loss_regresses_them(tmp_path) -> None:
    from fewstep.pipelines.music import plain_cfg

    with single_thread():
        trainer = Trainer(turbo_config(tmp_path / "run", "objective.method=regression", "objective.regression_pairs=4",
                                       "objective.regression_steps=3", "objective.guidance_scale=2.0"))
    objective = trainer.objective
    assert objective.phases == ("generator",) and set(objective.networks) == {"student"}
    noise, target = trainer.dataset.pairs
    pipe = load_music_pipeline(TEACHER)
    with plain_cfg():
        expected = pipe(prompt=trainer.dataset.prompts[:4], lyrics=trainer.dataset.lyrics[:4], audio_duration=2.048,
                        latents=noise, num_inference_steps=3, shift=3.0, guidance_scale=2.0, output_type="latent").audios
    torch.testing.assert_close(target, expected, atol=1e-5, rtol=1e-5)
    batch = next(trainer._batches())
    generator = torch.Generator().manual_seed(0)
    out = objective.loss(batch, 0, generator, "generator")
    times, _ = objective.draw_grid(torch.Generator().manual_seed(0))
    chain = euler_chain(objective.networks["student"], batch["noise"], objective.conditions(batch), times)
    assert float(out["loss"].detach()) == pytest.approx(float(torch.mean((chain.detach() - batch["target"]) ** 2)), rel=1e-5)


def test_training_exports_a_student_that_samples_finite_audio(turbo) -> None:
    pipe = load_music_pipeline(turbo)
    audio = pipe(prompt=PROMPTS, lyrics=LYRICS, audio_duration=1.0, num_inference_steps=1).audios
    assert audio.shape == (2, 1, 32 * 256) and torch.isfinite(audio).all()  # ceil(1 s x 31.25 latents/s) x hop 256


def test_fewstep_sample_runs_the_turbo_student_on_its_default_grid(turbo, tmp_path, capsys) -> None:
    from fewstep.cli import main

    out = tmp_path / "out"
    with single_thread():
        assert main(["sample", str(turbo), "--prompt", PROMPTS[0], "--lyrics", LYRICS[0], "--n", "2", "--out", str(out)]) == 0
    record = json.loads((out / "sampling.json").read_text())
    assert record["steps"] == 8 and record["nfe"] == 8 and record["shift"] is None and len(list(out.glob("*.wav"))) == 2
    capsys.readouterr()
    for extra, message in ((["--steps", "5"], "runs 8 / 1 steps"), (["--shift", "2.5"], "not shift=2.5"),
                           (["--guidance-scale", "3"], "drop --guidance-scale"), (["--solver", "dpmpp_2m"], "does not apply")):
        target = tmp_path / f"bad{extra[0]}"
        assert main(["sample", str(turbo), "--prompt", PROMPTS[0], "--out", str(target), *extra]) == 2
        assert message in capsys.readouterr().err
        assert _nothing_written(target)


# -- bad input -----------------------------------------------------------------------------


def test_a_teacher_that_is_not_the_music_generator_is_refused_before_writing(tmp_path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="distils an ACE-Step-style music generator.*ClassConditionalPipeline"):
        Trainer(turbo_config(run, f"model.pretrained={REPO / 'assets' / 'teachers' / 'mnist_flow'}"))
    assert _nothing_written(run)


def test_a_turbo_student_is_refused_as_a_teacher(turbo, tmp_path) -> None:
    with pytest.raises(ValueError, match="already a distilled turbo student"):
        Trainer(turbo_config(tmp_path / "run", f"model.pretrained={turbo}"))


@pytest.mark.parametrize("override, message", [
    ("objective.times=[1.0, 0.3, 0.6]", "strictly decrease"),
    ("objective.shifts=[0.0]", "time shifts > 0"),
    ("objective.steps=[8, 8]", "twice"),
    ("objective.method=consistency", "not a method"),
    ("objective.guidance_scale=0.5", "guidance_scale must be >= 1"),
])
def test_bad_options_are_refused_before_writing(tmp_path, override: str, message: str) -> None:
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        Trainer(turbo_config(run, override))
    assert _nothing_written(run)


def test_captions_the_teacher_never_saw_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="never saw in training"):
        trainer = Trainer(turbo_config(tmp_path / "run"))
        trainer.objective.check_vocabulary(["banjo, 120 bpm, C major"])


