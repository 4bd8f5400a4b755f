"""Learning-rate multipliers per optimizer step (used through ``torch.optim.lr_scheduler.LambdaLR``)."""

from __future__ import annotations

import math

from ..config import TrainConfig


def lr_multiplier(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` for optimizer step ``step`` (0-based) of ``total_steps``.

    warmup: linear from 1/warmup to 1 over ``warmup_fraction`` of the steps;
    cosine: then cosine to ``min_lr_ratio``; wsd: constant, then linear decay to ``min_lr_ratio``
    over the last ``decay_fraction`` of the steps; constant: 1 after warmup.
    """
    warmup = int(round(cfg.warmup_fraction * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    floor = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        span = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: warmup – stable – decay
    decay = max(1, int(round(cfg.decay_fraction * total_steps)))
    start = total_steps - decay
    if step < start:
        return 1.0
    return 1.0 - (1.0 - floor) * min(1.0, (step - start + 1) / decay)
