"""LSD / LSD+ fitting: closed-form optimum, LSD+ gradients, spec round trip and checks, bad input, CLI."""

import pytest
import torch

from fewstep.cli import main
from fewstep.samplers.discrete import (LogLinearMaskPath, LSDConfig, LSDFitError, MarkovChain, TokenNoise, all_masked,
                                       baseline_spec, check_spec, closed_form_phi, fit_lsd, sample, sample_with_spec,
                                       step_loss, teacher_grid, ts_from_kappa, uniform_grid)
from fewstep.samplers.discrete.lsd import TeacherIntegral, _sub_step_weight, masked_probs
from fewstep.samplers.spec import SamplerSpec

PATH = LogLinearMaskPath()
CHAIN = MarkovChain.random(vocab_size=5, seed=0)


def test_autograd_optimum_of_phi_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(4, 6, 5, generator=g) * (torch.rand(4, 6, 1, generator=g) < 0.6)  # student score at fixed states
    s_star = s * 0.7 + 0.3 * torch.rand(4, 6, 5, generator=g)  # teacher score
    phi = torch.ones((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([phi], lr=1, max_iter=100, tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure():
        optimizer.zero_grad()
        loss = step_loss(phi * s.double(), s_star.double())
        loss.backward()
        return loss

    optimizer.step(closure)
    expected = (s.double() * s_star.double()).sum() / (s.double() ** 2).sum()
    torch.testing.assert_close(phi.detach(), expected, rtol=1e-7, atol=0)
    torch.testing.assert_close(closed_form_phi(s, s_star), expected, rtol=1e-12, atol=0)


def test_lsd_plus_teacher_target_has_the_exact_grid_gradient():
    """The first-order carried teacher target b_k(t_k, kappa_k) has the gradient of sum_j w_j(t_k, kappa_k) P_j."""
    M, N = 2, 8
    logits = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    ts = ts_from_kappa(torch.softmax(logits, 0))
    integral = TeacherIntegral(PATH, ts, N // M, 5, with_grad=True)
    kept = []
    sample(CHAIN.denoiser(), all_masked(3, 6, 5), teacher_grid(ts.detach(), N), PATH, noise=TokenNoise.draw(3, 6, 5, torch.Generator().manual_seed(1)),
           callback=lambda info: (integral(info), kept.append(masked_probs(info, 5))))
    weights = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(2))
    for k in range(M):
        kappa_k = ts[k] - ts[k + 1]
        carried = (integral.target(k, ts[k], kappa_k) * weights).sum()
        explicit = sum(_sub_step_weight(PATH, ts[k], kappa_k, j, N // M).float() * kept[k * (N // M) + j] for j in range(N // M))
        explicit = (explicit * weights).sum()
        torch.testing.assert_close(carried, explicit, rtol=1e-5, atol=1e-6)
        g1 = torch.autograd.grad(carried, logits, retain_graph=True)[0]
        g2 = torch.autograd.grad(explicit, logits, retain_graph=True)[0]
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def tiny_config(**kw):
    base = dict(num_steps=2, seq_len=8, teacher_steps=8, iters=3, batch_size=8, lr=0.05, seed=0)
    return LSDConfig(**{**base, **kw})


@pytest.mark.parametrize("plus", [False, True])
def test_fitted_spec_reloads_and_reproduces_its_samples(tmp_path, plus):
    denoiser = CHAIN.denoiser()
    result = fit_lsd(denoiser, tiny_config(learn_steps=plus))
    spec = result.spec
    assert spec.kind == "masked_discrete" and spec.coeffs.shape == (2,) and len(result.losses) == 3
    assert spec.provenance["teacher_steps"] == 8 and spec.provenance["model_id"] == denoiser.model_id
    assert spec.provenance["method"] == ("lsd+" if plus else "lsd") and spec.provenance["coupling"] == "shared"
    assert float(spec.ts[0]) == 1.0 and float(spec.ts[-1]) == 0.0
    if not plus:
        assert torch.equal(spec.ts, uniform_grid(2))
    loaded = SamplerSpec.load(spec.save(tmp_path / "lsd.safetensors"))
    assert torch.equal(loaded.ts, spec.ts) and torch.equal(loaded.coeffs, spec.coeffs)
    noise = TokenNoise.draw(32, 8, 5, torch.Generator().manual_seed(7))
    assert torch.equal(sample_with_spec(denoiser, spec, 32, 8, noise=noise), sample_with_spec(denoiser, loaded, 32, 8, noise=noise))
    a = sample_with_spec(denoiser, loaded, 32, 8, generator=torch.Generator().manual_seed(1))
    b = sample_with_spec(denoiser, spec, 32, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_spec_for_another_model_or_step_count_is_refused():
    spec = fit_lsd(CHAIN.denoiser(), tiny_config(iters=1)).spec
    other = MarkovChain.random(vocab_size=5, seed=9).denoiser()
    with pytest.raises(ValueError, match="fitted for model"):
        sample_with_spec(other, spec, 4, 8)
    with pytest.raises(ValueError, match="fitted for M=2 steps, not 4"):
        check_spec(spec, num_steps=4)
    continuous = SamplerSpec(solver="euler", ts=uniform_grid(2), path={"kind": "flow"})
    with pytest.raises(ValueError, match="not 'masked_discrete'"):
        check_spec(continuous)


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="more steps than the student"):
        fit_lsd(CHAIN.denoiser(), tiny_config(teacher_steps=2))
    with pytest.raises(ValueError, match="not a multiple"):
        fit_lsd(CHAIN.denoiser(), tiny_config(teacher_steps=9))
    with pytest.raises(ValueError, match="does not contain"):
        fit_lsd(CHAIN.denoiser(), tiny_config(num_steps=4, teacher_steps=8), teacher_ts=uniform_grid(6))
    with pytest.raises(ValueError, match="coupling"):
        fit_lsd(CHAIN.denoiser(), tiny_config(coupling="same"))


class NaNAfter:
    """The chain's exact denoiser that starts returning NaN after `calls` evaluations."""

    def __init__(self, calls: int) -> None:
        self.inner, self.calls = CHAIN.denoiser(), calls
        self.vocab_size, self.model_id = 5, self.inner.model_id

    def __call__(self, x, t):
        self.calls -= 1
        out = self.inner(x, t)
        return out if self.calls >= 0 else out * float("nan")


def test_nan_during_fitting_stops_and_keeps_the_last_good_spec():
    per_iter = 8 + 2
    with pytest.raises(LSDFitError, match="iteration 2") as info:
        fit_lsd(NaNAfter(2 * per_iter), tiny_config(iters=5))
    good = info.value.last_good
    assert good.provenance["iters_done"] == 2 and bool(torch.isfinite(good.coeffs).all())


def test_cli_fit_sample_and_bad_input(tmp_path, capsys):
    out = tmp_path / "spec.safetensors"
    common = ["--vocab", "5", "--length", "8"]
    assert main(["lsd", "fit", *common, "-M", "2", "-N", "8", "--iters", "2", "--batch-size", "8", "--out", str(out)]) == 0
    assert SamplerSpec.load(out).num_steps == 2
    assert main(["lsd", "sample", *common, "--spec", str(out), "--num", "16"]) == 0
    assert '"violation_rate"' in capsys.readouterr().out
    assert main(["lsd", "sample", *common, "--spec", str(out), "-M", "4"]) == 2
    assert main(["lsd", "fit", *common, "-M", "8", "-N", "8", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert main(["lsd", "sample", "--testbed", "text", "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "fitted for M=2 steps, not 4" in err and "N=8 <= M=8" in err and "no config.json" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_baseline_spec_matches_plain_sampling():
    noise = TokenNoise.draw(8, 6, 5, torch.Generator().manual_seed(0))
    a = sample_with_spec(CHAIN.denoiser(), baseline_spec(4, "tau_leaping"), 8, 6, noise=noise)
    b = sample(CHAIN.denoiser(), all_masked(8, 6, 5), uniform_grid(4), PATH, "tau_leaping", noise=noise).x
    assert torch.equal(a, b)


def test_global_weighting_is_the_jump_mass_weighted_mean_of_per_step_errors():
    from fewstep.samplers.discrete.lsd import combine_steps

    errors = [torch.tensor(0.5), torch.tensor(2.0), torch.tensor(0.1)]
    scales = [torch.tensor(1.0), torch.tensor(8.0), torch.tensor(1.0)]
    per_step = combine_steps(errors, scales, "per_step")
    assert float(per_step) == pytest.approx((0.5 + 0.25 + 0.1) / 3)
    weights = torch.stack(scales) / sum(scales)
    relative = torch.stack(errors) / torch.stack(scales)
    assert float(combine_steps(errors, scales, "global")) == pytest.approx(float((weights * relative).sum()))
    assert float(combine_steps(errors[:1], scales[:1], "global")) == pytest.approx(float(combine_steps(errors[:1], scales[:1], "per_step")))
    with pytest.raises(ValueError, match="weighting"):
        LSDConfig(num_steps=4, seq_len=8, weighting="mass").validate()


def test_shipped_text_model_samples_readable_text(capsys):
    """`--testbed text` defaults to assets/teachers/text_masked; its samples beat random characters under the 4-gram proxy."""
    import json

    from fewstep.samplers.discrete.text import ALPHABET

    assert main(["lsd", "sample", "--testbed", "text", "--steps", "16", "--num", "16", "--show", "1"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    uniform_chars = float(torch.log(torch.tensor(float(len(ALPHABET)))))
    assert report["steps"] == 16 and report["ngram_nll_per_char"] < uniform_chars - 0.8
