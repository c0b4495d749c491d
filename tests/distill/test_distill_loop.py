"""The accelerate loop: losses fall, resume equals an uninterrupted run, NaN stops cleanly, bad input fails early."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch
import yaml
from distill_helpers import launch_two_processes, single_thread, tiny_config
from safetensors.torch import load_file

from fewstep.distill.config import save_config
from fewstep.distill.loop import NonFiniteLossError, list_checkpoints, train
from fewstep.distill.objectives import FlowMatching


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("objective", [
    ["objective.name=flow_matching"],
    ["objective.name=flow_matching", "objective.time_sampling=logit_normal"],
    ["objective.name=vp_diffusion", "objective.prediction_type=epsilon"],
    ["objective.name=vp_diffusion", "objective.prediction_type=v_prediction"],
])
def test_short_run_lowers_the_loss(tmp_path: Path, objective: list[str]) -> None:
    with single_thread():
        result = train(tiny_config(tmp_path / "run", "max_steps=80", *objective))
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    # the run folder has the resolved config, the sample plot, the checkpoint and the pipeline
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["objective"]["name"] == objective[0].split("=")[1]
    assert (tmp_path / "run" / "samples" / "step_000080.png").is_file()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_000080"]
    assert (result.pipeline / "model_index.json").is_file()


def test_resume_latest_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """Interrupt at step 6 (after its checkpoint), resume with --resume latest: same losses and weights."""
    overrides = ["max_steps=10", "checkpoint_every=3", "optim.gradient_accumulation_steps=2",
                 "optim.lr_scheduler=cosine", "optim.lr_warmup_steps=2", "data.options={n: 200}"]

    def interrupt(sample_fn, step: int) -> dict[str, float]:
        if step == 6:
            raise KeyboardInterrupt
        return {}

    with single_thread():
        full = train(tiny_config(tmp_path / "full", *overrides))
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(tmp_path / "cut", *overrides, "eval_every=3"), eval_fn=interrupt)
        assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["step_000003", "step_000006"]
        resumed = train(tiny_config(tmp_path / "cut", *overrides), resume="latest")
    assert resumed.start_step == 6
    assert resumed.losses == full.losses[6:]  # exact floats, step by step
    full_w, resumed_w = _weights(full.pipeline), _weights(resumed.pipeline)  # EMA weights
    assert all(torch.equal(full_w[k], resumed_w[k]) for k in full_w)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_loss = FlowMatching.loss

    def nan_from_step_7(self, batch, step, generator, phase="main"):
        losses = real_loss(self, batch, step, generator, phase)
        return {"loss": losses["loss"] * float("nan")} if step >= 7 else losses

    monkeypatch.setattr(FlowMatching, "loss", nan_from_step_7)
    run = tmp_path / "run"
    with single_thread(), pytest.raises(NonFiniteLossError) as info:
        train(tiny_config(run, "max_steps=20", "checkpoint_every=5"))
    message = str(info.value)
    assert "loss is nan at step 7" in message and "step_000005" in message and "--resume latest" in message
    assert [p.name for p in list_checkpoints(run)] == ["step_000005"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000005"]  # no temp folders
    assert not (run / "pipeline").exists()
    # the kept checkpoint is complete: resuming from it (without the fault) finishes the run
    monkeypatch.setattr(FlowMatching, "loss", real_loss)
    with single_thread():
        assert train(tiny_config(run, "max_steps=8", "checkpoint_every=5"), resume="latest").start_step == 5


def test_cli_reports_nan_loss_as_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from fewstep.commands.train import run

    monkeypatch.setattr(FlowMatching, "loss", lambda self, batch, step, generator, phase="main": {"loss": torch.tensor(float("nan"), requires_grad=True)})
    config = tmp_path / "c.yaml"
    save_config(tiny_config(tmp_path / "run", "max_steps=3"), config)
    with single_thread():
        code = run(argparse.Namespace(config=str(config), overrides=[], resume=None, run_dir=None))
    assert code == 1 and "loss is nan at step 0" in capsys.readouterr().err


def test_checkpoint_from_another_model_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with single_thread():
        train(tiny_config(run, "max_steps=2"))
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    with pytest.raises(ValueError, match="written for other networks"):
        train(tiny_config(run, "max_steps=4", "model.width=48"), resume="latest")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_existing_run_needs_resume_and_bad_resume_paths_are_named(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with single_thread():
        train(tiny_config(run, "max_steps=1"))
    with pytest.raises(ValueError, match="--resume latest"):
        train(tiny_config(run, "max_steps=2"))
    with pytest.raises(FileNotFoundError, match="not a fewstep checkpoint"):
        train(tiny_config(run, "max_steps=2"), resume=str(tmp_path))


def test_missing_dataset_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.path"):
        train(tiny_config(tmp_path / "run", "data.name=folder", f"data.path={tmp_path / 'missing'}"))
    with pytest.raises(ValueError, match="model.num_classes=8"):
        train(tiny_config(tmp_path / "run", "model.num_classes=2"))
    assert not (tmp_path / "run").exists()


def test_tensorboard_logs_are_written(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with single_thread():
        result = train(tiny_config(tmp_path / "run", "max_steps=10", "log_every=5", "log_with=tensorboard"))
    events = EventAccumulator(str(tmp_path / "run" / "logs" / "train"))
    events.Reload()
    assert {"loss", "grad_norm", "lr"} <= set(events.Tags()["scalars"])
    loss = [(e.step, e.value) for e in events.Scalars("loss")]
    assert [step for step, _ in loss] == [5, 10]  # every log_every steps, numbered by optimizer steps done
    assert [value for _, value in loss] == pytest.approx([result.losses[4], result.losses[9]], rel=1e-6)
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([3e-3, 3e-3])


def test_two_process_accelerate_launch_completes(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    save_config(tiny_config(tmp_path / "run", "max_steps=6", "checkpoint_every=3", "data.batch_size=32"), config)
    done = launch_two_processes(config, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained steps 0..6") == 2  # one line per process
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_000003", "step_000006"]
    assert (tmp_path / "run" / "checkpoints" / "step_000006" / "random_states_1.pkl").is_file()  # both processes saved
    assert (tmp_path / "run" / "pipeline" / "model_index.json").is_file()


def test_export_only_writes_the_checkpoint_ema_as_a_pipeline(tmp_path: Path) -> None:
    from fewstep.commands.train import run

    config = tmp_path / "c.yaml"
    save_config(tiny_config(tmp_path / "run", "max_steps=4", "checkpoint_every=2", "checkpoints_total_limit=null"), config)
    with single_thread():
        final = train(tiny_config(tmp_path / "run", "max_steps=4", "checkpoint_every=2", "checkpoints_total_limit=null"))
        ema_final = _weights(final.pipeline)
        args = argparse.Namespace(config=str(config), overrides=[], resume=str(tmp_path / "run/checkpoints/step_000002"),
                                  run_dir=None, export_only=True)
        assert run(args) == 0
    ema_step2 = _weights(tmp_path / "run" / "pipeline")
    assert ema_step2.keys() == ema_final.keys()
    assert max((ema_step2[k] - ema_final[k]).abs().max().item() for k in ema_final) > 1e-4  # step 2's, not the final
    ckpt = load_file(str(tmp_path / "run/checkpoints/step_000002/ema/model/ema_weights.safetensors"))
    for k in ckpt:  # the exported model is the reloaded checkpoint's EMA (compared with a tolerance)
        torch.testing.assert_close(ema_step2[k], ckpt[k], rtol=1e-6, atol=1e-7)


# -- run_dir is checked before any work --------------------------------------------------


@pytest.fixture
def no_model_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the trainer gets as far as building a model."""
    def refuse(cfg):
        raise AssertionError("a model was built before run_dir was checked")

    monkeypatch.setattr("fewstep.distill.loop.build_model", refuse)


