"""Noise paths, parameterisations and schedules against closed forms and diffusers."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from fewstep.samplers import (
    ContinuousVPPath, DiscreteVPPath, RectifiedFlowPath, from_x0_eps, get_schedule, path_from_config, to_x0_eps,
    validate_grid,
)
from fewstep.samplers.schedules import available_schedules

PATHS = [DiscreteVPPath.from_betas("linear"), DiscreteVPPath.from_betas("squaredcos_cap_v2"), ContinuousVPPath(), RectifiedFlowPath()]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__)
def test_lam_inverse_round_trip(path):
    ts = torch.linspace(0.98, max(path.t_lo_finite, 0.002), 50, dtype=torch.float64)
    assert torch.allclose(path.t_of_lam(path.lam(ts)), ts, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_ddpm_log_snr_below_the_first_timestep(schedule):
    """t in (0, 1/N) lies below the first DDPM timestep k = 0. The documented extension: sigma^2/alpha^2 falls
    linearly in t to 0, sigma^2/alpha^2 = t N (1 - a_0) / a_0 with a_0 = alphas_cumprod[0], so
    lam(t) = lam(1/N) - log(t N) / 2 there; t_of_lam inverts it; both are continuous at t = 1/N."""
    n = 1000
    path = DiscreteVPPath.from_betas(schedule)
    a0 = float(DDPMScheduler(beta_schedule=schedule).alphas_cumprod[0])  # float32, from diffusers
    lam_first = -0.5 * math.log((1 - a0) / a0)
    # (the library forms t N as (t N - 1) + 1, which loses digits as t N -> 0: below t = 1e-7 the 1e-12s
    # below would need widening to ~1e-16 / (t N))
    ts = torch.tensor([1e-7, 1e-6, 1e-5, 1e-4, 2.5e-4, 5e-4, 7.5e-4, 9e-4, 9.999e-4], dtype=torch.float64)
    # closed form; the library takes sigma_0 = ((1 - a_0) / a_0)^0.5 in float32 as diffusers does: 1e-6 in lam
    torch.testing.assert_close(path.lam(ts), lam_first - 0.5 * torch.log(ts * n), rtol=0, atol=1e-6)
    # the same, free of that rounding: the offset from lam(1/N) (float64 arithmetic only)
    offset = path.lam(ts) - path.lam(torch.tensor(1 / n, dtype=torch.float64))
    torch.testing.assert_close(offset, -0.5 * torch.log(ts * n), rtol=0, atol=1e-12)
    alpha, sigma = path.alpha_sigma(ts)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(ts), rtol=0, atol=1e-12)
    torch.testing.assert_close((sigma / alpha) ** 2, ts * n * (1 - a0) / a0, rtol=1e-6, atol=0)
    # round trip t -> lam -> t on (0, 1/N), and t_of_lam of the closed-form lam
    torch.testing.assert_close(path.t_of_lam(path.lam(ts)), ts, rtol=1e-12, atol=0)
    lam_closed = path.lam(torch.tensor(1 / n, dtype=torch.float64)) - 0.5 * torch.log(ts * n)
    torch.testing.assert_close(path.t_of_lam(lam_closed), ts, rtol=1e-12, atol=0)
    # the ends: t = 0 is clean data (lam = +inf), and back
    assert float(path.lam(0.0)) == math.inf and float(path.t_of_lam(math.inf)) == 0.0
    # continuity at t = 1/N from both sides, and the slope below: d lam / dt = -1 / (2 t) = -N / 2 at 1/N
    first = float(path.lam(1 / n))
    for delta in (1e-9, 1e-7):
        below, above = float(path.lam(1 / n - delta)), float(path.lam(1 / n + delta))
        assert abs(below - first) < 1e3 * delta and abs(above - first) < 1e3 * delta
    assert (first - float(path.lam(1 / n - 1e-9))) / 1e-9 == pytest.approx(-n / 2, rel=1e-4)
    # lam decreases through 1/N (no jump back up): lam(1/N - d) > lam(1/N) > lam(1/N + d)
    assert float(path.lam(1 / n - 1e-7)) > first > float(path.lam(1 / n + 1e-7))


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_discrete_path_matches_diffusers_alphas_cumprod(schedule):
    ref = DDPMScheduler(beta_schedule=schedule)
    path = DiscreteVPPath.from_betas(schedule)
    k = torch.arange(1000)
    alpha, sigma = path.alpha_sigma(path.t_of_model_time(k))
    assert torch.allclose(alpha**2, ref.alphas_cumprod.double(), rtol=1e-6)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones(1000, dtype=torch.float64))
    assert torch.equal(path.model_time(path.t_of_model_time(k)), k.double())
    assert path.alpha_sigma(0.0) == (1.0, 0.0)


def test_flow_path_is_linear_interpolation():
    path = RectifiedFlowPath()
    alpha, sigma = path.alpha_sigma(torch.tensor([0.0, 0.25, 1.0]))
    assert alpha.tolist() == [1.0, 0.75, 0.0] and sigma.tolist() == [0.0, 0.25, 1.0]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__)
def test_path_config_round_trip(path):
    rebuilt = path_from_config(path.to_config())
    ts = torch.linspace(0.9, 0.1, 7, dtype=torch.float64)
    assert torch.allclose(rebuilt.lam(ts), path.lam(ts))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample", "flow_prediction"])
@pytest.mark.parametrize("alpha, sigma", [(0.8, 0.6), (0.3, 0.7), (0.95, 0.1)])
def test_parameterisations_round_trip(prediction_type, alpha, sigma):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    x = alpha * x0 + sigma * eps
    a, s = torch.tensor(alpha, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)
    out = from_x0_eps(x0, eps, a, s, prediction_type)
    # the targets by definition (diffusers' names): a pair of functions wrong in the same way would round-trip
    definition = {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "sample": x0, "flow_prediction": eps - x0}
    torch.testing.assert_close(out, definition[prediction_type], rtol=1e-14, atol=1e-14)
    x0_hat, eps_hat = to_x0_eps(out, x, a, s, prediction_type)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-12, atol=1e-12)


def test_unknown_prediction_type_lists_valid():
    with pytest.raises(ValueError, match="valid:.*epsilon"):
        to_x0_eps(torch.zeros(1), torch.zeros(1), 1.0, 1.0, "noise")


# ------------------------------------------------------------------ schedules against closed forms
#
# Everything below is computed from the documented definitions with numpy, never with the
# fewstep function under test: the log-SNR of each path from its own formula (DDPM: from
# diffusers' alphas_cumprod, interpolated in k like diffusers' `_sigma_to_t`), then each
# schedule's closed form.

N_TRAIN = 1000


class Oracle:
    """Independent lam(t), its inverse, and the documented ends of one of the PATHS."""

    def __init__(self, kind, schedule=None):
        self.kind = kind
        if kind == "ddpm":
            ac = DDPMScheduler(beta_schedule=schedule).alphas_cumprod  # float32, like diffusers' sigmas
            self.log_sigmas = np.log((((1 - ac) / ac) ** 0.5).double().numpy())  # log(sigma/alpha), k = 0..N-1
            self.t_min, self.t_lo, self.t_hi = 1 / N_TRAIN, 1 / N_TRAIN, 1.0
        elif kind == "cvp":  # beta_min = 0.1, beta_max = 20, t_min = 1e-3
            self.t_min, self.t_lo, self.t_hi = 1e-3, 1e-3, 1.0
        else:  # flow: lam = log((1 - t) / t) is finite on [1/N, 1 - 1/N]
            self.t_min, self.t_lo, self.t_hi = 0.0, 1 / N_TRAIN, 1 - 1 / N_TRAIN

    def lam(self, t):
        t = np.asarray(t, dtype=np.float64)
        if self.kind == "ddpm":
            return -np.interp(t * N_TRAIN - 1, np.arange(N_TRAIN), self.log_sigmas)
        if self.kind == "cvp":
            log_alpha = -0.25 * (20 - 0.1) * t**2 - 0.5 * 0.1 * t
            return log_alpha - 0.5 * np.log(-np.expm1(2 * log_alpha))
        return np.log1p(-t) - np.log(t)

    def t_of_lam(self, lam):
        lam = np.asarray(lam, dtype=np.float64)
        if self.kind == "ddpm":
            return (np.interp(-lam, self.log_sigmas, np.arange(N_TRAIN)) + 1) / N_TRAIN
        if self.kind == "cvp":  # alpha^2 = 1 / (1 + e^{-2 lam}); root of 0.25 (b1 - b0) t^2 + 0.5 b0 t + log_alpha = 0
            log_alpha = -0.5 * np.log1p(np.exp(-2 * lam))
            a, b, c = 0.25 * (20 - 0.1), 0.5 * 0.1, log_alpha  # positive root, written without cancellation
            return -2 * c / (b + np.sqrt(b**2 - 4 * a * c))
        return 1 / (1 + np.exp(lam))

    def snap(self, t):
        """DDPM grids land on integer timesteps k = round(t N - 1), t = (k + 1) / N; continuous paths: identity."""
        if self.kind != "ddpm":
            return t
        return (np.clip(np.round(t * N_TRAIN - 1), 0, N_TRAIN - 1) + 1) / N_TRAIN


ORACLES = [Oracle("ddpm", "linear"), Oracle("ddpm", "squaredcos_cap_v2"), Oracle("cvp"), Oracle("flow")]  # = PATHS


def expected_grid(name, oracle, n, final, shift=3.0, rho=7.0, t_max=None):
    """The documented grid of schedule `name` (n steps, default options), computed from its closed form.

    `t_max` (continuous paths): time-space grids start there instead of 1, sigma-space grids at
    lam(min(t_max, t_hi)) and are then not moved to t = 1."""
    i = np.arange(n + 1)
    if name in ("uniform", "quadratic", "flow_shift"):
        top = 1.0 if t_max is None else t_max
        if name == "uniform" and oracle.kind == "ddpm" and t_max is None:
            # diffusers' "linspace" timesteps: round(np.linspace(0, N - 1, n + 1)), from the top, k = 0 dropped
            k = np.round(np.linspace(0, N_TRAIN - 1, n + 1))[::-1][:-1]
            ts = np.append((k + 1) / N_TRAIN, 0.0)
        else:
            if name == "quadratic":  # sqrt(t) uniform from sqrt(t_max) to sqrt(t_min)
                ts = (math.sqrt(top) - i / n * (math.sqrt(top) - math.sqrt(oracle.t_min))) ** 2
            else:
                ts = top - i / n * (top - oracle.t_min)
                if name == "flow_shift":  # SD3: s t / (1 + (s - 1) t)
                    ts = shift * ts / (1 + (shift - 1) * ts)
            ts = oracle.snap(ts)
        ts[-1] = 0.0 if final == "zero" else oracle.t_min
        return ts
    count = n if final == "zero" else n + 1  # sigma space: n points + t = 0, or n + 1 points down to t_lo
    lam_start, lam_end = oracle.lam(oracle.t_hi if t_max is None else min(t_max, oracle.t_hi)), oracle.lam(oracle.t_lo)
    ramp = np.linspace(0.0, 1.0, count)
    if name in ("logsnr", "exponential"):  # uniform in lam
        lams = lam_start + ramp * (lam_end - lam_start)
    else:  # karras: uniform in sigma_ve^(1/rho), sigma_ve = sigma / alpha = e^-lam
        s_max, s_min = math.exp(-lam_start), math.exp(-lam_end)
        lams = -rho * np.log(s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho)))
    ts = oracle.t_of_lam(lams)
    if oracle.kind == "flow" and t_max is None:
        ts[0] = 1.0  # a flow starts from pure noise (lam = -inf), not from its finite end
    return np.append(ts, 0.0) if final == "zero" else ts


SIGMA_SPACE = ("logsnr", "exponential", "karras")


@pytest.mark.parametrize("name", [n for n in available_schedules() if n != "explicit"])
@pytest.mark.parametrize("case", range(len(PATHS)), ids=[type(p).__name__ + str(i) for i, p in enumerate(PATHS)])
@pytest.mark.parametrize("final", ["zero", "t_min"])
@pytest.mark.parametrize("n", [1, 7])
def test_schedules_equal_their_closed_forms(name, case, final, n):
    path, oracle = PATHS[case], ORACLES[case]
    assert (path.t_min, path.t_lo_finite, path.t_hi_finite) == pytest.approx((oracle.t_min, oracle.t_lo, oracle.t_hi), abs=1e-15)
    ts = get_schedule(name, path, n, final=final)
    got = ts.numpy()
    # shape, start, strict decrease, end as `final` says
    assert ts.shape == (n + 1,) and ts.dtype == torch.float64
    assert got[0] == pytest.approx(1.0, abs=1e-12)
    assert bool(np.all(np.diff(got) < 0)), got
    end = 0.0 if final == "zero" else (oracle.t_lo if name in SIGMA_SPACE else oracle.t_min)
    assert got[-1] == pytest.approx(end, abs=1e-12)
    # the closed form, point by point. Time-space grids are rational in t (DDPM: exact multiples of 1/N):
    # 1e-12 absolute. Sigma-space grids go through lam and its inverse: 1e-9 relative.
    expected = expected_grid(name, oracle, n, final)
    if name in SIGMA_SPACE:
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in available_schedules() if n != "explicit"])
@pytest.mark.parametrize("case", [2, 3], ids=["continuous_vp", "flow"])
@pytest.mark.parametrize("final", ["zero", "t_min"])
def test_schedules_started_below_pure_noise(name, case, final):
    """t_max = 0.8 on a continuous path: every grid starts at 0.8 (flow_shift: at its shifted image
    3 * 0.8 / (1 + 2 * 0.8)) and otherwise keeps its closed form."""
    path, oracle = PATHS[case], ORACLES[case]
    ts = get_schedule(name, path, 5, final=final, t_max=0.8).numpy()
    expected = expected_grid(name, oracle, 5, final, t_max=0.8)
    assert ts[0] == pytest.approx(2.4 / 2.6 if name == "flow_shift" else 0.8, rel=1e-12)
    np.testing.assert_allclose(ts, expected, rtol=1e-9 if name in SIGMA_SPACE else 0, atol=1e-12)


@pytest.mark.parametrize("case", [0, 2, 3], ids=["ddpm_linear", "continuous_vp", "flow"])
@pytest.mark.parametrize("n", [3, 4, 10])
@pytest.mark.parametrize("final", ["zero", "t_min"])
def test_quadratic_grid_is_uniform_in_sqrt_t(case, n, final):
    """DPM-Solver's time-quadratic grid: t_i = (1 - i/n (1 - sqrt(t_min)))^2, snapped to DDPM timesteps."""
    path, oracle = PATHS[case], ORACLES[case]
    ts = get_schedule("quadratic", path, n, final=final)
    expected = (1 - np.arange(n + 1) / n * (1 - math.sqrt(oracle.t_min))) ** 2
    if oracle.kind == "ddpm":
        expected = (np.round(expected * N_TRAIN - 1) + 1) / N_TRAIN
    expected[-1] = 0.0 if final == "zero" else oracle.t_min
    np.testing.assert_allclose(ts.numpy(), expected, rtol=0, atol=1e-12)
    if oracle.kind == "flow":  # t_min = 0: sqrt(t) falls by 1/n per step, whatever `final` says
        np.testing.assert_allclose(ts.numpy(), (1 - np.arange(n + 1) / n) ** 2, rtol=0, atol=1e-15)
    if oracle.kind == "cvp":  # unsnapped: sqrt(t) falls by the same amount each step down to t_min = 1e-3
        root = np.sqrt(ts.numpy()[:-1])
        np.testing.assert_allclose(np.diff(root), np.full(n - 1, (math.sqrt(1e-3) - 1) / n), rtol=1e-10)


