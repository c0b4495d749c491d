"""Masked (absorbing) diffusion training: the continuous-time NELBO of MDLM (Sahoo et al. 2024) on the log-linear path.

For t ~ U(0, 1) (stratified over the batch), each token is masked with probability m(t) and

    loss = E_t [ unmask_rate(t) * sum_{masked i} -log p0(x0_i | x_t) ] / L,   unmask_rate = (1 - eps) / m(t),

an upper bound on the data's negative log-likelihood per token (nats). `nelbo()` evaluates the
same bound on held-out data. `train_plain` is a short single-process loop for the small text
model; the objective also follows the `Objective` interface of `fewstep.distill.loop`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from fewstep.samplers.discrete import LogLinearMaskPath, ModelDenoiser, all_masked, sample, uniform_grid

from .base import Objective


def masked_nelbo_terms(model: nn.Module, x0: Tensor, path: LogLinearMaskPath, generator: torch.Generator,
                       t_min: float = 1e-3) -> tuple[Tensor, Tensor]:
    """(NELBO per token [B], unweighted masked cross-entropy [B]) for one stratified draw of t per sequence."""
    B, L = x0.shape
    V = int(model.config.vocab_size)
    u = torch.rand((), generator=generator, device=x0.device)
    t = (u + torch.arange(B, device=x0.device) / B) % 1.0
    t = t_min + (1.0 - t_min) * t
    m = path.mask_prob(t.double()).to(x0.device).float()
    masked = torch.rand(x0.shape, generator=generator, device=x0.device) < m[:, None]
    x_t = torch.where(masked, torch.full_like(x0, V), x0)
    logits = model(x_t).sample.float()
    ce = nn.functional.cross_entropy(logits.reshape(-1, V), x0.reshape(-1), reduction="none").reshape(B, L) * masked
    weight = path.unmask_rate(t.double()).to(x0.device).float()
    return weight * ce.sum(1) / L, ce.sum(1) / masked.sum(1).clamp_min(1)


class MaskedDiffusion(Objective):
    """Teacher training for `MaskedDiffusionTransformer` on token sequences [B, L]."""

    def __init__(self, model: nn.Module, eps: float = 1e-3) -> None:
        super().__init__({"model": model})
        self.path = LogLinearMaskPath(eps)

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        x0 = batch[0] if isinstance(batch, (list, tuple)) else batch
        nelbo, ce = masked_nelbo_terms(self.networks["model"], x0, self.path, generator)
        return {"loss": nelbo.mean(), "masked_ce": ce.mean().detach()}

    @torch.no_grad()
    def sample(self, network: nn.Module, class_labels: Tensor, generator: torch.Generator, num_steps: int,
               guidance_scale: float = 1.0) -> Tensor:
        """Unconditional sequences [B, seq_len] (B = len(class_labels); labels are unused) with `num_steps` Euler steps."""
        denoiser = ModelDenoiser(network)
        x = all_masked(class_labels.shape[0], int(network.config.seq_len), denoiser.vocab_size, class_labels.device)
        return sample(denoiser, x, uniform_grid(num_steps), self.path, "euler", generator=generator).x

    def scheduler(self) -> Any:
        """Masked diffusion has no diffusers scheduler; sampling uses `fewstep.samplers.discrete`."""
        return None


@torch.no_grad()
def nelbo(model: nn.Module, data: Tensor, path: LogLinearMaskPath | None = None, repeats: int = 4,
          batch_size: int = 256, seed: int = 0) -> tuple[float, float]:
    """(mean, 95% half-width) of the NELBO per token (nats) of `data` [n, L], averaged over `repeats` draws of t."""
    path = path or LogLinearMaskPath()
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    per_seq = torch.zeros(data.shape[0], dtype=torch.float64)
    for _ in range(repeats):
        for lo in range(0, data.shape[0], batch_size):
            per_seq[lo:lo + batch_size] += masked_nelbo_terms(model, data[lo:lo + batch_size], path, generator)[0].double() / repeats
    model.train(was_training)
    return float(per_seq.mean()), 1.96 * float(per_seq.std()) / math.sqrt(len(per_seq))


def train_plain(objective: MaskedDiffusion, data: Tensor, steps: int, batch_size: int = 128, lr: float = 1e-3,
                seed: int = 0, log_every: int = 100, warmup: int = 100) -> list[float]:
    """A short single-process AdamW loop with linear warm-up and clipping; returns the loss per step."""
    model = objective.networks["model"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 1 - s / steps))
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        index = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
        loss = objective.loss(data[index], step, generator)["loss"]
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps}  nelbo/token {sum(losses[-log_every:]) / log_every:.4f}", flush=True)
    model.eval()
    return losses
