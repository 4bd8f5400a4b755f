"""Lightning-attention mixer (TransNormerLLM / MiniMax-01 style linear attention, fixed decay).

q, k, v = silu(W x); per-head fixed log decay from :func:`lmrepro.ops.lightning_decay_rates`
(fast decay in early layers, almost none in the last); o = RMSNorm(linear_attention(q, k, v)) ·
sigmoid(W_g x); out = W_o o. No positional encoding: the decay orders the tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import lightning_attention
from ...ops.lightning import lightning_decay_rates
from ..cache import LayerCache
from ..layers import RMSNorm


class LightningMixer(nn.Module):
    """x [B, T, hidden] → [B, T, hidden]."""

    def __init__(self, spec, layer, layer_idx: int):
        super().__init__()
        self.num_heads, self.head_dim = spec.num_heads, spec.head_dim
        hidden = spec.hidden_size
        inner = self.num_heads * self.head_dim
        self.q_proj = nn.Linear(hidden, inner, bias=False)
        self.k_proj = nn.Linear(hidden, inner, bias=False)
        self.v_proj = nn.Linear(hidden, inner, bias=False)
        self.g_proj = nn.Linear(hidden, inner, bias=False)
        self.o_norm = RMSNorm(inner, spec.norm_eps)
        self.o_proj = nn.Linear(inner, hidden, bias=False)
        # Fixed, not learned: recomputed on use (see RotaryEmbedding for why this is not a buffer).
        self.layer_idx, self.num_layers = layer_idx, spec.num_layers
        self.restriction: tuple[int, int] | None = None  # (window, sinks) at inference, see receptive.py

    @property
    def decay(self) -> torch.Tensor:
        """Per-head log decay [H]."""
        return lightning_decay_rates(self.num_heads, self.layer_idx, self.num_layers).to(self.q_proj.weight.device)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        q = F.silu(self.q_proj(x)).view(shape)
        k = F.silu(self.k_proj(x)).view(shape)
        v = F.silu(self.v_proj(x)).view(shape)
        if self.restriction is not None:
            if cache is not None:
                raise ValueError("receptive-field restriction is an evaluation of full sequences; decode without it")
            o = restricted_lightning(q, k, v, self.decay, *self.restriction)
        else:
            o, state = lightning_attention(q, k, v, self.decay, initial_state=cache.state if cache else None,
                                           output_final_state=cache is not None)
            if cache is not None:
                cache.state = state
        o = self.o_norm(o.reshape(b, t, -1)) * torch.sigmoid(self.g_proj(x))
        return self.o_proj(o)


def restricted_lightning(q, k, v, decay, window: int, sinks: int) -> torch.Tensor:
    """Lightning attention where query t only sees keys in its last ``window`` positions and the first
    ``sinks`` tokens (dense O(T²) evaluation path; same decay weights as the unrestricted op).

    q, k, v [B, T, H, D]; decay [H] log λ → o [B, T, H, D].
    """
    t = q.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)  # at least fp32, float64 stays float64
    i = torch.arange(t, device=q.device)
    dist = (i[:, None] - i[None, :]).to(acc)  # [T, T] query − key
    visible = (dist >= 0) & ((dist < window) | (i[None, :] < sinks))
    weights = torch.exp(decay.to(acc)[:, None, None] * dist.clamp(min=0)) * visible  # [H, T, T]
    scores = torch.einsum("bthd,bshd->bhts", q.to(acc), k.to(acc)) * q.shape[-1] ** -0.5
    return torch.einsum("bhts,bshd->bthd", scores * weights, v.to(acc)).to(q.dtype)
