"""Per-sample random draws of a batch that is split over processes (data parallel training).

Under `accelerate launch` every process trains on its rows of one global batch. The training loop
hands objectives a `ShardedGenerator`: seeded alike on every process and knowing this process's
rank among `world`. A per-sample draw through this module draws the *global* batch's values and
keeps this process's rows, so P processes with B rows each draw exactly what one process with
P x B rows draws, and a data-parallel run computes the same losses as a single-process run with
the same global batch (tests/distill/test_data_parallel.py). Draws that are one value per
micro-batch (a step index, a grid choice) are made with torch directly: the shared seed makes
them equal on every process, as in the one-process run.

With a plain `torch.Generator` (one process, sampling, evaluation) these functions are
`torch.randn` / `torch.rand` / `torch.randint`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


class ShardedGenerator(torch.Generator):
    """A `torch.Generator` for process `rank` of `world`, seeded alike on every process (see the module docstring)."""

    rank: int
    world: int

    def __new__(cls, device: torch.device | str = "cpu", rank: int = 0, world: int = 1) -> "ShardedGenerator":
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world) and world >= 1, got rank={rank}, world={world}")
        self = super().__new__(cls, device)
        self.rank, self.world = int(rank), int(world)
        return self

    def __init__(self, device: torch.device | str = "cpu", rank: int = 0, world: int = 1) -> None:
        pass  # set up by __new__ (torch.Generator's own __init__ takes only the device)


def shard(generator: torch.Generator | None) -> tuple[int, int]:
    """(rank, world) of `generator`: (0, 1) for a plain generator or None."""
    if isinstance(generator, ShardedGenerator):
        return generator.rank, generator.world
    return 0, 1


def _rows(draw: Callable[..., Tensor], shape: Sequence[int] | torch.Size, generator: torch.Generator | None,
          **kwargs: Any) -> Tensor:
    """`draw(shape)` of this process's rows: the global batch [world * shape[0], ...] drawn, rows [rank * B, (rank + 1) * B) kept."""
    shape = tuple(int(s) for s in shape)
    rank, world = shard(generator)
    if world == 1:
        return draw(shape, generator=generator, **kwargs)
    if not shape:
        raise ValueError("a per-sample draw needs a batch dimension; draw one value per micro-batch with torch directly")
    rows = shape[0]
    return draw((rows * world, *shape[1:]), generator=generator, **kwargs)[rank * rows : (rank + 1) * rows]


def randn(shape: Sequence[int] | torch.Size, generator: torch.Generator | None, device: torch.device | str | None = None,
          dtype: torch.dtype | None = None) -> Tensor:
    """Standard normal noise [B, ...]: this process's rows of the global batch's draw."""
    return _rows(torch.randn, shape, generator, device=device, dtype=dtype)


def rand(shape: Sequence[int] | torch.Size, generator: torch.Generator | None, device: torch.device | str | None = None,
         dtype: torch.dtype | None = None) -> Tensor:
    """Uniform [0, 1) values [B, ...]: this process's rows of the global batch's draw."""
    return _rows(torch.rand, shape, generator, device=device, dtype=dtype)


def randint(low: int, high: int, shape: Sequence[int] | torch.Size, generator: torch.Generator | None,
            device: torch.device | str | None = None) -> Tensor:
    """Integers in [low, high) [B, ...]: this process's rows of the global batch's draw."""
    return _rows(lambda size, **kw: torch.randint(low, high, size, **kw), shape, generator, device=device)


def stratified(count: int, generator: torch.Generator | None, device: torch.device | str | None = None) -> Tensor:
    """Stratified uniforms [count]: (u + i / N) mod 1 for the global batch's rows i < N, one shared u; this process's rows."""
    rank, world = shard(generator)
    u = torch.rand((), generator=generator, device=device)
    total = count * world
    rows = torch.arange(rank * count, (rank + 1) * count, device=u.device)
    return (u + rows / total) % 1.0
