"""Resume under damage: a damaged newest checkpoint falls back to the newest intact one (named in a warning),
damaged files are named in errors, `kill -9` + `--resume latest` is bit-identical to an uninterrupted run, and
tensorboard shows every step once after a resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distill_helpers import single_thread, tiny_config
from safetensors.torch import load_file

from fewstep.cli import main
from fewstep.distill.config import save_config
from fewstep.distill.loop import (
    CheckpointFallbackWarning,
    DamagedCheckpointError,
    list_checkpoints,
    read_checkpoint_state,
    train,
    verify_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parent
#: checkpoints at steps 3 and 6 (and 8 at the end); every checkpoint is kept.
OVERRIDES = ["max_steps=8", "checkpoint_every=3", "checkpoints_total_limit=null", "data.options={n: 200}"]


def _ema_weights(pipeline: Path) -> dict[str, torch.Tensor]:
    return load_file(str(pipeline / "unet" / "diffusion_pytorch_model.safetensors"))


def _interrupt_at(stop: int):
    def eval_fn(sample_fn, step: int) -> dict[str, float]:
        if step == stop:
            raise KeyboardInterrupt
        return {}

    return eval_fn


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(the uninterrupted run's result, a run folder interrupted after its step-6 checkpoint)."""
    root = tmp_path_factory.mktemp("resume")
    with single_thread():
        full = train(tiny_config(root / "full", *OVERRIDES))
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(root / "cut", *OVERRIDES, "eval_every=3"), eval_fn=_interrupt_at(6))
    assert [p.name for p in list_checkpoints(root / "cut")] == ["step_000003", "step_000006"]
    return full, root / "cut"


