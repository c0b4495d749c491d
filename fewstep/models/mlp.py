"""`ClassConditionalMLP`: the residual MLP denoiser of the 2-D (Gaussian-mixture) teachers and students.

A diffusers `ModelMixin` / `ConfigMixin` called as `model(x, timestep, class_labels=...)` and
returning an output with `.sample`, so it saves, loads and samples the diffusers way. The last
class index (`num_class_embeds - 1`) is the null class used for classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils import BaseOutput
from torch import Tensor, nn

__all__ = ["ClassConditionalMLP", "MLPOutput", "ResidualBlock"]


@dataclass
class MLPOutput(BaseOutput):
    """Network output `sample` [B, dim]."""

    sample: Tensor


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP block: h + W2 silu(W1 silu(LN(h)))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)


class ClassConditionalMLP(ModelMixin, ConfigMixin):
    """Residual MLP denoiser for low-dimensional data: (x [B, dim], timestep [B] or scalar, class_labels [B]) -> [B, dim].

    The timestep is in the model's own units (integer DDPM steps or t * 1000 for flows) and
    goes through diffusers' sinusoidal `Timesteps` + `TimestepEmbedding`; the class embedding
    is added to the hidden state. Labels default to the null class (`num_class_embeds - 1`).
    """

    @register_to_config
    def __init__(self, dim: int = 2, width: int = 256, num_blocks: int = 4, num_class_embeds: int = 9) -> None:
        super().__init__()
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(width, width)
        self.class_embedding = nn.Embedding(num_class_embeds, width)
        self.input = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(num_blocks))
        self.output = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample (without the batch dimension)."""
        return (self.config.dim,)

    def forward(
        self, sample: Tensor, timestep: Tensor | float, class_labels: Tensor | None = None, return_dict: bool = True
    ) -> MLPOutput | tuple[Tensor]:
        batch = sample.shape[0]
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(batch)
        temb = self.time_embedding(self.time_proj(timestep).to(sample.dtype))
        if class_labels is None:
            class_labels = torch.full((batch,), self.config.num_class_embeds - 1, device=sample.device, dtype=torch.long)
        h = self.input(sample) + temb + self.class_embedding(class_labels)
        for block in self.blocks:
            h = block(h)
        out = self.output(h)
        return MLPOutput(sample=out) if return_dict else (out,)


# diffusers records a custom component by its class's module: the public import path keeps a
# saved pipeline's model_index.json readable as ["fewstep", "ClassConditionalMLP"] wherever the
# class lives (`fewstep.__getattr__` resolves it). Pipelines saved before this (assets/teachers/
# mixture_*) name "fewstep.pipelines.class_conditional", which re-exports the class.
ClassConditionalMLP.__module__ = "fewstep"
