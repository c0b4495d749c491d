"""Masked (absorbing) diffusion training: the continuous-time NELBO of MDLM (Sahoo et al. 2024) on the log-linear path.

For t ~ U(0, 1) (stratified over the batch), each token is masked with probability m(t) and

    loss = E_t [ unmask_rate(t) * sum_{masked i} -log p0(x0_i | x_t) ] / L,   unmask_rate = (1 - eps) / m(t),

an upper bound on the data's negative log-likelihood per token (nats). `nelbo()` evaluates the
same bound on held-out data. The objective runs in the shared trainer loop
(`objective.name=masked_diffusion`, `model.type=masked_transformer`, `data.name=text`); its
previews are decoded text and its export is the model folder (`save_pretrained`) plus
`data.json` (corpus id, model id, held-out NELBO).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from fewstep import batch_noise
from fewstep.samplers.discrete import LogLinearMaskPath, ModelDenoiser, all_masked, sample, uniform_grid

from .base import Objective, Teacher, register_objective


def masked_nelbo_terms(model: nn.Module, x0: Tensor, path: LogLinearMaskPath, generator: torch.Generator,
                       t_min: float = 1e-3) -> tuple[Tensor, Tensor]:
    """(NELBO per token [B], unweighted masked cross-entropy [B]) for one stratified draw of t per sequence."""
    B, L = x0.shape
    V = int(getattr(model, "module", model).config.vocab_size)  # through a DistributedDataParallel wrapper too
    t = batch_noise.stratified(B, generator, x0.device)
    t = t_min + (1.0 - t_min) * t
    m = path.mask_prob(t.double()).to(x0.device).float()
    masked = batch_noise.rand(x0.shape, generator, x0.device) < m[:, None]
    x_t = torch.where(masked, torch.full_like(x0, V), x0)
    logits = model(x_t).sample.float()
    ce = nn.functional.cross_entropy(logits.reshape(-1, V), x0.reshape(-1), reduction="none").reshape(B, L) * masked
    weight = path.unmask_rate(t.double()).to(x0.device).float()
    return weight * ce.sum(1) / L, ce.sum(1) / masked.sum(1).clamp_min(1)


#: what the exported model folder records about its training data.
DATA_INFO = "data.json"


@dataclass
class MaskedDiffusionOptions:
    """Options of `objective.name=masked_diffusion`."""

    mask_eps: float = 1e-3  # log-linear path: mask probability (1 - eps) t

    def __post_init__(self) -> None:
        if not 0 < self.mask_eps < 1:
            raise ValueError(f"objective.mask_eps must lie in (0, 1), got {self.mask_eps}")


@register_objective("masked_diffusion")
class MaskedDiffusion(Objective):
    """Teacher training for `MaskedDiffusionTransformer` on token sequences [B, L]."""

    Options = MaskedDiffusionOptions
    teacher_use = "none"
    model_types = ("masked_transformer",)

    def __init__(self, model: nn.Module, options: MaskedDiffusionOptions | None = None, teacher: Teacher | None = None) -> None:
        super().__init__({"model": model}, teacher)
        self.path = LogLinearMaskPath((options or MaskedDiffusionOptions()).mask_eps)
        # set by check_data from the training dataset, when it provides them
        self.decode: Callable[[Tensor], str] | None = None
        self.held_out: Tensor | None = None
        self.data_info: dict[str, Any] = {}

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        x0 = batch[0] if isinstance(batch, (list, tuple)) else batch
        nelbo, ce = masked_nelbo_terms(self.networks["model"], x0, self.path, generator)
        return {"loss": nelbo.mean(), "masked_ce": ce.mean().detach()}

    @torch.no_grad()
    def sample(self, networks: dict[str, nn.Module], class_labels: Tensor, generator: torch.Generator, num_steps: int,
               guidance_scale: float = 1.0) -> Tensor:
        """Unconditional sequences [B, seq_len] (B = len(class_labels); labels are unused) with `num_steps` Euler steps."""
        network = networks["model"]
        denoiser = ModelDenoiser(network)
        x = all_masked(class_labels.shape[0], int(network.config.seq_len), denoiser.vocab_size, class_labels.device)
        return sample(denoiser, x, uniform_grid(num_steps), self.path, "euler", generator=generator).x

    def check_data(self, dataset: Dataset, num_classes: int) -> None:
        """Items must be token-id sequences [L] (L <= model seq_len) over the model's vocabulary."""
        x, _ = dataset[0]
        config = self.networks["model"].config
        if not isinstance(x, Tensor) or x.ndim != 1 or x.dtype != torch.long:
            raise ValueError(f"masked_diffusion needs token-id sequences (long [L]), got {type(x).__name__} "
                             f"{getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}; use data.name=text")
        if x.shape[0] > config.seq_len:
            raise ValueError(f"data sequences have length {x.shape[0]} > model.seq_len={config.seq_len}; raise model.seq_len")
        vocab = getattr(dataset, "vocab_size", None)
        if vocab is not None and vocab != config.vocab_size:
            raise ValueError(f"the dataset has {vocab} tokens but model.vocab_size={config.vocab_size}; set model.vocab_size={vocab}")
        self.decode = getattr(dataset, "decode", None)
        self.held_out = dataset.held_out() if hasattr(dataset, "held_out") else None
        self.data_info = {"dataset": type(dataset).__name__, "corpus": getattr(dataset, "corpus", None),
                          "seq_len": int(x.shape[0]), "vocab_size": config.vocab_size}

    def write_preview(self, sample_fn: Callable[[Tensor], Tensor], networks: dict[str, nn.Module], stem: Path,
                      num_classes: int, per_class: int) -> Path:
        """`stem`.txt: `per_class` sampled sequences, decoded when the dataset can decode them, one per line."""
        from fewstep.io import write_atomic

        samples = sample_fn(torch.zeros(per_class, dtype=torch.long)).long().cpu()
        decode = self.decode or (lambda ids: " ".join(map(str, ids.tolist())))
        text = "".join(repr(decode(row)) + "\n" for row in samples)
        return write_atomic(stem.with_suffix(".txt"), lambda tmp: Path(tmp).write_text(text))

    def export(self, networks: dict[str, nn.Module], folder: Path) -> None:
        """The model folder (`save_pretrained`; loads with `MaskedDiffusionTransformer.from_pretrained`) + data.json
        (corpus id, model id, held-out NELBO per token with its 95% half-width). Masked diffusion has no
        diffusers scheduler: sampling uses `fewstep.samplers.discrete`."""
        from fewstep.models import model_fingerprint

        network = networks["model"]
        network.save_pretrained(str(folder))
        info = {**self.data_info, "model_id": model_fingerprint(network), "mask_eps": self.path.eps}
        if self.held_out is not None:
            device = next(network.parameters()).device
            mean, half = nelbo(network, self.held_out.to(device), self.path)
            info["held_out_nelbo_per_token"] = {"mean": mean, "half_width_95": half, "sequences": int(self.held_out.shape[0])}
        (Path(folder) / DATA_INFO).write_text(json.dumps(info, indent=2))


@torch.no_grad()
def nelbo(model: nn.Module, data: Tensor, path: LogLinearMaskPath | None = None, repeats: int = 4,
          batch_size: int = 256, seed: int = 0) -> tuple[float, float]:
    """(mean, 95% half-width) of the NELBO per token (nats) of `data` [n, L], averaged over `repeats` draws of t."""
    path = path or LogLinearMaskPath()
    generator = torch.Generator(device=data.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    per_seq = torch.zeros(data.shape[0], dtype=torch.float64)
    for _ in range(repeats):
        for lo in range(0, data.shape[0], batch_size):
            per_seq[lo:lo + batch_size] += masked_nelbo_terms(model, data[lo:lo + batch_size], path, generator)[0].double() / repeats
    model.train(was_training)
    return float(per_seq.mean()), 1.96 * float(per_seq.std()) / math.sqrt(len(per_seq))
