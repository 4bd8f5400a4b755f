"""Next-token cross-entropy that never holds the full fp32 logits.

At paper scale the logits of one micro-batch are large: 8 × 16,384 positions × a 32,768-token vocabulary is 17 GB
in fp32, plus as much again for their gradient. ``summed_cross_entropy`` computes the loss ``chunk`` positions at a
time, each chunk under activation checkpointing, so only one chunk's logits exist at once, in the forward pass
and again when backward recomputes them. The function is the same as the one-shot loss (the same per-position
terms, summed chunk by chunk: equal to float rounding, tests/test_loss_memory.py).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _part(readout: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, targets: torch.Tensor,
          weights: torch.Tensor | None) -> torch.Tensor:
    """Summed (optionally weighted) cross-entropy of positions x [..., W], targets [...] → fp32 scalar."""
    logits = readout(x).float().flatten(0, -2)
    targets = targets.flatten()
    if weights is None:
        return F.cross_entropy(logits, targets, reduction="sum")
    return (F.cross_entropy(logits, targets, reduction="none") * weights).sum()


def summed_cross_entropy(readout: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, targets: torch.Tensor,
                         weights: torch.Tensor | None = None, chunk: int = 0) -> torch.Tensor:
    """Σ over positions of weight · CE(readout(x), target), fp32 scalar.

    readout: the model's head, residual stream [N, W] → logits [N, V]; x [B, T, W] (or [N, W]); targets [B, T]
    (or [N]) next-token ids; weights: per-position factors shaped like targets, or None for 1. ``chunk`` > 0:
    positions per piece (the full [N, V] logits never exist); 0: all at once (the plain loss, bit for bit)."""
    if chunk < 0:
        raise ValueError(f"chunk: positions per piece must be >= 0 (0 = all at once), got {chunk}")
    if x.shape[:-1] != targets.shape or (weights is not None and weights.shape != targets.shape):
        raise ValueError(f"positions: x {list(x.shape[:-1])}, targets {list(targets.shape)}"
                         + ("" if weights is None else f", weights {list(weights.shape)}") + " must match")
    weights = None if weights is None else weights.flatten().to(x.device)
    n = targets.numel()
    if chunk == 0 or chunk >= n:  # the model's readout on the unflattened stream: the plain loss, bit for bit
        return _part(readout, x, targets, weights)
    x, targets = x.reshape(-1, x.shape[-1]), targets.flatten()
    total = torch.zeros((), device=x.device, dtype=torch.float32)
    for s in range(0, n, chunk):
        w = None if weights is None else weights[s:s + chunk]
        if torch.is_grad_enabled():
            total = total + checkpoint(_part, readout, x[s:s + chunk], targets[s:s + chunk], w, use_reentrant=False)
        else:
            total = total + _part(readout, x[s:s + chunk], targets[s:s + chunk], w)
    return total
