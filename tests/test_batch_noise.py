"""fewstep.batch_noise: per-sample draws that do not depend on how a global batch is split over processes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewstep import batch_noise
from fewstep.batch_noise import ShardedGenerator
from fewstep.distill.loop import step_generator
from fewstep.distill.objectives.base import as_forward
from fewstep.distill.processes import shard_map

DRAWS = {
    "randn": lambda g, rows: batch_noise.randn((rows, 3), g),
    "rand": lambda g, rows: batch_noise.rand((rows,), g, dtype=torch.float64),
    "randint": lambda g, rows: batch_noise.randint(2, 9, (rows, 2), g),
    "stratified": lambda g, rows: batch_noise.stratified(rows, g),
}


def sharded(seed: int, rank: int, world: int) -> ShardedGenerator:
    generator = ShardedGenerator("cpu", rank, world)
    generator.manual_seed(seed)
    return generator


@pytest.mark.parametrize("kind", list(DRAWS))
@pytest.mark.parametrize("world", [2, 3])
def test_the_shards_of_a_draw_are_the_whole_batchs_draw(kind: str, world: int) -> None:
    draw = DRAWS[kind]
    whole = draw(torch.Generator().manual_seed(7), 4 * world)
    for rank in range(world):
        generator = sharded(7, rank, world)
        first, second = draw(generator, 4), draw(generator, 4)  # the generator stays in step with the whole batch's
        assert torch.equal(first, whole[4 * rank: 4 * rank + 4])
        assert torch.equal(second, draw(_advanced(7, kind, 4 * world), 4 * world)[4 * rank: 4 * rank + 4])


def _advanced(seed: int, kind: str, rows: int) -> torch.Generator:
    generator = torch.Generator().manual_seed(seed)
    DRAWS[kind](generator, rows)
    return generator


def test_one_value_per_micro_batch_is_the_same_on_every_process() -> None:
    values = {int(torch.randint(100, (1,), generator=step_generator(0, 5, 1, "critic", torch.device("cpu"), rank, 4)))
              for rank in range(4)}
    assert len(values) == 1


def test_ranks_see_different_rows_and_a_plain_generator_draws_as_torch() -> None:
    a, b = batch_noise.randn((5, 2), sharded(0, 0, 2)), batch_noise.randn((5, 2), sharded(0, 1, 2))
    assert not torch.allclose(a, b)
    assert torch.equal(batch_noise.rand((6,), torch.Generator().manual_seed(3)), torch.rand(6, generator=torch.Generator().manual_seed(3)))
    assert batch_noise.shard(None) == (0, 1)


def test_stratified_draws_cover_every_stratum_of_the_global_batch() -> None:
    rows = torch.cat([batch_noise.stratified(3, sharded(1, rank, 2)) for rank in range(2)])
    assert sorted(torch.floor(rows * 6).long().tolist()) == list(range(6))


def test_bad_shards_and_scalar_draws_are_refused() -> None:
    with pytest.raises(ValueError, match="rank must be in"):
        ShardedGenerator("cpu", 2, 2)
    with pytest.raises(ValueError, match="needs a batch dimension"):
        batch_noise.randn((), sharded(0, 0, 2))


def test_shard_map_in_one_process_makes_every_item_in_order() -> None:
    assert shard_map(lambda i: i * i, 5) == [0, 1, 4, 9, 16]
    assert shard_map(lambda i: i, 0) == []


class Codec(nn.Module):
    def forward(self, x):
        return x + 100

    def encode(self, x):
        return 2 * x


class Wrapper(nn.Module):
    """Stands for DDP: does its own work around the inner module's forward."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module, self.calls = module, 0

    def forward(self, *args):
        self.calls += 1
        return self.module(*args)


def test_as_forward_runs_another_method_through_the_wrapper_and_restores_forward() -> None:
    inner = Codec()
    wrapped = Wrapper(inner)
    assert as_forward(wrapped, lambda m, x: m.encode(x), torch.ones(2)).tolist() == [2.0, 2.0]
    assert wrapped.calls == 1  # the wrapper's forward ran
    assert inner(torch.zeros(1)).item() == 100  # the class's forward is back
    patched = lambda x: x - 1  # noqa: E731  (accelerate patches instance forwards for autocast)
    inner.forward = patched
    assert as_forward(inner, lambda m, x: m.encode(x), torch.ones(1)).item() == 2
    assert inner.forward is patched
