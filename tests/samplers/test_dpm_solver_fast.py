"""DPM-Solver-fast (`dpmpp_fast`): the reference's order split, exact NFE, and parity with the reference's outputs.

The oracle tests/samplers/data/dpm_solver_fast_reference.json holds numbers only: the final samples of the
reference DPM-Solver's `singlestep` method (DPM-Solver++, logSNR grid from t = 1 to 1e-3, float64) on the
analytic mixture for NFE 1..12, orders 2 and 3, with the noise and mixture used (its "produced_by" field says
how it was made; the reference code itself is not part of this repository).
"""

import json
from pathlib import Path

import pytest
import torch

from fewstep.samplers import ContinuousVPPath, GaussianMixture, RectifiedFlowPath, get_schedule, get_solver, sample
from fewstep.samplers.evaluation import steps_for_budget
from fewstep.samplers.solvers import Solver, fast_step_orders

ORACLE = json.loads((Path(__file__).parent / "data" / "dpm_solver_fast_reference.json").read_text())


def fast_solver(order: int, nfe: int | None = None) -> Solver:
    if order == 3:
        return get_solver("dpmpp_fast", nfe=nfe)
    return Solver(name="dpmpp_fast", kind="singlestep", order=order, fast=True, nfe=nfe)


def test_order_split_hand_table():
    assert [fast_step_orders(n) for n in range(1, 11)] == [
        [1], [2], [2, 1], [3, 1], [3, 2], [3, 2, 1], [3, 3, 1], [3, 3, 2], [3, 3, 2, 1], [3, 3, 3, 1],
    ]
    assert [fast_step_orders(n, 2) for n in range(1, 6)] == [[1], [2], [2, 1], [2, 2], [2, 2, 1]]
    assert fast_step_orders(4, 1) == [1, 1, 1, 1]


@pytest.mark.parametrize("order", [1, 2, 3])
def test_order_split_properties(order):
    """Brute force over budgets: NFE exact, as many top-order steps as fit, at most one step of each lower order,
    the orders never rising, and the step count K = NFE // 3 + 1 (order 3), ceil(NFE / 2) (order 2), NFE (order 1)."""
    for nfe in range(1, 61):
        orders = fast_step_orders(nfe, order)
        assert sum(orders) == nfe
        assert orders == sorted(orders, reverse=True)
        assert all(orders.count(k) <= 1 for k in range(1, order))
        assert len(orders) == {1: nfe, 2: (nfe + 1) // 2, 3: nfe // 3 + 1}[order]
    with pytest.raises(ValueError, match="at least 1"):
        fast_step_orders(0)


def test_order_split_matches_the_reference_table():
    for key, run in ORACLE["runs"].items():
        order, nfe = int(key[5]), int(key.split("nfe")[1])
        assert fast_step_orders(nfe, order) == run["orders"] and run["nfe"] == nfe


@pytest.mark.parametrize("order", [2, 3])
def test_matches_the_reference_dpm_solver_singlestep(order):
    mixture = GaussianMixture(*(torch.tensor(ORACLE["mixture"][k], dtype=torch.float64) for k in ("means", "stds", "weights")))
    path = ContinuousVPPath()  # linear beta 0.1..20, t_min = 1e-3 = the reference's t_end
    noise = torch.tensor(ORACLE["noise"], dtype=torch.float64)
    worst = 0.0
    for nfe in range(1, 13):
        solver = fast_solver(order, nfe)
        ts = get_schedule("logsnr", path, solver.num_steps_for(nfe), final="t_min")
        out = sample(mixture.denoiser(path), noise, ts, solver)
        expected = torch.tensor(ORACLE["runs"][f"order{order}_nfe{nfe}"]["x"], dtype=torch.float64)
        assert out.nfe == nfe
        worst = max(worst, float((out.x - expected).norm() / expected.norm()))
    assert worst <= 1e-12, worst


@pytest.mark.parametrize("path, final, first_order_steps", [
    (ContinuousVPPath(), "t_min", 0), (ContinuousVPPath(), "zero", 1), (RectifiedFlowPath(), "zero", 2),
])
@pytest.mark.parametrize("schedule", ["logsnr", "uniform"])
def test_sample_uses_exactly_the_budget(path, final, first_order_steps, schedule):
    """Steps that must be first order (from alpha = 0 on a flow, into sigma = 0) cost one evaluation each;
    the rest of the budget is split by the reference rule, so NFE is the budget on every grid."""
    denoiser = GaussianMixture.random(2, 3, seed=0).denoiser(path)
    x = torch.randn(2, 3, dtype=torch.float64)
    for nfe in range(first_order_steps + 1, 16):
        solver = get_solver("dpmpp_fast", nfe=nfe)
        ts = get_schedule(schedule, path, solver.num_steps_for(nfe, first_order_steps), final=final)
        orders = [plan.order for plan in solver.plan(ts, path)]
        assert sample(denoiser, x, ts, solver).nfe == nfe == sum(orders)
        free = orders[1:] if first_order_steps == 2 else orders
        free = free[:-1] if final == "zero" else free
        assert free == fast_step_orders(nfe - first_order_steps)
    if final == "zero":  # what the benchmark asks for a budget
        assert steps_for_budget("dpmpp_fast", 10, path) == get_solver("dpmpp_fast").num_steps_for(10, first_order_steps)


def test_wrong_grid_and_options_are_explained():
    path = ContinuousVPPath()
    denoiser = GaussianMixture.random(2, 3, seed=0).denoiser(path)
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"nfe=10 needs a grid of 5 steps.*got 6 steps.*num_steps_for"):
        sample(denoiser, x, get_schedule("logsnr", path, 6), get_solver("dpmpp_fast", nfe=10))
    with pytest.raises(ValueError, match="option of dpmpp_fast"):
        get_solver("dpmpp_3s", nfe=10)
    # without a budget: the largest one the grid allows ([3, ..., 3, 2], then the step into sigma = 0)
    out = sample(denoiser, x, get_schedule("logsnr", path, 4), "dpmpp_fast")
    assert out.nfe == 3 + 3 + 2 + 1
