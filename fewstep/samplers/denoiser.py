"""Denoisers: every model becomes one callable D(x, t, **cond) -> x0_hat on a noise path.

Guidance and thresholding are wrappers around a denoiser, so solvers never see them.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .. import batch_noise
from .parameterization import check_prediction_type, from_x0_eps, to_x0
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


def broadcast(values: Tensor, like: Tensor) -> Tensor:
    """Per-sample values [B] reshaped to [B, 1, ...] and cast to `like`'s dtype and device."""
    return values.to(device=like.device, dtype=like.dtype).reshape(-1, *[1] * (like.ndim - 1))


class NetworkDenoiser:
    """x0 predictions of `network(x_t, timestep, class_labels=...)` at per-sample times t [B].

    Discrete (VP) paths evaluate the network at integer timesteps: times are snapped to the
    training grid first (`path.snap`), so alpha(t), sigma(t) and the timestep agree.
    """

    def __init__(self, network: Callable[..., Any], path: NoisePath, prediction_type: str) -> None:
        self.network, self.path, self.prediction_type = network, path, prediction_type

    def snap(self, t: Tensor) -> Tensor:
        """t [B] (float64, CPU) moved onto the network's time grid."""
        return self.path.snap(t) if self.path.discrete else t

    def timestep(self, t: Tensor, like: Tensor) -> Tensor:
        """Network timesteps [B] for times t [B]."""
        timestep = self.path.model_time(t)
        return timestep.to(device=like.device, dtype=torch.long if self.path.discrete else like.dtype)

    def alpha_sigma(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """alpha(t), sigma(t) as [B, 1, ...] tensors matching `like`."""
        alpha, sigma = self.path.alpha_sigma(t)
        return broadcast(alpha, like), broadcast(sigma, like)

    def raw(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """The network's output (its own prediction type) at (x_t [B, ...], t [B])."""
        return self.network(x_t, self.timestep(t, x_t), class_labels=labels).sample

    def __call__(self, x_t: Tensor, t: Tensor, labels: Tensor, guidance_scale: float = 1.0, null_label: int | None = None) -> Tensor:
        """x0_hat [B, ...]; with `guidance_scale != 1`, CFG against `null_label` in one batched call."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        if guidance_scale == 1.0:
            return to_x0(self.raw(x_t, t, labels), x_t, alpha, sigma, self.prediction_type)
        if null_label is None:
            raise ValueError("classifier-free guidance needs the null label")
        both = self.raw(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([torch.full_like(labels, null_label), labels]))
        x0_uncond, x0_cond = to_x0(both, torch.cat([x_t, x_t]), torch.cat([alpha, alpha]), torch.cat([sigma, sigma]),
                                   self.prediction_type).chunk(2)
        return x0_uncond + guidance_scale * (x0_cond - x0_uncond)

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The denoising regression target of this network for x_t = alpha x0 + sigma eps."""
        alpha, sigma = self.alpha_sigma(t, x0)
        return from_x0_eps(x0, eps, alpha, sigma, self.prediction_type)

    def noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps on the path."""
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * x0 + sigma * eps


def renoising_sample(denoiser: NetworkDenoiser, z: Tensor, times: Tensor, labels: Tensor,
                     generator: torch.Generator | None = None, grad_step: int | None = None) -> Tensor:
    """Multistep sampling of one-step generators (consistency models, DMD2): x0 at each time, re-noised to the next.

    From noise z [B, ...] at `times[0]` (float64 [n], decreasing), the denoiser's x0 at times[i] is
    noised with fresh noise to times[i + 1]; returns the x0 of the last time evaluated. With
    `grad_step` k (training, DMD2's backward simulation) it stops at times[k] and only that
    evaluation keeps the autograd graph.
    """
    last = len(times) - 1 if grad_step is None else grad_step
    x = z
    for i in range(last + 1):
        with torch.set_grad_enabled(torch.is_grad_enabled() and i == last):
            x0 = denoiser(x, times[i].expand(z.shape[0]), labels)
        if i < last:
            eps = batch_noise.randn(z.shape, generator, z.device, z.dtype)
            x = denoiser.noise(x0.detach(), eps, times[i + 1].expand(z.shape[0]))
    return x0
