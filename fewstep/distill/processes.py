"""Process groups through accelerate: the same code on one CPU, several CPU processes (gloo) or GPUs."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch


def distributed_without_gpu() -> bool:
    """True under a multi-process launch (torchrun / `accelerate launch --multi_gpu`) on a machine without CUDA.

    accelerate only sets up its gloo MULTI_CPU mode when asked for the CPU; otherwise each
    process would silently work alone.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def process_state() -> Any:
    """accelerate's `PartialState` (rank, world size, barriers), set up for gloo on a machine without CUDA."""
    from accelerate import PartialState

    return PartialState(cpu=distributed_without_gpu())


#: engines `accelerate launch` selects through its config file (assets/accelerate/*.yaml).
ENGINES = ("ddp", "fsdp", "deepspeed")


def launch_engine() -> str:
    """The engine `accelerate launch` chose for this process: "deepspeed", "fsdp", or "ddp" (also plain / one-process runs)."""
    for engine, variable in (("deepspeed", "ACCELERATE_USE_DEEPSPEED"), ("fsdp", "ACCELERATE_USE_FSDP")):
        if os.environ.get(variable, "false").lower() == "true":
            return engine
    return "ddp"


def check_engine_installed(engine: str) -> None:
    """Refuse a DeepSpeed launch when deepspeed is not installed, naming the fix and the alternatives."""
    if engine == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ValueError("this run was launched for DeepSpeed (an accelerate config with distributed_type: DEEPSPEED, e.g. "
                         "assets/accelerate/deepspeed_zero2.yaml) but the deepspeed package is not installed: "
                         "`pip install deepspeed` (it needs a CUDA toolchain), or launch with "
                         "assets/accelerate/fsdp.yaml (the same sharding in PyTorch) or assets/accelerate/ddp.yaml")


def has_accelerator_device() -> bool:
    """True if torch sees a GPU-class device (CUDA, or XPU where torch has it) that FSDP / DeepSpeed can shard onto."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


def check_engine_device(engine: str) -> None:
    """Refuse FSDP / DeepSpeed without a GPU: accelerate's plugins need one (measured: FSDP stops at start-up on a CPU)."""
    if engine in ("fsdp", "deepspeed") and not has_accelerator_device():
        raise ValueError(f"this run was launched for {'FSDP' if engine == 'fsdp' else 'DeepSpeed'}, which accelerate runs "
                         "on GPUs (or XPU / NPU / MLU / HPU) only, and this machine has none; on a CPU launch with "
                         "assets/accelerate/ddp.yaml --num_processes N (gloo) or `accelerate launch --multi_gpu "
                         "--num_processes N` (docs/scaling.md)")


def check_engine_serves(engine: str, objective: str, trained_networks: list[str]) -> None:
    """Refuse an engine that cannot train this objective's networks, naming the alternative (docs/scaling.md)."""
    if engine == "deepspeed" and len(trained_networks) > 1:
        raise ValueError(f"objective.name={objective} trains {len(trained_networks)} networks "
                         f"({', '.join(trained_networks)}), but accelerate's DeepSpeed integration prepares one model per "
                         "Accelerator; launch this objective with assets/accelerate/fsdp.yaml (full shard, the PyTorch "
                         "analogue of ZeRO-3) or assets/accelerate/ddp.yaml (docs/scaling.md)")
