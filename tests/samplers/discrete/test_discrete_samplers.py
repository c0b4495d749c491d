"""Masked-diffusion path, samplers and exact chain testbed: closed forms, brute force, bit-for-bit reproduction."""

import itertools
import math

import pytest
import torch

from fewstep.samplers.discrete import (SOLVERS, LogLinearMaskPath, MarkovChain, TokenNoise, all_masked, check_contains,
                                       sample, teacher_grid, transition_probs, ts_from_kappa, uniform_grid, unmask_probability)

PATH = LogLinearMaskPath(eps=1e-3)


@pytest.mark.parametrize("solver", SOLVERS)
def test_transition_probabilities_sum_to_one(solver):
    g = torch.Generator().manual_seed(0)
    log_p0 = torch.log_softmax(torch.randn(3, 5, 7, generator=g, dtype=torch.float64), -1)
    for t, t_next, phi in [(1.0, 0.75, 1.0), (0.5, 0.3, 2.7), (0.2, 0.0, 0.4), (0.9, 0.1, 5.0), (0.3, 0.29, 0.0)]:
        p = unmask_probability(PATH, torch.tensor(t, dtype=torch.float64), torch.tensor(t_next, dtype=torch.float64), phi, solver)
        probs = transition_probs(log_p0, p)
        assert probs.shape == (3, 5, 8) and bool((probs >= 0).all()) and bool((probs <= 1).all())
        torch.testing.assert_close(probs.sum(-1), torch.ones(3, 5, dtype=torch.float64), rtol=0, atol=1e-12)
        if t_next == 0.0:
            assert float(p) == 1.0  # landing on t = 0 resolves every mask


def test_step_probabilities_closed_forms():
    """Tweedie at Phi = 1 is the exact posterior (m_t - m_s) / m_t; Euler equals it on the log-linear path; tau-leaping is 1 - e^{-rate dt}."""
    ts = torch.tensor([1.0, 0.8, 0.55, 0.3, 0.1, 0.02], dtype=torch.float64)
    for t, s in zip(ts[:-1], ts[1:]):
        exact = (PATH.mask_prob(t) - PATH.mask_prob(s)) / PATH.mask_prob(t)
        for phi in (1.0, 0.7):
            tweedie = unmask_probability(PATH, t, s, phi, "tweedie")
            torch.testing.assert_close(tweedie, phi * exact, rtol=1e-12, atol=0)
            torch.testing.assert_close(unmask_probability(PATH, t, s, phi, "euler"), tweedie, rtol=1e-12, atol=0)
            tau = unmask_probability(PATH, t, s, phi, "tau_leaping")
            torch.testing.assert_close(tau, 1 - torch.exp(-phi * (t - s) / ((1 - PATH.eps) * t) * (1 - PATH.eps)), rtol=1e-12, atol=0)
    assert float(PATH.unmask_rate(0.25)) == pytest.approx(1 / 0.25)  # (1 - eps) / m(t) = 1 / t


def test_exact_denoiser_matches_brute_force():
    chain = MarkovChain.random(vocab_size=3, allowed_per_token=2, leak=0.05, seed=1)
    V, L = 3, 5
    x = torch.tensor([[V, 1, V, V, 0], [V, V, V, V, V], [2, V, 0, V, V]])
    log_p0 = chain.denoiser()(x, torch.tensor(0.5))
    for b in range(x.shape[0]):
        post = torch.zeros(L, V, dtype=torch.float64)
        for seq in itertools.product(range(V), repeat=L):
            seq_t = torch.tensor([seq])
            if all(int(x[b, i]) in (V, seq[i]) for i in range(L)):
                w = chain.log_prob(seq_t).exp()[0]
                for i in range(L):
                    post[i, seq[i]] += w
        post /= post.sum(-1, keepdim=True)
        masked = x[b] == V
        torch.testing.assert_close(log_p0[b][masked].exp(), post[masked], rtol=1e-10, atol=1e-12)


