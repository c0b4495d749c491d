"""fit_sampler scores held-out noises with their own conditioning (class labels), never the training ones."""

import pytest
import torch

from fewstep.samplers import GaussianMixture, RectifiedFlowPath, get_schedule, sample
from fewstep.samplers.learned import fit_sampler, teacher_outputs

PATH = RectifiedFlowPath()


class LabelShiftedDenoiser(torch.nn.Module):
    """The exact mixture denoiser, shifted by 0.5 * label: the class label matters to the output."""

    def __init__(self):
        super().__init__()
        self.base = GaussianMixture.random(3, 4, std=0.3, seed=0).denoiser(PATH)
        self.path = PATH

    def forward(self, x, t, class_labels):
        return self.base(x, t) + 0.5 * class_labels.to(x.dtype)[:, None]


def test_heldout_error_uses_the_heldout_labels():
    denoiser = LabelShiftedDenoiser()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(40, 4, generator=g, dtype=torch.float64)
    labels = torch.arange(40) % 3
    targets = teacher_outputs(denoiser, noise, 40, class_labels=labels)
    train, held = slice(0, 31), slice(31, 40)  # 31 % 3 != 0: the first labels are not the held-out ones
    with pytest.warns(UserWarning, match="never beat the analytic starting point"):  # 0 iterations: the start
        _, history = fit_sampler(denoiser, 3, noise[train], targets[train], learn="grid", init_schedule="uniform",
                                 iterations=0, cond={"class_labels": labels[train]},
                                 heldout=(noise[held], targets[held], {"class_labels": labels[held]}))
    with torch.no_grad():
        start = sample(denoiser, noise[held], get_schedule("uniform", PATH, 3), "dpmpp_2m", class_labels=labels[held]).x
    assert history.heldout_before == pytest.approx(float((start - targets[held]).pow(2).mean().sqrt()), rel=1e-9)
    with pytest.raises(ValueError, match="needs the held-out noises' own conditioning"):
        fit_sampler(denoiser, 3, noise[train], targets[train], iterations=0, cond={"class_labels": labels[train]},
                    heldout=(noise[held], targets[held]))
