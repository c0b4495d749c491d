"""The exact testbed: token sequences from a known Markov chain, with the exact masked denoiser.

The chain has a "rule" set of allowed transitions (a few next tokens per token) plus a tiny
uniform leak, so every sequence has finite likelihood and a rule violation is a measurable,
rare event under the truth. Given a partly masked sequence, the exact posterior of every
masked token, p(x0_i = v | unmasked tokens), comes from the forward-backward recursions
(Rabiner 1989) with emissions 1 at masked positions and a one-hot at observed ones. It does
not depend on t (the mask pattern carries all the information), as for any absorbing path.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

_F64 = torch.float64


@dataclass
class MarkovChain:
    """A stationary first-order chain: init [V], trans [V, V] (rows sum to 1), allowed [V, V] (the rules)."""

    init: Tensor
    trans: Tensor
    allowed: Tensor

    @property
    def vocab_size(self) -> int:
        """Number of real tokens V (the mask id is V)."""
        return int(self.init.numel())

    @classmethod
    def random(cls, vocab_size: int = 8, allowed_per_token: int = 3, leak: float = 1e-3, seed: int = 0) -> "MarkovChain":
        """Random rules (each token allows `allowed_per_token` successors, Dirichlet(1) weights) + `leak` spread uniformly."""
        if not 1 <= allowed_per_token <= vocab_size:
            raise ValueError(f"allowed_per_token must lie in [1, {vocab_size}], got {allowed_per_token}")
        g = torch.Generator().manual_seed(seed)
        allowed = torch.zeros(vocab_size, vocab_size, dtype=torch.bool)
        for a in range(vocab_size):
            allowed[a, torch.randperm(vocab_size, generator=g)[:allowed_per_token]] = True
        weights = -torch.log(torch.rand(vocab_size, vocab_size, generator=g, dtype=_F64)) * allowed
        rules = weights / weights.sum(1, keepdim=True)
        trans = (1.0 - leak) * rules + leak / vocab_size
        # start from the stationary distribution, so every position has the same marginal
        evals, evecs = torch.linalg.eig(trans.T)
        init = evecs[:, torch.argmin((evals - 1).abs())].real.abs()
        return cls(init / init.sum(), trans, allowed)

    def fingerprint(self) -> str:
        """Short hash of the chain (model id in sampler specs)."""
        data = torch.cat([self.init, self.trans.reshape(-1)]).numpy().tobytes()
        return "markov-" + hashlib.sha256(data).hexdigest()[:12]

    # -- data and scores -------------------------------------------------------------

    def sample(self, num: int, length: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact sequences [num, length] (long)."""
        x = torch.empty(num, length, dtype=torch.long)
        x[:, 0] = torch.multinomial(self.init.expand(num, -1), 1, generator=generator)[:, 0]
        for i in range(1, length):
            x[:, i] = torch.multinomial(self.trans[x[:, i - 1]], 1, generator=generator)[:, 0]
        return x

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) [B] of complete sequences x [B, L] under the chain."""
        lp = torch.log(self.init)[x[:, 0]]
        return lp + torch.log(self.trans[x[:, :-1], x[:, 1:]]).sum(1)

    def nll_per_token(self, x: Tensor) -> Tensor:
        """-log p(x) / L [B] (nats per token)."""
        return -self.log_prob(x) / x.shape[1]

    def violation_rate(self, x: Tensor) -> Tensor:
        """Fraction [B] of adjacent pairs outside the rule set."""
        return (~self.allowed[x[:, :-1], x[:, 1:]]).to(_F64).mean(1)

    def entropy_per_token(self, length: int) -> float:
        """Exact H(x_1..L) / L in nats (stationary start): the NLL per token of perfect samples."""
        h_init = -(self.init * torch.log(self.init)).sum()
        h_rows = -(self.trans * torch.log(self.trans)).sum(1)
        return float((h_init + (length - 1) * (self.init * h_rows).sum()) / length)

    def true_violation_rate(self) -> float:
        """Probability that a transition breaks the rules under the chain itself (stationary)."""
        return float((self.init[:, None] * self.trans * (~self.allowed)).sum())

    def denoiser(self) -> "ChainDenoiser":
        """The exact denoiser p(x0_i | x_t) of this chain."""
        return ChainDenoiser(self)


class ChainDenoiser:
    """Exact p(x0_i = v | x_t) by forward-backward: x [B, L] (mask id = V) -> log-probabilities [B, L, V]."""

    def __init__(self, chain: MarkovChain) -> None:
        self.chain = chain
        self.vocab_size = chain.vocab_size
        self.model_id = chain.fingerprint()

    def emissions(self, x: Tensor) -> Tensor:
        """[B, L, V]: 1 for every value at masked positions, one-hot at observed ones."""
        V = self.vocab_size
        masked = (x == V).unsqueeze(-1)
        onehot = torch.nn.functional.one_hot(x.clamp(max=V - 1), V).to(_F64)
        return torch.where(masked, torch.ones_like(onehot), onehot)

    def __call__(self, x: Tensor, t: Tensor | float | None = None) -> Tensor:
        e = self.emissions(x)
        B, L, V = e.shape
        A = self.chain.trans.to(_F64)
        alpha = torch.empty(B, L, V, dtype=_F64)
        a = self.chain.init[None] * e[:, 0]
        alpha[:, 0] = a / a.sum(-1, keepdim=True)
        for i in range(1, L):  # normalised forward messages
            a = (alpha[:, i - 1] @ A) * e[:, i]
            alpha[:, i] = a / a.sum(-1, keepdim=True)
        beta = torch.ones(B, L, V, dtype=_F64)
        for i in range(L - 2, -1, -1):  # normalised backward messages
            b = (e[:, i + 1] * beta[:, i + 1]) @ A.T
            beta[:, i] = b / b.sum(-1, keepdim=True)
        post = alpha * beta
        return torch.log(post / post.sum(-1, keepdim=True))


def unigram_entropy(x: Tensor, vocab_size: int) -> Tensor:
    """Entropy [B] (nats) of each sequence's own token histogram (the diversity check beside NLL/perplexity)."""
    counts = torch.nn.functional.one_hot(x, vocab_size).sum(1).to(_F64)
    p = counts / counts.sum(-1, keepdim=True)
    return -(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(-1)


def mean_ci(values: Tensor, z: float = 1.96) -> tuple[float, float]:
    """(mean, half-width of the normal 95% confidence interval) of values [n]."""
    v = values.to(_F64)
    n = v.numel()
    half = z * float(v.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return float(v.mean()), half
