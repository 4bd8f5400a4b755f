"""Validation loss and loss by token position."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_nll(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """batch [B, T+1] token ids → per-token negative log-likelihood [B, T] (fp32, nats)."""
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="none").view(
        batch.shape[0], -1
    )


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches, device: torch.device | str = "cpu") -> dict:
    """Mean NLL over all tokens of ``batches`` (iterable of [b, T+1]) and the mean by position.

    Returns {"loss", "perplexity", "tokens", "windows", "loss_by_position": list[T]}.
    """
    was_training = model.training
    model.eval()
    total, count, windows = 0.0, 0, 0
    by_pos = None
    for batch in batches:
        nll = token_nll(model, batch.to(device)).double()
        total += nll.sum().item()
        count += nll.numel()
        windows += nll.shape[0]
        by_pos = nll.sum(0) if by_pos is None else by_pos + nll.sum(0)
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_loss: no validation windows; the validation split is shorter than one window")
    loss = total / count
    return {
        "loss": loss,
        "perplexity": float(torch.tensor(loss).exp()),
        "tokens": count,
        "windows": windows,
        "loss_by_position": (by_pos / windows).tolist(),
    }
