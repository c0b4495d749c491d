"""A small bidirectional transformer for masked (absorbing) diffusion over token sequences.

`model(x).sample` gives logits [B, L, V] of p0(x0_i | x_t) over the V real tokens; the input x
[B, L] uses id V for the mask. It takes no time input: for absorbing diffusion the optimal
p0 depends on x_t alone (the mask pattern carries the noise level; Ou et al. 2024, RADD;
Sahoo et al. 2024, MDLM), so one network serves every t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import Tensor, nn


@dataclass
class MaskedTransformerOutput(BaseOutput):
    """Logits `sample` [B, L, vocab_size]."""

    sample: Tensor


class MaskedDiffusionTransformer(ModelMixin, ConfigMixin):
    """Pre-norm transformer encoder: token (+ mask) and learned position embeddings -> logits over real tokens."""

    @register_to_config
    def __init__(self, vocab_size: int = 8, seq_len: int = 64, dim: int = 128, num_layers: int = 3,
                 num_heads: int = 4, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size + 1, dim)
        self.position_embedding = nn.Parameter(torch.zeros(1, seq_len, dim))
        # token and position embeddings on the same small scale (GPT-2 style); with nn.Embedding's
        # N(0, 1) tokens drown the positions and training stalls at the unigram NELBO for a long time
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, num_heads, mlp_ratio * dim, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, x: Tensor, timestep: Tensor | None = None, return_dict: bool = True) -> MaskedTransformerOutput | tuple[Tensor]:
        """x [B, L] long (mask id = vocab_size); `timestep` is accepted and ignored (see the module docstring)."""
        if x.shape[1] > self.config.seq_len:
            raise ValueError(f"sequence length {x.shape[1]} exceeds the model's seq_len={self.config.seq_len}")
        h = self.token_embedding(x) + self.position_embedding[:, : x.shape[1]]
        logits = self.head(self.norm(self.encoder(h)))
        return MaskedTransformerOutput(sample=logits) if return_dict else (logits,)


def model_fingerprint(model: nn.Module) -> str:
    """Short hash of a model's class, config and weights (the model id recorded in sampler specs)."""
    import hashlib
    import json

    h = hashlib.sha256(type(model).__name__.encode())
    h.update(json.dumps({k: v for k, v in dict(getattr(model, "config", {})).items() if not k.startswith("_")},
                        sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{type(model).__name__}-{h.hexdigest()[:12]}"