def test_phi_one_and_uniform_kappa_reproduce_the_baseline():
    """LSD+'s initial step sizes (softmax of zeros) rebuild the uniform grid, and Phi = 1 is the plain sampler.

    The two grids come from different arithmetic (1 - cumsum(1/M) vs linspace): bit-equal only when M is a
    power of two, a few ulps apart otherwise (measured <= 2e-16), so they are compared to 1e-15. The samples
    are integer tokens, compared exactly: a 1e-16 change in an unmask probability flips a draw with
    probability ~1e-16.
    """
    chain = MarkovChain.random(vocab_size=5, seed=0)
    denoiser = chain.denoiser()
    for M in (3, 4, 5, 8):
        kappa = torch.softmax(torch.zeros(M, dtype=torch.float64), 0)  # LSD+'s initial step sizes
        torch.testing.assert_close(ts_from_kappa(kappa), uniform_grid(M), rtol=0, atol=1e-15)
        torch.testing.assert_close(uniform_grid(M), 1 - torch.arange(M + 1, dtype=torch.float64) / M, rtol=0, atol=1e-15)
        for solver in SOLVERS:
            base = sample(denoiser, all_masked(16, 12, 5), uniform_grid(M), PATH, solver, generator=torch.Generator().manual_seed(3)).x
            hooked = sample(denoiser, all_masked(16, 12, 5), ts_from_kappa(kappa), PATH, solver, phi=torch.ones(M, dtype=torch.float64),
                            generator=torch.Generator().manual_seed(3)).x
            assert torch.equal(base, hooked) and not bool((base == 5).any())
            noise = TokenNoise.draw(16, 12, 5, torch.Generator().manual_seed(4))
            shared_base = sample(denoiser, all_masked(16, 12, 5), uniform_grid(M), PATH, solver, noise=noise).x
            shared_hooked = sample(denoiser, all_masked(16, 12, 5), ts_from_kappa(kappa), PATH, solver, phi=torch.ones(M), noise=noise).x
            assert torch.equal(shared_base, shared_hooked)


def test_shared_noise_couples_grids():
    """With the same TokenNoise and the exact step (Tweedie, Phi = 1), a token is masked at a shared grid time in both samplers."""
    chain = MarkovChain.random(vocab_size=5, seed=0)
    noise = TokenNoise.draw(64, 16, 5, torch.Generator().manual_seed(0))
    masks = {}
    for steps in (4, 32):
        seen = {}
        sample(chain.denoiser(), all_masked(64, 16, 5), uniform_grid(steps), PATH, "tweedie", noise=noise,
               callback=lambda info: seen.__setitem__(round(float(info.t_next), 9), info.x_next == 5))
        masks[steps] = seen
    for t in (0.75, 0.5, 0.25):
        assert torch.equal(masks[4][t], masks[32][t])


def test_teacher_nll_approaches_the_exact_value():
    chain = MarkovChain.random(vocab_size=6, allowed_per_token=2, seed=2)
    L, B = 16, 1000
    exact = chain.entropy_per_token(L)
    errors = []
    for N in (2, 8, 64):
        x = sample(chain.denoiser(), all_masked(B, L, 6), uniform_grid(N), PATH, "euler",
                   noise=TokenNoise.draw(B, L, 6, torch.Generator().manual_seed(0))).x
        errors.append(abs(float(chain.nll_per_token(x).mean()) - exact))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02 * exact + 0.01


def test_teacher_grid_contains_student_grid_and_bad_grids_fail():
    ts = ts_from_kappa(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    teacher = teacher_grid(ts, 12)
    assert teacher.numel() == 13 and torch.equal(teacher[check_contains(teacher, ts)], ts)
    with pytest.raises(ValueError, match="more steps than the student"):
        teacher_grid(ts, 3)
    with pytest.raises(ValueError, match="multiple"):
        teacher_grid(ts, 10)
    with pytest.raises(ValueError, match="does not contain"):
        check_contains(uniform_grid(10), uniform_grid(4))
    with pytest.raises(ValueError, match="down to exactly 0"):
        sample(MarkovChain.random(4).denoiser(), all_masked(2, 3, 4), torch.tensor([1.0, 0.5]), PATH)
    with pytest.raises(ValueError, match="unknown masked-diffusion solver"):
        sample(MarkovChain.random(4).denoiser(), all_masked(2, 3, 4), uniform_grid(2), PATH, "heun")
    with pytest.raises(ValueError, match="fit a spec for 2 steps"):
        sample(MarkovChain.random(4).denoiser(), all_masked(2, 3, 4), uniform_grid(2), PATH, phi=torch.ones(3))
    assert math.isfinite(float(PATH.sigma_bar(1.0)))
