"""fit_sampler says when it fails: errors before/after, a warning when nothing improved, t without gradient refused."""

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from fewstep.cli import main
from fewstep.samplers import GaussianMixture, RectifiedFlowPath, get_schedule, sample
from fewstep.samplers.learned import fit_sampler, teacher_outputs

MIXTURE = GaussianMixture.random(4, 8, std=0.2, seed=0)
TEACHER = str(Path(__file__).resolve().parents[2] / "assets" / "teachers" / "mixture_flow")


class FloatTime(nn.Module):
    """A denoiser that turns t into a Python float, as many hand-written model wrappers do: no gradient to t."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser, self.path = denoiser, denoiser.path

    def forward(self, x, t, **cond):
        return self.denoiser(x, torch.tensor(float(t.detach()), dtype=torch.float64), **cond)


def problem(n=64):
    denoiser = MIXTURE.denoiser(RectifiedFlowPath())
    noise = torch.randn(n, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return denoiser, noise, teacher_outputs(denoiser, noise, 40)


@pytest.mark.parametrize("learn, eval_times, what", [
    ("grid", False, "time grid"), ("both", False, "time grid"), ("weights", True, "evaluation times"),
])
def test_a_denoiser_without_gradient_to_t_is_refused_when_times_are_learned(learn, eval_times, what):
    denoiser, noise, targets = problem(16)
    with pytest.raises(ValueError, match=rf"learning the {what}.*no gradient.*Python float.*--learn weights"):
        fit_sampler(FloatTime(denoiser), 3, noise, targets, learn=learn, learn_eval_times=eval_times, iterations=2)


def test_a_denoiser_without_gradient_to_t_can_still_learn_weights():
    denoiser, noise, targets = problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and it does improve: no warning
        _, history = fit_sampler(FloatTime(denoiser), 3, noise, targets, learn="weights", init_schedule="uniform",
                                 iterations=40, validate_every=5)
    assert history.improved and history.validation_error < history.validation_before


@pytest.mark.parametrize("options", [dict(iterations=0), dict(iterations=10, lr_grid=1e-14, lr_weights=1e-14)])
def test_a_fit_that_never_improves_warns_and_returns_the_start(options):
    denoiser, noise, targets = problem()
    with pytest.warns(UserWarning, match=r"never beat the analytic starting point \(validation error .* -> best"):
        spec, history = fit_sampler(denoiser, 3, noise, targets, init_schedule="uniform", validate_every=5, **options)
    assert not history.improved and history.validation_error == history.validation_before
    assert spec.provenance["improved"] is False
    torch.testing.assert_close(spec.ts, get_schedule("uniform", denoiser.path, 3), rtol=0, atol=1e-12)


def test_a_fit_that_improves_reports_both_errors_without_warning():
    denoiser, noise, targets = problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec, history = fit_sampler(denoiser, 3, noise, targets, init_schedule="uniform", iterations=40,
                                    validate_every=5)
    assert history.improved and history.validation_error < 0.8 * history.validation_before
    assert spec.provenance["validation_before"] == history.validation_before
    assert spec.provenance["validation_after"] == history.validation_error
    with torch.no_grad():
        val = slice(48, 64)  # the held-back quarter
        got = sample(denoiser, noise[val], **spec.sample_args()).x
    assert abs(float((got - targets[val]).pow(2).mean()) - history.validation_error) < 1e-9


def test_cli_prints_errors_before_and_after_and_a_one_line_warning(tmp_path, capsys):
    out = tmp_path / "spec.safetensors"
    assert main(["fit-sampler", TEACHER, "--steps", "2", "--out", str(out), "--iterations", "0", "--noises", "16",
                 "--heldout", "8", "--teacher-steps", "8"]) == 0
    captured = capsys.readouterr()
    assert "validation loss (selects the kept sampler):" in captured.out and "not improved" in captured.out
    lines = [line for line in captured.err.splitlines() if "warning:" in line]
    assert len(lines) == 1 and lines[0].startswith("fewstep fit-sampler: warning: fit_sampler: fitting never beat")