def test_run_dir_that_is_a_file_is_refused_before_any_work(tmp_path: Path, no_model_building) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"run_dir .*file is a file, not a folder"):
        train(tiny_config(tmp_path / "file"))
    with pytest.raises(NotADirectoryError, match=r"cannot be written: .*file is a file, not a folder"):
        train(tiny_config(tmp_path / "file" / "deeper" / "run"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"run/checkpoints is a file"):
        train(tiny_config(tmp_path / "run"))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints", "file", "run"]  # nothing created


def test_read_only_run_dir_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      no_model_building) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway; pretend the folder is on a read-only mount
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == locked
                            else real_access(path, mode, **kw))
    try:
        for run_dir in (locked, locked / "new" / "run"):
            with pytest.raises(PermissionError, match=r"run_dir .*locked.* cannot be written: no permission"):
                train(tiny_config(run_dir))
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_cli_reports_a_bad_run_dir_in_one_line(tmp_path: Path, capsys, no_model_building) -> None:
    from fewstep.cli import main

    (tmp_path / "file").write_text("x")
    config = tmp_path / "c.yaml"
    save_config(tiny_config(tmp_path / "run"), config)
    assert main(["train", str(config), f"run_dir={tmp_path / 'file' / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fewstep train: error: run_dir") and "is a file, not a folder" in err and "Traceback" not in err
