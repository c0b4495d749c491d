"""Denoisers: every model becomes one callable D(x, t, **cond) -> x0_hat on a noise path.

Guidance and thresholding are wrappers around a denoiser, so solvers never see them.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .parameterization import check_prediction_type, to_x0
from .paths import NoisePath


@runtime_checkable
class DenoiserLike(Protocol):
    """Anything with a `path` that maps (x [B, ...], scalar t) to x0_hat [B, ...]."""

    path: NoisePath

    def __call__(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor: ...


def _unwrap_output(output: Any) -> Tensor:
    """Tensor from a diffusers output object (`.sample`), a tuple, or a tensor."""
    if isinstance(output, Tensor):
        return output
    if hasattr(output, "sample"):
        return output.sample
    if isinstance(output, (tuple, list)):
        return output[0]
    raise TypeError(f"model returned {type(output).__name__}; expected a tensor or a diffusers output")


class Denoiser(nn.Module):
    """Wrap `model(x, timestep, **cond)` predicting `prediction_type` into D(x, t) -> x0_hat.

    `timestep` is `path.model_time(t)` broadcast to the batch (int64 for discrete models).
    Non-finite model outputs raise, naming the time at which they appeared.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        path: NoisePath,
        prediction_type: str = "epsilon",
        check_finite: bool = True,
    ):
        super().__init__()
        self.model = model
        self.path = path
        self.prediction_type = check_prediction_type(prediction_type)
        if path.kind == "flow" and prediction_type in ("epsilon", "v_prediction"):
            # alpha = 0 at t = 1 makes x0 from eps undefined; flows predict velocity.
            raise ValueError(
                f"a rectified-flow path needs prediction_type 'flow_prediction' or 'sample', "
                f"not {prediction_type!r}"
            )
        self.check_finite = check_finite

    def model_timestep(self, t: Tensor, x: Tensor) -> Tensor:
        """The network's timestep for time t, shape [B]."""
        timestep = self.path.model_time(t)
        dtype = torch.long if self.path.discrete else x.dtype
        return timestep.to(device=x.device, dtype=dtype).expand(x.shape[0])

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        alpha, sigma = (v.to(x.dtype) for v in self.path.alpha_sigma(t))
        output = _unwrap_output(self.model(x, self.model_timestep(t, x), **cond))
        if self.check_finite and not torch.isfinite(output).all():
            raise FloatingPointError(
                f"model output has NaN/inf at t={float(t):.4g}; check the model weights, "
                "the input dtype (try float32) and the prediction_type"
            )
        return to_x0(output, x, alpha.to(x.device), sigma.to(x.device), self.prediction_type)


class CFGDenoiser(nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022) on x0: x0_u + w (x0_c - x0_u).

    `uncond` holds the unconditional keyword arguments (e.g. null class labels or empty
    prompt embeddings). Tensor arguments are batched with the conditional ones into one call.
    """

    def __init__(self, denoiser: DenoiserLike, guidance_scale: float, uncond: dict[str, Any]):
        super().__init__()
        self.denoiser = denoiser
        self.path = denoiser.path
        self.guidance_scale = float(guidance_scale)
        self.uncond = uncond

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        if self.guidance_scale == 1.0:
            return self.denoiser(x, t, **cond)
        if set(cond) != set(self.uncond):
            raise ValueError(f"conditional keys {sorted(cond)} differ from unconditional {sorted(self.uncond)}")
        batched = {}
        for key, value in cond.items():
            if isinstance(value, Tensor):
                batched[key] = torch.cat([self.uncond[key].to(value.device), value])
            elif value == self.uncond[key]:
                batched[key] = value
            else:
                raise ValueError(f"non-tensor argument {key!r} must be equal for both branches")
        x0_uncond, x0_cond = self.denoiser(torch.cat([x, x]), t, **batched).chunk(2)
        return x0_uncond + self.guidance_scale * (x0_cond - x0_uncond)


def dynamic_threshold(x0: Tensor, quantile: float = 0.995, max_value: float = 1.0) -> Tensor:
    """Dynamic thresholding (Saharia et al. 2022): clamp to the per-sample |x0| quantile s, divide by s.

    s is clamped to [1, max_value] as in diffusers (so images inside [-1, 1] are untouched).
    """
    flat = x0.reshape(x0.shape[0], -1).abs().float()
    s = torch.quantile(flat, quantile, dim=1).clamp(min=1.0, max=max_value).to(x0.dtype)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


class ThresholdedDenoiser(nn.Module):
    """A denoiser whose x0_hat goes through `dynamic_threshold` (pixel-space models only)."""

    def __init__(self, denoiser: DenoiserLike, quantile: float = 0.995, max_value: float = 1.0):
        super().__init__()
        if not 0 < quantile <= 1:
            raise ValueError("thresholding quantile must lie in (0, 1]")
        self.denoiser, self.path = denoiser, denoiser.path
        self.quantile, self.max_value = quantile, max_value

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        return dynamic_threshold(self.denoiser(x, t, **cond), self.quantile, self.max_value)
