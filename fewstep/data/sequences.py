"""Token-sequence datasets for masked diffusion: Python's own help text, and samples of the exact Markov-chain testbed.

Items are `(ids [seq_len] long, 0)` (the constant keeps the (x, label) layout of the other
datasets). Each dataset has `vocab_size` real tokens (models use id `vocab_size` as the mask),
`decode(ids) -> str` for previews, `held_out()` sequences for a held-out likelihood, and a
`corpus` id recorded with trained models.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from fewstep.samplers.discrete.markov import MarkovChain
from fewstep.samplers.discrete.text import ALPHABET, corpus_fingerprint, decode, text_sequences


class SequenceDataset(Dataset):
    """A tensor of token sequences [n, L] with the interface above."""

    vocab_size: int
    corpus: str

    def __init__(self, sequences: Tensor, held_out: Tensor) -> None:
        self.sequences, self._held_out = sequences, held_out

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.sequences[i], 0

    def held_out(self) -> Tensor:
        """Sequences [m, L] not used for training."""
        return self._held_out

    def decode(self, ids: Tensor) -> str:
        """ids [L] -> a printable string."""
        return " ".join(str(i) for i in ids.tolist())


class TextSequenceDataset(SequenceDataset):
    """Non-overlapping windows of the normalised Python help-topic text (`pydoc_data.topics`); last 10% held out."""

    vocab_size = len(ALPHABET)

    def __init__(self, split: str = "train", seq_len: int = 64) -> None:
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        super().__init__(text_sequences(seq_len, split), text_sequences(seq_len, "test"))
        self.corpus = corpus_fingerprint()

    def decode(self, ids: Tensor) -> str:
        """ids [L] -> text (the mask id prints as a block)."""
        return decode(ids)


class MarkovSequenceDataset(SequenceDataset):
    """`n` sequences of the random Markov chain `MarkovChain.random(vocab_size, seed=chain_seed)` (the LSD testbed)."""

    def __init__(self, split: str = "train", vocab_size: int = 8, seq_len: int = 32, n: int = 4096, chain_seed: int = 0,
                 allowed_per_token: int = 3) -> None:
        self.chain = MarkovChain.random(vocab_size, min(allowed_per_token, vocab_size), seed=chain_seed)
        seeds = {"train": 1, "test": 2, "all": 1}
        if split not in seeds:
            raise ValueError(f"unknown split {split!r}; choose train, test or all")
        draw = lambda seed, count: self.chain.sample(count, seq_len, torch.Generator().manual_seed(seed))  # noqa: E731
        super().__init__(draw(seeds[split], n), draw(3, max(256, n // 8)))
        self.vocab_size = vocab_size
        self.corpus = f"markov-v{vocab_size}-a{allowed_per_token}-seed{chain_seed}"
