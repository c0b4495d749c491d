"""Shared fixtures for the trainer tests: tiny configs that train in about a second."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from fewstep.distill.config import TrainConfig, load_config

TINY = [
    "log_with=none", "log_every=5", "checkpoint_every=0", "sample_steps=4", "samples_per_class=2",
    "model.type=mlp", "model.num_classes=8", "model.width=32", "model.num_blocks=1",
    "data.name=8gaussians", "data.options={n: 512}", "data.batch_size=64",
    "optim.lr=3e-3", "optim.ema_decay=0.9",
]


def tiny_config(run_dir: Path, *overrides: str) -> TrainConfig:
    """A 2-D mixture config with a 32-wide MLP; `overrides` are key=value strings."""
    return load_config(None, [*TINY, f"run_dir={run_dir}", *overrides])


class single_thread:
    """Context manager: torch on one thread (the CI machine has two shared cores)."""

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.threads)


def launch_two_processes(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 -m fewstep train CONFIG` on the CPU (gloo), one thread each."""
    return launch_fewstep(["train", str(config)], cwd)


def launch_fewstep(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 -m fewstep ARGV...` on the CPU (gloo), one thread each."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fewstep", *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
