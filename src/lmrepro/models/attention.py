"""Softmax-attention mixer: q/k/v/o projections (HF Llama names), GQA, RoPE or NoPE, optional window."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import RotaryEmbedding
from .spec import LayerSpec, LMSpec


class AttentionMixer(nn.Module):
    """x [B, T, hidden] → [B, T, hidden]; causal, sliding window per ``LayerSpec.window``."""

    def __init__(self, spec: LMSpec, layer: LayerSpec):
        super().__init__()
        self.num_heads = spec.num_heads
        self.num_kv_heads = spec.num_kv_heads
        self.head_dim = spec.head_dim
        self.window = layer.window
        hidden = spec.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.rope = RotaryEmbedding(self.head_dim, spec.rope_theta) if layer.rope else None

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        if self.rope is not None:
            q, k = self.rope(q, positions), self.rope(k, positions)
        o = _causal_attention(q, k, v, self.window)
        return self.o_proj(o.reshape(b, t, -1))


def _causal_attention(q, k, v, window):
    """[B, T, H, D] layout; SDPA with an explicit mask when a window is set."""
    t = q.shape[1]
    mask = None
    if window is not None and window < t:
        i = torch.arange(t, device=q.device)
        mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=mask, is_causal=mask is None, enable_gqa=q.shape[2] != k.shape[2],
    )
    return o.transpose(1, 2)
