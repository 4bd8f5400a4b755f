"""The one device and autocast rule shared by the pretraining Trainer and the fine-tuning pipelines.

``precision`` is ``train.precision`` of a config: ``"auto"`` (bf16 autocast on CUDA, none on CPU, where
autocast would only slow training down), ``"bf16"`` (bf16 autocast) or ``"fp32"`` (no autocast).

The two former copies differed only for ``"bf16"`` on a machine without CUDA:

* fine-tuning (``papers/lora_alpha``) autocasts to bf16 on any device — :func:`autocast_dtype` (default);
* the Trainer refuses it (accelerate's bf16 mixed precision needs CUDA) —
  :func:`autocast_dtype` with ``strict=True``, which raises ``ValueError`` instead.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def default_device() -> torch.device:
    """``cuda`` when available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(precision: str, device: torch.device | str | None = None, *,
                   strict: bool = False) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (default: :func:`default_device`); None: no autocast.

    bf16 for ``"bf16"`` (any device) or ``"auto"`` on CUDA; None otherwise. ``strict=True`` (the Trainer's
    rule) raises ``ValueError`` for ``"bf16"`` on a device that is not CUDA instead of autocasting there.
    """
    dev = torch.device(device) if device is not None else default_device()
    cuda = dev.type == "cuda"
    if strict and precision == "bf16" and not cuda:
        raise ValueError("train.precision: 'bf16' needs a CUDA device; use 'auto' or 'fp32' on CPU")
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and cuda) else None
