"""Softmax-attention mixer: q/k/v/o projections (HF Llama names), GQA, RoPE or NoPE, optional window."""

from __future__ import annotations

import torch
from torch import nn

from ...ops import attention
from ..cache import LayerCache
from ..layers import RotaryEmbedding


def effective_window(window: int | None, restriction: tuple[int, int] | None) -> tuple[int | None, int]:
    """(window, sinks) a layer with its own ``window`` (None = full) attends with under ``restriction``.

    A restriction (limit, sinks) replaces a wider field by the last ``limit`` tokens plus the first
    ``sinks`` (StreamingLLM); a layer whose own window is already ≤ ``limit`` keeps it and gains no sinks.
    """
    if restriction is not None and (window is None or window > restriction[0]):
        return restriction
    return window, 0


class AttentionMixer(nn.Module):
    """x [B, T, hidden] → [B, T, hidden]; causal, sliding window per ``LayerSpec.window``.

    ``restriction = (window, sinks)`` (set by :mod:`lmrepro.models.receptive`) narrows the receptive
    field at inference (see :func:`effective_window`).
    """

    def __init__(self, spec, layer, layer_idx: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.window = layer.window
        hidden = spec.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.rope = RotaryEmbedding(self.head_dim, spec.rope_theta) if layer.rope else None
        self.restriction: tuple[int, int] | None = None
        self.scale = spec.attention_scale()  # None: 1/sqrt(head_dim); μP: see LMSpec.mup_base_width

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        if self.rope is not None:
            q, k = self.rope(q, positions), self.rope(k, positions)
        if cache is not None:
            # Keys of earlier steps are kept already rotated (positions are absolute).
            if cache.k is not None:
                k, v = torch.cat([cache.k, k], dim=1), torch.cat([cache.v, v], dim=1)
            cache.k, cache.v = k, v
        window, sinks = effective_window(self.window, self.restriction)
        o = attention(q, k, v, window=window, sinks=sinks, scale=self.scale)
        return self.o_proj(o.reshape(b, t, -1))
