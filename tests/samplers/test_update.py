"""The one solver update shared by sample() and FewStepScheduler, and the solver registry's filters."""

import pytest
import torch

from fewstep.samplers import (
    DiscreteVPPath, MultistepState, StepUpdate, apply_update, available_solvers, get_schedule, get_solver,
)
from fewstep.samplers.learned import fittable_solvers


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_update_is_the_stated_formula_with_tensor_or_float_coefficients():
    x, m0, m1 = randn(4, 3, seed=1), randn(4, 3, seed=2), randn(4, 3, seed=3)
    update = StepUpdate(torch.tensor(0.7, dtype=torch.float64), torch.tensor([1.3, -0.4], dtype=torch.float64),
                        torch.tensor(0.25, dtype=torch.float64))
    z = randn(4, 3, seed=9)
    expected = 0.7 * x + 1.3 * m0 - 0.4 * m1 + 0.25 * z
    for coefficients in (update, update.to_floats()):
        got = apply_update(coefficients, x, [m0, m1], torch.Generator().manual_seed(9))
        assert got.dtype == x.dtype
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert update.to_floats() == StepUpdate(0.7, [1.3, -0.4], 0.25)
    # no noise term: nothing is drawn, and extra history entries beyond the weights are ignored
    plain = StepUpdate(0.5, [2.0], None)
    torch.testing.assert_close(apply_update(plain, x, [m0, m1]), 0.5 * x + 2.0 * m0)


def test_tensor_coefficients_stay_differentiable():
    x, m0 = randn(5, seed=1, dtype=torch.float64), randn(5, seed=2, dtype=torch.float64)
    a = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.9], dtype=torch.float64, requires_grad=True)
    apply_update(StepUpdate(a, b), x, [m0]).sum().backward()
    assert float(a.grad) == pytest.approx(float(x.sum()))
    assert float(b.grad[0]) == pytest.approx(float(m0.sum()))


def test_multistep_state_keeps_the_newest_order_predictions():
    state = MultistepState(order=3)
    x = torch.zeros(2)
    ms = [torch.full((2,), float(k)) for k in range(5)]
    for k, m in enumerate(ms):
        out = state.step(StepUpdate(0.0, [1.0, 10.0, 100.0]), x, m)
        assert [float(h[0]) for h in state.history] == [float(j) for j in range(k, max(k - 3, -1), -1)]
        assert float(out[0]) == sum(c * float(h[0]) for c, h in zip([1.0, 10.0, 100.0], state.history))
    state.reset()
    assert state.history == []


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m", "sde_dpmpp_3m"])
def test_plan_update_equals_its_coefficients_and_learned_weights_replace_them(solver):
    path = DiscreteVPPath.from_betas("linear")
    plan = get_solver(solver).plan(get_schedule("logsnr", path, 6), path)[3]
    update = plan.update()
    assert torch.equal(update.x_coef, plan.x_coef) and torch.equal(update.m_coefs, plan.d_coef * plan.weights)
    assert (update.noise_coef is None) == (not get_solver(solver).stochastic)
    learned = torch.arange(1.0, plan.order + 2, dtype=torch.float64)  # one extra entry, ignored
    assert torch.equal(plan.update(learned).m_coefs, plan.d_coef * learned[: plan.order])
    with pytest.raises(ValueError, match=f"order {plan.order} needs {plan.order}"):
        plan.update(learned[: plan.order - 1])


def test_registry_filters_give_the_command_choices():
    everything = available_solvers()
    multistep = available_solvers(kind="multistep")
    assert multistep == [s for s in everything if get_solver(s).kind == "multistep"]
    assert available_solvers(kind="singlestep") == [s for s in everything if s not in multistep]
    unipc = [f"unipc_{v}{o}" for v in ("bh1", "bh2") for o in ("", "_3", "_1")]
    assert fittable_solvers() == ["ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_3m_o3"] + unipc
    assert available_solvers(stochastic=True) == ["sde_dpmpp_1", "sde_dpmpp_2m", "sde_dpmpp_3m"]
    with pytest.raises(ValueError, match="kind must be"):
        available_solvers(kind="sde")
