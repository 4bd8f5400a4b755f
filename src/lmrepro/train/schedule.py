"""Learning-rate multipliers per optimizer step (used through ``torch.optim.lr_scheduler.LambdaLR``)."""

from __future__ import annotations

import math

from ..config import TrainConfig


def lr_multiplier(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` for optimizer step ``step`` (0-based) of ``total_steps``.

    warmup: linear from 1/warmup to 1 over ``warmup_fraction`` of the steps;
    cosine: then cosine from 1 to ``min_lr_ratio``, reached on the last step;
    wsd: constant 1, then linear decay over the last ``decay_fraction`` of the steps, reaching
    ``min_lr_ratio`` on the last step (``decay_fraction`` 0: no decay);
    constant: 1 after warmup.
    """
    warmup = int(round(cfg.warmup_fraction * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    floor = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        # The last step (total_steps - 1) is the end of the cosine, so the run ends at the floor.
        span = max(1, total_steps - 1 - warmup)
        progress = min(1.0, (step - warmup) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: warmup – stable – decay; the decay never starts inside the warmup.
    decay = int(round(cfg.decay_fraction * total_steps))
    if decay == 0:
        return 1.0
    start = max(total_steps - decay, warmup)
    if step < start:
        return 1.0
    return 1.0 - (1.0 - floor) * min(1.0, (step - start + 1) / max(1, total_steps - start))
