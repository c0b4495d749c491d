"""Several networks per run (a generator and its critic), and objectives that know their teacher (reflow on a VP teacher)."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from fewstep.data import mixture_parameters
from fewstep.distill.loop import Trainer, list_checkpoints, train
from fewstep.samplers import Denoiser, RectifiedFlowPath, sample

import toy_gan  # noqa: F401  (registers objective.name=toy_gan)
from distill_helpers import single_thread, tiny_config

TEACHERS = Path(__file__).resolve().parents[2] / "assets" / "teachers"
GAN = ["objective.name=toy_gan", "data.options={n: 256}", "optim.ema_decay=0.8", "optim.lr=1e-3"]


def exported(pipeline: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(str(pipeline / name / "diffusion_pytorch_model.safetensors")) for name in ("generator", "critic")}


def test_two_networks_train_resume_bit_exactly_and_export_both(tmp_path: Path) -> None:
    overrides = [*GAN, "max_steps=8", "checkpoint_every=4"]
    with single_thread():
        full = train(tiny_config(tmp_path / "full", *overrides))
        train(tiny_config(tmp_path / "cut", *overrides[:-2], "max_steps=4", "checkpoint_every=4"))
        checkpoint = list_checkpoints(tmp_path / "cut")[-1]
        assert sorted(p.name for p in (checkpoint / "ema").iterdir()) == ["critic", "generator"]
        resumed = train(tiny_config(tmp_path / "cut", *overrides), resume="latest")
    assert resumed.start_step == 4 and resumed.losses == full.losses[4:]
    # each phase has its own optimizer and its losses are logged separately
    assert (checkpoint / "optimizer.bin").is_file() and (checkpoint / "optimizer_1.bin").is_file()
    full_w, resumed_w = exported(full.pipeline), exported(resumed.pipeline)
    for name in ("generator", "critic"):
        assert full_w[name].keys() == resumed_w[name].keys()
        assert all(torch.equal(full_w[name][k], resumed_w[name][k]) for k in full_w[name])
    # both networks moved, and the export holds the EMA (not the raw) weights
    with single_thread():
        trainer = Trainer(tiny_config(tmp_path / "probe", *GAN, "max_steps=1"))
    start = {name: net.state_dict() for name, net in trainer.networks().items()}
    for name in ("generator", "critic"):
        assert any(not torch.equal(start[name][k], full_w[name][k]) for k in full_w[name])


def test_two_network_losses_are_logged_per_phase(tmp_path: Path) -> None:
    with single_thread():
        trainer = Trainer(tiny_config(tmp_path / "run", *GAN, "max_steps=1"))
        trainer._init_run()
        logs = trainer.train_step(0, trainer._batches())
    assert {"critic/loss", "generator/loss", "critic/lr", "generator/lr"} <= set(logs)


def mixture_error(points: torch.Tensor, labels: torch.Tensor) -> float:
    """RMS distance of each point to its class's component mean (8gaussians, component std 0.1)."""
    means = torch.as_tensor(mixture_parameters("8gaussians")["means"], dtype=points.dtype)
    return float((points - means[labels]).pow(2).sum(1).mean().sqrt())


def test_reflow_turns_a_vp_teachers_ode_pairs_into_a_one_step_flow_student(tmp_path: Path) -> None:
    """The VP teacher's (noise, sample) coupling trains a flow whose ONE Euler step lands near the mixture."""
    config = tiny_config(tmp_path / "run", "model.type=pretrained", f"model.pretrained={TEACHERS / 'mixture_vp'}",
                         "objective.name=reflow", "objective.num_noises=1024", "objective.fine_steps=25",
                         "data.batch_size=128", "optim.lr=2e-3", "optim.ema_decay=0", "max_steps=300")
    labels = torch.arange(8).repeat_interleave(64)
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(7))
    one_step = torch.tensor([1.0, 0.0], dtype=torch.float64)

    def one_step_error(network) -> float:
        with torch.no_grad():
            x = sample(Denoiser(network, RectifiedFlowPath(), "flow_prediction"), noise, one_step, "ddim", class_labels=labels).x
        return mixture_error(x, labels)

    with single_thread():
        trainer = Trainer(config)
        teacher = trainer.teacher
        assert teacher.path.kind == "vp" and trainer.objective.path.kind == "flow"
        pairs, pair_labels = trainer.dataset.tensors
        teacher_error = mixture_error(pairs[:, 1].double(), pair_labels)  # the teacher's own ODE samples
        before = one_step_error(trainer.networks()["model"])
        result = trainer.train()
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(result.pipeline)
    assert pipe.scheduler.config.prediction_type == "flow_prediction"  # exported as a flow
    after = one_step_error(pipe.unet)
    print(f"one-step error: before {before:.3f}, after {after:.3f}, teacher ODE samples {teacher_error:.3f}")
    assert before > 1.0  # the VP weights read as a velocity are far off
    assert after < 0.5 * before and after < teacher_error + 0.35, (before, after, teacher_error)


def test_fewstep_train_imports_a_module_that_registers_its_objective(tmp_path: Path, monkeypatch, capsys) -> None:
    """An objective outside fewstep: `fewstep train --import MODULE` registers it, then trains and exports it."""
    from fewstep.cli import main

    (tmp_path / "my_objectives.py").write_text((Path(__file__).parent / "toy_gan.py").read_text().replace('"toy_gan"', '"my_gan"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "c.yaml"
    config.write_text("objective:\n  name: my_gan\n  critic_width: 16\nmodel:\n  width: 32\n  num_blocks: 1\n"
                      "data:\n  options: {n: 256}\n  batch_size: 64\n")
    args = ["train", "--import", "my_objectives", str(config), "max_steps=2", "log_with=none", f"run_dir={tmp_path / 'run'}"]
    with single_thread():
        assert main(args) == 0
    assert (tmp_path / "run" / "pipeline" / "critic" / "config.json").is_file()
    assert main(["train", "--import", "no_such_module_xyz", str(config)]) == 2
    assert "--import no_such_module_xyz: cannot import it" in capsys.readouterr().err