def _copy(cut: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(cut, run)
    return run


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _damage(file: Path, how: str) -> None:
    if how == "truncate":
        _truncate(file)
    elif how == "delete":
        file.unlink()
    else:  # garbage
        file.write_bytes(b"{ not what was saved")


@pytest.mark.parametrize("name, how", [
    ("model.safetensors", "truncate"),
    ("model.safetensors", "delete"),
    ("optimizer.bin", "truncate"),
    ("ema/model/ema_weights.safetensors", "truncate"),
    ("ema/model/ema_state.json", "garbage"),
    ("trainer_state.json", "garbage"),
    ("random_states_0.pkl", "truncate"),
])
def test_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(runs, tmp_path, name, how) -> None:
    full, cut = runs
    run = _copy(cut, tmp_path)
    _damage(run / "checkpoints" / "step_000006" / name, how)
    with single_thread(), pytest.warns(CheckpointFallbackWarning) as caught:
        resumed = train(tiny_config(run, *OVERRIDES), resume="latest")
    message = str(caught[0].message)
    assert name in message and "step_000006" in message and "step_000003" in message, message
    assert "pytorch_model.bin" not in message
    # resumed from step 3, and the result is exactly the uninterrupted run's
    assert resumed.start_step == 3
    assert resumed.losses == full.losses[3:]
    full_w, resumed_w = _ema_weights(full.pipeline), _ema_weights(resumed.pipeline)
    assert all(torch.equal(full_w[k], resumed_w[k]) for k in full_w)
    verify_checkpoint(run / "checkpoints" / "step_000006")  # rewritten intact by the resumed run


def test_a_damaged_checkpoint_given_by_path_is_an_error_naming_the_file(runs, tmp_path) -> None:
    run = _copy(runs[1], tmp_path)
    step6 = run / "checkpoints" / "step_000006"
    (step6 / "model.safetensors").unlink()
    with pytest.raises(DamagedCheckpointError, match=r"model\.safetensors is missing") as info:
        train(tiny_config(run, *OVERRIDES), resume=str(step6))
    assert "pytorch_model.bin" not in str(info.value)
    assert isinstance(info.value, ValueError)  # the CLI prints it as one line
    _truncate(run / "checkpoints" / "step_000003" / "optimizer.bin")
    with pytest.raises(DamagedCheckpointError, match=r"step_000003/optimizer\.bin is damaged"):
        train(tiny_config(run, *OVERRIDES), resume=str(run / "checkpoints" / "step_000003"))


def test_every_checkpoint_damaged_is_an_error_listing_them_and_nothing_is_written(runs, tmp_path) -> None:
    run = _copy(runs[1], tmp_path)
    _truncate(run / "checkpoints" / "step_000006" / "model.safetensors")
    (run / "checkpoints" / "step_000003" / "trainer_state.json").write_text('{"step": 3,')
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    with pytest.raises(DamagedCheckpointError) as info:
        train(tiny_config(run, *OVERRIDES), resume="latest")
    message = str(info.value)
    assert "step_000006/model.safetensors" in message and "step_000003/trainer_state.json" in message
    assert "new run_dir" in message
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_cli_names_the_damaged_file_in_one_line(runs, tmp_path, capsys) -> None:
    run = _copy(runs[1], tmp_path)
    for step in ("step_000003", "step_000006"):
        (run / "checkpoints" / step / "model.safetensors").unlink()
    config = tmp_path / "c.yaml"
    save_config(tiny_config(run, *OVERRIDES), config)
    assert main(["train", str(config), "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert "fewstep train: error:" in err and "model.safetensors is missing" in err
    assert "Traceback" not in err and "pytorch_model.bin" not in err


def test_broken_trainer_state_is_named(runs, tmp_path) -> None:
    run = _copy(runs[1], tmp_path)
    state = run / "checkpoints" / "step_000006" / "trainer_state.json"
    state.write_text("{\"step\": 6,\n \"networks\": ")
    with pytest.raises(ValueError, match=r"step_000006/trainer_state\.json is damaged.*line 2"):
        read_checkpoint_state(state.parent, {})
    with pytest.raises(ValueError, match=r"step_000006/trainer_state\.json is damaged"):
        train(tiny_config(run, *OVERRIDES), resume=str(state.parent))


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
import torch
sys.path.insert(0, {helpers!r})
from distill_helpers import tiny_config
from fewstep.distill.loop import train

torch.set_num_threads(1)

def kill_at_8(sample_fn, step):
    if step == 8:
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no clean-up, no flush
    return {{}}

train(tiny_config(Path(sys.argv[1]), *sys.argv[2:]), eval_fn=kill_at_8)
"""


def _scalars(logs: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logs / "train"))
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def test_kill_9_then_resume_latest_is_bit_identical_and_tensorboard_has_every_step_once(tmp_path) -> None:
    overrides = ["max_steps=10", "checkpoint_every=3", "log_every=1", "log_with=tensorboard", "eval_every=4",
                 "optim.gradient_accumulation_steps=2", "optim.lr_scheduler=cosine", "optim.lr_warmup_steps=2",
                 "data.options={n: 200}"]
    with single_thread():
        full = train(tiny_config(tmp_path / "full", *overrides), eval_fn=lambda sample_fn, step: {})
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", KILLED_RUN.format(helpers=str(HELPERS)), str(run), *overrides],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert [p.name for p in list_checkpoints(run)] == ["step_000003", "step_000006"]
    with single_thread():
        resumed = train(tiny_config(run, *overrides), resume="latest")
    assert resumed.start_step == 6
    assert resumed.losses == full.losses[6:]  # bit-identical, step by step
    full_w, resumed_w = _ema_weights(full.pipeline), _ema_weights(resumed.pipeline)
    assert all(torch.equal(full_w[k], resumed_w[k]) for k in full_w)
    # steps 1..6 come from the killed run (flushed with its checkpoint), 7..10 from the resumed one
    for tag in ("loss", "lr"):
        logged, expected = _scalars(run / "logs", tag), _scalars(tmp_path / "full" / "logs", tag)
        assert [step for step, _ in logged] == list(range(1, 11)), tag
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6), tag


def test_tensorboard_has_no_duplicate_steps_after_a_resume(tmp_path) -> None:
    """The interrupted run logged steps 7 and 8 after its last checkpoint (6); the resumed run logs them again."""
    overrides = ["max_steps=10", "checkpoint_every=3", "log_every=1", "log_with=tensorboard", "data.options={n: 200}"]
    with single_thread():
        full = train(tiny_config(tmp_path / "full", *overrides))
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(tmp_path / "run", *overrides, "eval_every=4"), eval_fn=_interrupt_at(8))
        train(tiny_config(tmp_path / "run", *overrides), resume="latest")
    logged = _scalars(tmp_path / "run" / "logs", "loss")
    assert [step for step, _ in logged] == list(range(1, 11))
    assert [v for _, v in logged] == pytest.approx(full.losses, rel=1e-6)