def test_quadratic_grid_literal_values():
    """Hand-checked: 4 steps on a flow are (1 - i/4)^2; on DDPM (N = 1000) the timesteps 999, 573, 265, 74."""
    flow = get_schedule("quadratic", RectifiedFlowPath(), 4)
    np.testing.assert_allclose(flow.numpy(), [1.0, 0.5625, 0.25, 0.0625, 0.0], rtol=0, atol=1e-15)
    ddpm = DiscreteVPPath.from_betas("linear")
    for final, last in [("zero", 0.0), ("t_min", 0.001)]:
        ts = get_schedule("quadratic", ddpm, 4, final=final)
        np.testing.assert_allclose(ts.numpy(), [1.0, 0.574, 0.266, 0.075, last], rtol=0, atol=1e-15)
        assert ddpm.model_time(ts[:-1]).tolist() == [999, 573, 265, 74]
    # uniform, for contrast: 999, 749, 500, 250 (diffusers "linspace")
    assert ddpm.model_time(get_schedule("uniform", ddpm, 4)[:-1]).tolist() == [999, 749, 500, 250]


def test_uniform_on_ddpm_equals_diffusers_timesteps():
    from diffusers import DPMSolverMultistepScheduler

    path = DiscreteVPPath.from_betas("linear")
    for spacing in ["linspace", "leading", "trailing"]:
        ref = DPMSolverMultistepScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
        for n in [2, 5, 7, 10, 25]:
            ref.set_timesteps(n)
            ts = get_schedule("uniform", path, n, timestep_spacing=spacing, steps_offset=ref.config.steps_offset)
            assert torch.equal(path.model_time(ts[:-1]).long(), ref.timesteps)


