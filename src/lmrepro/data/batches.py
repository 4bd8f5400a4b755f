"""Deterministic, resumable batches of token chunks for training and evaluation.

The token stream is cut into chunks of ``seq_len + 1`` tokens at stride ``seq_len``: chunk ``c``
covers tokens ``[c*seq_len, c*seq_len + seq_len + 1)``, so inputs ``x = chunk[:-1]`` and targets
``y = chunk[1:]`` tile the stream without gaps or overlap in the targets.

Training order is an infinite sequence: epoch 0's permutation of the chunks, then epoch 1's, ...,
each permutation drawn from a ``torch.Generator`` seeded by (seed, epoch). ``batch(step, batch_size)``
is a pure function of its arguments, so a resumed run only needs the step counter to continue at the
exact data position, and each process of a multi-process run can compute its own slice.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import numpy as np
import torch

from .corpus import DataError
from .shards import ShardedTokens


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DataError(f"{name} must be an integer >= {low}, got {value!r}")


def _num_chunks(num_tokens: int, seq_len: int) -> int:
    # The last chunk must end inside the stream: c*seq_len + seq_len + 1 <= num_tokens.
    return max(0, (num_tokens - 1) // seq_len)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Hash (seed, epoch) so nearby seeds/epochs give unrelated generators; 63 bits fits manual_seed.
    digest = hashlib.sha256(f"chunks:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class ChunkSampler:
    """Shuffled non-overlapping chunks of ``seq_len + 1`` tokens, addressed by (step, batch_size)."""

    def __init__(self, tokens: ShardedTokens, seq_len: int, seed: int):
        _check_int("seq_len", seq_len, 1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise DataError(f"seed must be an integer, got {seed!r}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.seed = seed
        self.num_chunks = _num_chunks(len(tokens), seq_len)
        if self.num_chunks == 0:
            raise DataError(
                f"seq_len={seq_len} needs at least {seq_len + 1} tokens for one chunk, but the stream has "
                f"{len(tokens)}; use a shorter seq_len or more data"
            )
        self._perms: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        """Chunk order of ``epoch``: a LongTensor [num_chunks], a permutation of 0..num_chunks-1."""
        _check_int("epoch", epoch, 0)
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # keep two: a batch usually spans at most two epochs
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            self._perms[epoch] = torch.randperm(self.num_chunks, generator=g)
        return self._perms[epoch]

    def chunk_ids(self, step: int, batch_size: int) -> torch.Tensor:
        """Chunk indices of batch ``step``: LongTensor [batch_size], items [step*bs, (step+1)*bs) of the order."""
        _check_int("step", step, 0)
        _check_int("batch_size", batch_size, 1)
        items = torch.arange(step * batch_size, (step + 1) * batch_size)
        epochs, positions = items // self.num_chunks, items % self.num_chunks
        out = torch.empty(batch_size, dtype=torch.long)
        for epoch in torch.unique(epochs).tolist():
            sel = epochs == epoch
            out[sel] = self.permutation(epoch)[positions[sel]]
        return out

    def epoch_of(self, step: int, batch_size: int) -> int:
        """Epoch of the first item of batch ``step`` (for logging)."""
        return (step * batch_size) // self.num_chunks

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """Tokens of batch ``step``: LongTensor [batch_size, seq_len + 1]."""
        ids = self.chunk_ids(step, batch_size).tolist()
        rows = [self.tokens.read(c * self.seq_len, self.seq_len + 1) for c in ids]
        return torch.from_numpy(np.stack(rows))


def eval_windows(
    tokens: ShardedTokens, seq_len: int, max_windows: int | None, batch_size: int
) -> Iterator[torch.Tensor]:
    """Non-overlapping windows [w*seq_len, w*seq_len + seq_len + 1), in batches.

    Yields LongTensors [b, seq_len + 1] with b = batch_size except possibly the last. With
    ``max_windows`` (None: every full window) the windows are spread evenly over the whole stream,
    so a small evaluation still samples every part of the split rather than its first documents.
    Deterministic, so eval losses of different runs are computed on identical tokens.
    """
    _check_int("seq_len", seq_len, 1)
    _check_int("batch_size", batch_size, 1)
    if max_windows is not None:
        _check_int("max_windows", max_windows, 1)
    available = _num_chunks(len(tokens), seq_len)
    if available == 0:
        raise DataError(
            f"seq_len={seq_len} needs at least {seq_len + 1} tokens for one eval window, but the stream has "
            f"{len(tokens)}; use a shorter seq_len or more validation data"
        )
    n = available if max_windows is None else min(max_windows, available)
    chosen = np.linspace(0, available - 1, n).round().astype(np.int64) if n < available else np.arange(n)
    return _windows(tokens, seq_len, chosen, batch_size)


def _windows(tokens: ShardedTokens, seq_len: int, chosen: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    for first in range(0, len(chosen), batch_size):
        rows = [tokens.read(int(w) * seq_len, seq_len + 1) for w in chosen[first:first + batch_size]]
        yield torch.from_numpy(np.stack(rows))
