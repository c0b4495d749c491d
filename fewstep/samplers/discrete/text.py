"""Character-level text that ships with Python, and an n-gram likelihood proxy for generated text.

Corpus: the help-topic texts of the Python documentation, `pydoc_data.topics.topics` (part of
CPython's standard library; ~465 kB in Python 3.11), concatenated in sorted key order,
lower-cased, with every character outside `ALPHABET` turned into a space and runs of
whitespace collapsed. It changes with the Python version: `corpus_fingerprint()` records which
text a model was trained on. Sequences are consecutive non-overlapping windows; the last 10%
of the text is held out.
"""

from __future__ import annotations

import hashlib
import re
import string

import torch
from torch import Tensor

ALPHABET = string.ascii_lowercase + string.digits + " .,:;'\"()[]-_=+*/<>#%!?"


def stdlib_text() -> str:
    """The normalised corpus (str)."""
    from pydoc_data.topics import topics

    raw = "\n".join(topics[key] for key in sorted(topics)).lower()
    allowed = set(ALPHABET)
    text = "".join(ch if ch in allowed else " " for ch in raw)
    return re.sub(r"\s+", " ", text)


def corpus_fingerprint(text: str | None = None) -> str:
    """Short hash of the normalised corpus."""
    return "pydoc-topics-" + hashlib.sha256((text or stdlib_text()).encode()).hexdigest()[:12]


def encode(text: str) -> Tensor:
    """Characters -> ids [n] (long) in ALPHABET order."""
    index = {ch: i for i, ch in enumerate(ALPHABET)}
    return torch.tensor([index[ch] for ch in text], dtype=torch.long)


def decode(ids: Tensor) -> str:
    """ids [n] -> text; the mask id (len(ALPHABET)) prints as '\u2588' (a full block)."""
    return "".join(ALPHABET[i] if i < len(ALPHABET) else "\u2588" for i in ids.tolist())


def text_sequences(seq_len: int, split: str = "train", held_out: float = 0.1) -> Tensor:
    """Non-overlapping windows [n, seq_len] of the encoded corpus; split "train" | "test" | "all"."""
    ids = encode(stdlib_text())
    cut = int(len(ids) * (1.0 - held_out))
    part = {"train": ids[:cut], "test": ids[cut:], "all": ids}
    if split not in part:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    data = part[split]
    n = len(data) // seq_len
    return data[: n * seq_len].reshape(n, seq_len)


class NGramModel:
    """Interpolated character n-gram model (Jelinek-Mercer, fixed weights) fitted on a token stream [n].

    Used as an independent likelihood proxy ("generative perplexity") for generated text:
    it never saw the diffusion model, only the training text.
    """

    def __init__(self, ids: Tensor, vocab_size: int, order: int = 4, weights: tuple[float, ...] = (0.02, 0.08, 0.3, 0.6)) -> None:
        if len(weights) != order:
            raise ValueError(f"need {order} interpolation weights, got {len(weights)}")
        self.V, self.order = vocab_size, order
        self.weights = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        self.counts = []  # n-gram counts [V^n] and context counts [V^(n-1)], flattened
        for n in range(1, order + 1):
            codes = self._codes(ids, n)
            grams = torch.bincount(codes, minlength=vocab_size**n).to(torch.float64)
            self.counts.append((grams, grams.reshape(-1, vocab_size).sum(1)))

    def _codes(self, ids: Tensor, n: int) -> Tensor:
        """Integer code of every n-gram along the last dim: [..., len - n + 1]."""
        windows = ids.unfold(-1, n, 1)
        powers = self.V ** torch.arange(n - 1, -1, -1)
        return (windows * powers).sum(-1)

    def nll_per_token(self, x: Tensor) -> Tensor:
        """Mean -log p(x_i | x_{i-order+1..i-1}) [B] over positions order-1.. of x [B, L] (nats)."""
        start = self.order - 1
        prob = torch.zeros(x.shape[0], x.shape[1] - start, dtype=torch.float64)
        for n, (w, (grams, contexts)) in enumerate(zip(self.weights, self.counts), start=1):
            codes = self._codes(x[:, start - n + 1:], n)
            if n == 1:
                p = (grams[codes] + 0.5) / (grams.sum() + 0.5 * self.V)
            else:
                ctx = contexts[codes // self.V]
                p = torch.where(ctx > 0, grams[codes] / ctx.clamp_min(1), torch.zeros_like(ctx))
            prob += w * p
        return -torch.log(prob).mean(1)
