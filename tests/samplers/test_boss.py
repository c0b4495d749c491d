"""BOSS: the Bellman DP against brute force, its invariances, and the trajectory costs against closed forms."""

import itertools

import pytest
import torch

from fewstep.samplers import (
    DiscreteVPPath, GaussianMixture, RectifiedFlowPath, apply_update, get_schedule, get_solver, sample,
)
from fewstep.samplers.boss import (
    TrajectoryGrams, bellman_path, bellman_path_2m, boss_schedule, dpmpp_2m_costs, euler_costs, teacher_trajectories,
)

FLOW = RectifiedFlowPath()


def brute_force(cost, k):
    n = cost.shape[0] - 1
    best = min(itertools.combinations(range(1, n), k - 1), key=lambda mid: sum(
        float(cost[i, j]) for i, j in zip((0, *mid), (*mid, n))))
    path = [0, *best, n]
    return path, sum(float(cost[i, j]) for i, j in zip(path, path[1:]))


def random_costs(n, seed):
    cost = torch.rand(n + 1, n + 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.where(torch.ones_like(cost, dtype=torch.bool).triu(1), cost, torch.full_like(cost, float("inf")))


@pytest.mark.parametrize("n", [3, 7, 12])
def test_dp_equals_brute_force_for_every_k(n):
    cost = random_costs(n, seed=n)
    for k in range(1, n + 1):
        path, total = bellman_path(cost, k)
        expected_path, expected_total = brute_force(cost, k)
        assert total == pytest.approx(expected_total, rel=1e-12) and len(path) == k + 1
        assert sum(float(cost[i, j]) for i, j in zip(path, path[1:])) == pytest.approx(total, rel=1e-12)
        assert path == expected_path


def test_edge_cases_k1_and_kn():
    cost = random_costs(6, seed=1)
    assert bellman_path(cost, 1)[0] == [0, 6]
    assert bellman_path(cost, 6)[0] == list(range(7))
    with pytest.raises(ValueError, match="do not fit"):
        bellman_path(cost, 7)
    with pytest.raises(ValueError, match="NaN"):
        bellman_path(torch.full((4, 4), float("nan")), 2)


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
def test_convex_power_costs_give_the_uniform_grid(p):
    t = torch.linspace(0, 1, 13, dtype=torch.float64)
    cost = (t[None, :] - t[:, None]).clamp(min=0) ** p
    cost = torch.where(torch.ones_like(cost, dtype=torch.bool).triu(1), cost, torch.full_like(cost, float("inf")))
    for k in [2, 3, 4, 6]:
        assert bellman_path(cost, k)[0] == list(range(0, 13, 12 // k))


def test_scaling_or_shifting_costs_keeps_the_path():
    cost = random_costs(10, seed=3)
    for k in [2, 4, 7]:
        path = bellman_path(cost, k)[0]
        assert bellman_path(cost * 3.7, k)[0] == path
        assert bellman_path(cost + 11.0, k)[0] == path


def test_2m_dp_equals_brute_force():
    n, k = 8, 3
    g = torch.Generator().manual_seed(0)
    euler = random_costs(n, seed=5)
    c2 = torch.rand(n + 1, n + 1, n + 1, generator=g, dtype=torch.float64)
    path, total = bellman_path_2m(euler, c2, k)
    def cost_of(p):
        return float(euler[p[0], p[1]]) + sum(float(c2[h, i, j]) for h, i, j in zip(p, p[1:], p[2:]))
    best = min(([0, *mid, n] for mid in itertools.combinations(range(1, n), k - 1)), key=cost_of)
    assert path == best and total == pytest.approx(cost_of(best), rel=1e-12)


def fine_grams(mixture, path, fine_ts, n_noise=64, seed=0):
    noise = torch.randn(n_noise, mixture.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    xs, ms = teacher_trajectories(mixture.denoiser(path), noise, fine_ts)
    grams = TrajectoryGrams.empty(fine_ts)
    grams.add(xs[:, :20], ms[:, :20])  # streaming in two batches equals one batch
    grams.add(xs[:, 20:], ms[:, 20:])
    return xs, ms, grams


def test_costs_zero_on_own_steps_and_for_a_straight_flow():
    fine_ts = get_schedule("uniform", FLOW, 10)
    _, _, grams = fine_grams(GaussianMixture.random(3, 4, seed=0), FLOW, fine_ts)
    cost = euler_costs(FLOW, grams)
    assert torch.allclose(cost.diagonal(1), torch.zeros(10, dtype=torch.float64), atol=1e-10)
    # a point mass makes the flow straight (constant velocity): every jump is exact
    _, _, grams = fine_grams(GaussianMixture(torch.tensor([[0.3, -1.0]]), 1e-8), FLOW, fine_ts)
    assert float(euler_costs(FLOW, grams)[torch.ones(11, 11, dtype=torch.bool).triu(1)].abs().max()) < 1e-10


def test_gram_costs_equal_direct_computation():
    """Euler and 2M costs from Gram matrices equal costs computed on the explicit trajectories."""
    path = DiscreteVPPath.from_betas("linear")
    fine_ts = get_schedule("uniform", path, 8)
    xs, ms, grams = fine_grams(GaussianMixture.random(2, 3, seed=1), path, fine_ts)
    alpha, sigma = path.alpha_sigma(fine_ts)
    lam = path.lam(fine_ts)
    euler, c2 = dpmpp_2m_costs(path, grams)
    for i, j in [(0, 3), (2, 5), (4, 8), (1, 2)]:
        b = -alpha[j] * torch.expm1(-(lam[j] - lam[i]))
        jump = sigma[j] / sigma[i] * xs[i] + b * ms[i]
        assert float(euler[i, j]) == pytest.approx(float((jump - xs[j]).pow(2).sum(-1).mean()), rel=1e-9, abs=1e-12)
    for h, i, j in [(0, 2, 5), (1, 3, 4), (2, 4, 7)]:
        r = (lam[i] - lam[h]) / (lam[j] - lam[i])
        b = -alpha[j] * torch.expm1(-(lam[j] - lam[i]))
        d = (1 + 1 / (2 * r)) * ms[i] - 1 / (2 * r) * ms[h]
        jump = sigma[j] / sigma[i] * xs[i] + b * d
        assert float(c2[h, i, j]) == pytest.approx(float((jump - xs[j]).pow(2).sum(-1).mean()), rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("path", [DiscreteVPPath.from_betas("linear"), FLOW], ids=["vp", "flow"])
def test_2m_costs_are_the_solvers_own_step(path):
    """c2[h, i, j] is the error of DPM-Solver++(2M)'s own update i -> j with history h (sample()'s arithmetic)."""
    fine_ts = get_schedule("uniform", path, 8)
    xs, ms, grams = fine_grams(GaussianMixture.random(2, 3, seed=1), path, fine_ts)
    _, c2 = dpmpp_2m_costs(path, grams)
    solver = get_solver("dpmpp_2m", lower_order_final=False)
    for h, i, j in [(0, 2, 5), (1, 3, 4), (2, 4, 7), (0, 1, 2)]:
        plan = solver.plan(fine_ts[[h, i, j]], path)[1]  # the second step: history h, order 2
        assert plan.order == 2
        jump = apply_update(plan.update(), xs[i], [ms[i], ms[h]])
        assert float(c2[h, i, j]) == pytest.approx(float((jump - xs[j]).pow(2).sum(-1).mean()), rel=1e-8, abs=1e-12)


def test_boss_schedule_objective_and_sampling():
    mixture = GaussianMixture.random(4, 2, std=0.2, seed=2)
    denoiser = mixture.denoiser(FLOW)
    fine_ts = get_schedule("uniform", FLOW, 40)
    noise = [torch.randn(64, 2, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in range(2)]
    for rule in ["euler", "dpmpp_2m"]:
        result = boss_schedule(denoiser, noise, 4, fine_ts, step_rule=rule)
        assert result.objective <= result.uniform_objective + 1e-12
        assert float(result.ts[0]) == 1.0 and float(result.ts[-1]) == 0.0 and len(result.indices) == 5
        out = sample(denoiser, noise[0], result.ts, get_solver("ddim" if rule == "euler" else "dpmpp_2m"))
        assert out.nfe == 4


def test_merged_grams_equal_grams_accumulated_over_all_batches():
    """Gram means made per batch (on different processes) and merged equal one pass over every batch."""
    from fewstep.samplers.boss import batch_grams, search_schedule

    g = torch.Generator().manual_seed(0)
    denoiser = GaussianMixture.random(4, 2, std=0.2, seed=2).denoiser(FLOW)
    fine_ts = torch.linspace(1, 0, 9, dtype=torch.float64)
    batches = [torch.randn(n, 2, generator=g, dtype=torch.float64) for n in (5, 3, 8)]
    whole = TrajectoryGrams.empty(fine_ts)
    for noise in batches:
        whole.add(*teacher_trajectories(denoiser, noise, fine_ts))
    merged = TrajectoryGrams.merge([batch_grams(denoiser, noise, fine_ts) for noise in batches])
    assert merged.count == whole.count == 16
    for name in ("xx", "xm", "mm"):
        torch.testing.assert_close(getattr(merged, name), getattr(whole, name), rtol=1e-12, atol=1e-12)
    assert search_schedule(merged, denoiser.path, 3).indices == boss_schedule(denoiser, batches, 3, fine_ts).indices