def test_logsnr_is_uniform_in_lam_and_karras_in_sigma_rho():
    path = ContinuousVPPath()
    lams = path.lam(get_schedule("logsnr", path, 6, final="t_min"))
    assert torch.allclose(lams.diff(), lams.diff()[0].expand(6), rtol=1e-9)
    sig = torch.exp(-path.lam(get_schedule("karras", path, 6, final="t_min", rho=7.0)))
    root = sig ** (1 / 7)
    assert torch.allclose(root.diff(), root.diff()[0].expand(6), rtol=1e-8)


def test_flow_shift_matches_sd3_formula():
    path = RectifiedFlowPath()
    ts = get_schedule("flow_shift", path, 4, shift=3.0)
    base = torch.linspace(1, 0, 5, dtype=torch.float64)
    assert torch.allclose(ts, 3 * base / (1 + 2 * base))


@pytest.mark.parametrize(
    "grid, message",
    [([1.0, 0.5, 0.7, 0.0], "strictly decreasing"), ([1.2, 0.5, 0.0], r"\[0, 1\]"), ([1.0], "at least 2"),
     ([1.0, float("nan"), 0.0], "NaN")],
)
def test_bad_grids_are_rejected(grid, message):
    with pytest.raises(ValueError, match=message):
        get_schedule("explicit", RectifiedFlowPath(), ts=grid)


def test_bad_schedule_arguments():
    path = RectifiedFlowPath()
    with pytest.raises(ValueError, match="valid:.*logsnr"):
        get_schedule("cosine", path, 4)
    with pytest.raises(ValueError, match=">= 1"):
        get_schedule("uniform", path, 0)
