"""The one loss evaluator: validation loss, loss by token position and by window (pretraining LMs), and the
token-weighted supervised loss of fine-tuning data (:func:`evaluate_sft_loss`)."""

from __future__ import annotations

import contextlib
import math

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
    """Mean NLL over all tokens of ``batches`` (iterable of [b, T+1]), the mean by position and by window.

    Returns {"loss", "perplexity", "tokens", "windows", "loss_by_position": list[T], "window_losses": list[N]}.
    ``window_losses`` is the mean NLL of each window (``token_nll(model, b).double().mean(1)``); for windows of
    equal length their mean is ``loss``, and paired per-window differences give its sampling error.
    """
    was_training = model.training
    model.eval()
    total, count, windows = 0.0, 0, 0
    by_pos = None
    per_window: list[float] = []
    for batch in batches:
        nll = token_nll(model, batch.to(device)).double()
        total += nll.sum().item()
        count += nll.numel()
        windows += nll.shape[0]
        by_pos = nll.sum(0) if by_pos is None else by_pos + nll.sum(0)
        per_window.extend(nll.mean(1).tolist())
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
        "window_losses": per_window,
    }


@torch.no_grad()
def evaluate_sft_loss(model: torch.nn.Module, data: dict[str, torch.Tensor], batch_size: int = 16,
                      autocast: torch.dtype | None = None) -> float:
    """Token-weighted mean loss over every supervised token of ``data`` (eval mode; NaN if non-finite).

    ``data``: ``input_ids`` and ``labels`` [N, T] (HF label convention, -100 = not supervised; see
    :mod:`lmrepro.lora.finetune`), optionally ``lengths`` [N] (right padding past the longest row of a
    batch is dropped). ``autocast``: e.g. torch.bfloat16 (None: the parameters' dtype).
    """
    from ..lora.finetune import sft_loss  # lazy: lora.finetune → train → trainer → this module

    was = model.training
    model.eval()
    total, count = 0.0, 0
    dev = next(model.parameters()).device
    try:
        for start in range(0, data["input_ids"].shape[0], batch_size):
            batch = {k: v[start:start + batch_size].to(dev) for k, v in data.items()}
            if "lengths" in batch:
                width = int(batch["lengths"].max())
                batch = {k: (v[:, :width] if v.dim() == 2 else v) for k, v in batch.items()}
            ctx = torch.autocast(dev.type, dtype=autocast) if autocast else contextlib.nullcontext()
            with ctx:
                loss, n = sft_loss(model, batch)
            total += float(loss) * n
            count += n
    finally:
        model.train(was)
    value = total / count
    return value if math.isfinite(value) else math.nan
