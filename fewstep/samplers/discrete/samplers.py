"""Samplers for masked diffusion: Euler, tau-leaping and Tweedie steps in one loop, with LSD hooks.

A step from t to t' < t on the log-linear path (see `paths.py`) only unmasks: a masked token
jumps to value v with probability `P(unmask) * p0(v | x_t)` and stays masked otherwise
(observed tokens never change). With Phi_k scaling the *score* (Fu et al. 2025, LSD), the
jump rate is `Phi * dsigma * s`, so Phi changes only `P(unmask)`, never which value is drawn:

    euler        P = Phi * (t - t') * unmask_rate(t)               (SEDD's Euler step)
    tau_leaping  P = 1 - exp(-Phi * (t - t') * unmask_rate(t))      (rates frozen over the step)
    tweedie      P = Phi * (e^{sigma_bar(t) - sigma_bar(t')} - 1) * (1 - m) / m   (exact posterior at Phi = 1)

clipped to [0, 1]; a step that lands on t' = 0 (m = 0) resolves every mask (P = 1). On the
log-linear path Euler and Tweedie coincide exactly (m is linear in t); both are kept because
they differ on other paths and the tests pin the identity.

Randomness is explicit. Either a `generator` draws fresh uniforms [B, L] and Gumbel noise
[B, L, V] every step, or a `TokenNoise` fixes one threshold U_i and one Gumbel vector G_i per
token for the whole trajectory: token i unmasks at the first step where its survival
probability (the product of its stay probabilities) falls to U_i or below, and takes value
argmax(log p0 + G_i). Both are exact samplers of the same step rule; the second couples any
two samplers (student and teacher with different grids) that are given the same `TokenNoise`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol

import torch
from torch import Tensor

from .paths import LogLinearMaskPath, validate_discrete_grid

SOLVERS = ("euler", "tau_leaping", "tweedie")


class DiscreteDenoiser(Protocol):
    """x [B, L] (mask id = vocab_size) and t -> log p0(x0_i = v | x_t) [B, L, vocab_size]."""

    vocab_size: int

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


def check_solver(solver: str) -> str:
    """Return `solver` or raise a ValueError listing the valid names."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown masked-diffusion solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    return solver


def unmask_probability(path: LogLinearMaskPath, t: Tensor, t_next: Tensor, phi: Tensor | float, solver: str) -> Tensor:
    """P(a masked token is unmasked in the step t -> t_next) for score coefficient phi (float64 scalar)."""
    phi = torch.as_tensor(phi, dtype=torch.float64)
    if solver == "euler":
        p = phi * (t - t_next) * path.unmask_rate(t)
    elif solver == "tau_leaping":
        p = -torch.expm1(-phi * (t - t_next) * path.unmask_rate(t))
    elif solver == "tweedie":
        p = phi * torch.expm1(path.sigma_bar(t) - path.sigma_bar(t_next)) * path.score_scale(t)
    else:
        check_solver(solver)
    if float(path.mask_prob(t_next)) == 0.0:
        return torch.ones_like(p)
    return p.clamp(0.0, 1.0)


def transition_probs(log_p0: Tensor, p_unmask: Tensor) -> Tensor:
    """Per masked token [B, L, V + 1]: P(value v) = p_unmask p0(v) for v < V, last entry P(stay masked)."""
    p0 = log_p0.exp().to(torch.float64)
    stay = (1.0 - p_unmask).expand(*p0.shape[:-1], 1)
    return torch.cat([p_unmask * p0, stay], dim=-1)


@dataclass
class TokenNoise:
    """Shared randomness: one unmask threshold per token `uniforms` [B, L] and one Gumbel vector `gumbels` [B, L, V]."""

    uniforms: Tensor
    gumbels: Tensor

    @classmethod
    def draw(cls, batch: int, length: int, vocab_size: int, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu") -> "TokenNoise":
        """Fresh noise for a batch (uniform thresholds in float64, standard Gumbel noise in float32)."""
        u = torch.rand(batch, length, generator=generator, dtype=torch.float64, device=device)
        return cls(u, _gumbel((batch, length, vocab_size), generator, device))


def _gumbel(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp_min(torch.finfo(torch.float32).tiny)
    return -torch.log(-torch.log(u))


@dataclass
class DiscreteStepInfo:
    """What a callback sees at step i: the state before (x) and after (x_next), the model's log p0 and P(unmask)."""

    i: int
    t: Tensor
    t_next: Tensor
    x: Tensor
    x_next: Tensor
    log_p0: Tensor
    p_unmask: Tensor
    nfe: int


class DiscreteSampleOutput(NamedTuple):
    """The final sequences [B, L] (long) and the number of model evaluations."""

    x: Tensor
    nfe: int


def all_masked(batch: int, length: int, vocab_size: int, device: torch.device | str = "cpu") -> Tensor:
    """The starting state at t = 1: every token is the mask id (= vocab_size)."""
    return torch.full((batch, length), vocab_size, dtype=torch.long, device=device)


def sample(
    denoiser: DiscreteDenoiser,
    x: Tensor,
    ts: Tensor,
    path: LogLinearMaskPath | None = None,
    solver: str = "euler",
    phi: Tensor | None = None,
    noise: TokenNoise | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[DiscreteStepInfo], Any] | None = None,
) -> DiscreteSampleOutput:
    """Unmask x [B, L] down the grid ts [M + 1] (1 -> 0) with `solver`, per-step score coefficients phi [M] (default 1).

    LSD+ step sizes enter through the grid: `ts = ts_from_kappa(kappa)`. Pass `noise` to share
    randomness with another sampler, else `generator` draws fresh noise each step.
    """
    path = path or LogLinearMaskPath()
    check_solver(solver)
    ts = validate_discrete_grid(ts)
    num_steps = ts.numel() - 1
    phi = torch.ones(num_steps, dtype=torch.float64) if phi is None else torch.as_tensor(phi, dtype=torch.float64)
    if phi.shape != (num_steps,):
        raise ValueError(f"phi has shape {tuple(phi.shape)} for a {num_steps}-step grid; fit a spec for {num_steps} steps")
    mask_id = denoiser.vocab_size
    survival = torch.ones(x.shape, dtype=torch.float64, device=x.device)
    nfe = 0
    for i in range(num_steps):
        t, t_next = ts[i], ts[i + 1]
        masked = x == mask_id
        log_p0 = denoiser(x, t)
        nfe += 1
        p_unmask = unmask_probability(path, t, t_next, phi[i], solver)
        if noise is None:
            u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
            gumbels = _gumbel(tuple(log_p0.shape), generator, x.device)
        else:
            u, gumbels = noise.uniforms, noise.gumbels
        survival = survival * (1.0 - p_unmask) if noise is not None else (1.0 - p_unmask).expand_as(survival)
        unmask = masked & (u >= survival)
        values = torch.argmax(log_p0 + gumbels.to(log_p0.dtype), dim=-1)
        x_next = torch.where(unmask, values, x)
        if callback is not None:
            callback(DiscreteStepInfo(i, t, t_next, x, x_next, log_p0, p_unmask, nfe))
        x = x_next
    return DiscreteSampleOutput(x, nfe)


class ModelDenoiser:
    """Wraps a masked-diffusion network `model(x).sample` (logits [B, L, V]) as a `DiscreteDenoiser`."""

    def __init__(self, model: torch.nn.Module, model_id: str | None = None) -> None:
        self.model = model
        self.vocab_size = int(model.config.vocab_size)
        self.model_id = model_id or "unnamed-model"

    def __call__(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        logits = self.model(x).sample
        return torch.log_softmax(logits.float(), dim=-1)
