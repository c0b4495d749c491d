"""Process groups through accelerate: the same code on one CPU, several CPU processes (gloo) or GPUs."""

from __future__ import annotations

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
