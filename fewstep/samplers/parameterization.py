"""The one place where network outputs become (x0_hat, eps_hat) and back.

For x = alpha x0 + sigma eps the four parameterisations are
  epsilon:          out = eps
  v_prediction:     out = alpha eps - sigma x0              (Salimans & Ho 2022)
  sample:           out = x0
  flow_prediction:  out = eps - x0 (velocity of rectified flow; diffusers' name)
The formulas below hold on any path (they do not assume alpha^2 + sigma^2 = 1 or alpha + sigma = 1).
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import Tensor

PredictionType = Literal["epsilon", "v_prediction", "sample", "flow_prediction"]
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)


def check_prediction_type(prediction_type: str) -> str:
    """Return `prediction_type` or raise a ValueError listing the valid names."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: {list(PREDICTION_TYPES)}")
    return prediction_type


def to_x0_eps(
    output: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str
) -> tuple[Tensor, Tensor]:
    """(x0_hat, eps_hat) from a network output at x = alpha x0 + sigma eps (any shape)."""
    if prediction_type == "epsilon":
        return (x - sigma * output) / alpha, output
    if prediction_type == "v_prediction":
        norm = alpha**2 + sigma**2
        return (alpha * x - sigma * output) / norm, (sigma * x + alpha * output) / norm
    if prediction_type == "sample":
        return output, (x - alpha * output) / sigma
    if prediction_type == "flow_prediction":
        x0 = (x - sigma * output) / (alpha + sigma)
        return x0, x0 + output
    check_prediction_type(prediction_type)
    raise AssertionError("unreachable")


def to_x0(output: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str) -> Tensor:
    """x0_hat only; avoids dividing by sigma for `sample` outputs at sigma = 0."""
    if prediction_type == "sample":
        return output
    return to_x0_eps(output, x, alpha, sigma, prediction_type)[0]


def from_x0_eps(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str) -> Tensor:
    """The network output (training target) that corresponds to (x0, eps)."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return alpha * eps - sigma * x0
    if prediction_type == "sample":
        return x0
    if prediction_type == "flow_prediction":
        return eps - x0
    check_prediction_type(prediction_type)
    raise AssertionError("unreachable")
