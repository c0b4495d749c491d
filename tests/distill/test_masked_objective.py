"""The masked-diffusion objective's time draw: one t per sequence, stratified over the batch (one per stratum)."""

from __future__ import annotations

import pytest
import torch

from fewstep.models import MaskedDiffusionTransformer
from fewstep.distill.objectives.masked_diffusion import masked_nelbo_terms
from fewstep.samplers.discrete import LogLinearMaskPath

T_MIN = 1e-3  # masked_nelbo_terms' default


class RecordingPath(LogLinearMaskPath):
    """The log-linear path, remembering every t the objective asks the mask probability of."""

    def __init__(self) -> None:
        super().__init__(1e-3)
        self.times: list[torch.Tensor] = []

    def mask_prob(self, t):
        self.times.append(torch.as_tensor(t).detach().double().clone())
        return super().mask_prob(t)


@pytest.fixture(scope="module")
def model() -> MaskedDiffusionTransformer:
    torch.manual_seed(0)
    return MaskedDiffusionTransformer(vocab_size=5, seq_len=8, dim=16, num_layers=1, num_heads=2).eval()


@pytest.mark.parametrize("batch", [1, 2, 5, 16])
def test_each_sequence_draws_its_time_from_its_own_stratum(model, batch: int) -> None:
    x0 = torch.randint(0, 5, (batch, 8), generator=torch.Generator().manual_seed(batch))
    offsets = []
    for seed in range(6):
        path = RecordingPath()
        masked_nelbo_terms(model, x0, path, torch.Generator().manual_seed(seed), t_min=T_MIN)
        t = path.times[0]  # mask_prob(t) of the masking (unmask_rate may ask again for the same t)
        assert all(torch.equal(other, t) for other in path.times)
        assert t.shape == (batch,) and ((T_MIN <= t) & (t <= 1)).all()
        u = (t - T_MIN) / (1 - T_MIN)  # back to the stratified draw in [0, 1)
        strata = torch.floor(u * batch + 1e-6).clamp(max=batch - 1).long()
        # one draw in every stratum [i/B, (i+1)/B): the strata form a permutation of 0..B-1
        assert sorted(strata.tolist()) == list(range(batch)), (seed, u)
        offsets.append(float(torch.sort(u).values[0]))
    # the draws are random (different per generator), not a fixed grid
    assert len({round(o, 6) for o in offsets}) == len(offsets)


def test_the_time_draw_depends_only_on_the_generator(model) -> None:
    """Exact resume needs the loss to be a pure function of (batch, generator)."""
    x0 = torch.randint(0, 5, (4, 8), generator=torch.Generator().manual_seed(0))
    a, b = RecordingPath(), RecordingPath()
    first = masked_nelbo_terms(model, x0, a, torch.Generator().manual_seed(7))
    second = masked_nelbo_terms(model, x0, b, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.times[0], b.times[0], rtol=0, atol=0)
    torch.testing.assert_close(first[0], second[0])
