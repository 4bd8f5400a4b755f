"""Decoding state: a KV cache for attention layers, conv + recurrent state for the linear mixers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerCache:
    """Per-layer state; each mixer uses the fields it needs.

    attention: ``k``, ``v`` [B, T_seen, Hkv, D];  linear mixers: ``conv`` (dict of conv states
    [B, C, K−1]) and ``state`` (recurrent state [B, H, K, V]).
    """

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    conv: dict[str, torch.Tensor] = field(default_factory=dict)
    state: torch.Tensor | None = None


@dataclass
class DecodeCache:
    """State of a whole model; ``seen`` tokens have been processed so far."""

    layers: list[LayerCache]
    seen: int = 0

    @classmethod
    def empty(cls, num_layers: int) -> "DecodeCache":
        return cls([LayerCache() for _ in range(num_layers)])
