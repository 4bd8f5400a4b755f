"""Gated DeltaNet mixer (Yang et al. 2025; the linear layers of Qwen3-Next).

q, k, v = silu(conv(W x)) per stream; q, k L2-normalised per head; β = sigmoid(W_b x);
g = −exp(A_log) · softplus(W_a x + dt_bias) (log decay); o = gated_delta_rule(q, k, v, g, β);
o = RMSNorm_head(o) · silu(W_g x); out = W_o o.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import gated_delta_rule
from ..cache import LayerCache
from ..conv import ShortConv
from ..layers import RMSNorm


class GatedDeltaNetMixer(nn.Module):
    """x [B, T, hidden] → [B, T, hidden]; H = num_heads heads of key dim hidden/H, value dim × gdn_expand_v."""

    def __init__(self, spec, layer, layer_idx: int):
        super().__init__()
        hidden = spec.hidden_size
        self.num_heads, self.key_dim = spec.num_heads, spec.head_dim
        self.value_dim = spec.head_dim * spec.gdn_expand_v
        hk, hv = self.num_heads * self.key_dim, self.num_heads * self.value_dim
        self.q_proj = nn.Linear(hidden, hk, bias=False)
        self.k_proj = nn.Linear(hidden, hk, bias=False)
        self.v_proj = nn.Linear(hidden, hv, bias=False)
        self.a_proj = nn.Linear(hidden, self.num_heads, bias=False)
        self.b_proj = nn.Linear(hidden, self.num_heads, bias=False)
        self.g_proj = nn.Linear(hidden, hv, bias=False)
        self.q_conv = ShortConv(hk, spec.conv_kernel)
        self.k_conv = ShortConv(hk, spec.conv_kernel)
        self.v_conv = ShortConv(hv, spec.conv_kernel)
        dt = torch.exp(torch.rand(self.num_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.num_heads).uniform_(1, 16)))
        self.o_norm = RMSNorm(self.value_dim, spec.norm_eps)
        self.o_proj = nn.Linear(hv, hidden, bias=False)
        self.restriction: tuple[int, int] | None = None

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        if self.restriction is not None:
            raise NotImplementedError("receptive-field restriction is implemented for attention and lightning "
                                      "layers only")
        b, t, _ = x.shape
        h = self.num_heads
        conv = cache.conv if cache is not None else {}
        q, conv_q = self.q_conv(self.q_proj(x), conv.get("q"))
        k, conv_k = self.k_conv(self.k_proj(x), conv.get("k"))
        v, conv_v = self.v_conv(self.v_proj(x), conv.get("v"))
        acc = torch.promote_types(x.dtype, torch.float32)  # gates and norms in at least fp32
        q = F.normalize(q.view(b, t, h, self.key_dim).to(acc), dim=-1).to(x.dtype)
        k = F.normalize(k.view(b, t, h, self.key_dim).to(acc), dim=-1).to(x.dtype)
        v = v.view(b, t, h, self.value_dim)
        beta = torch.sigmoid(self.b_proj(x).to(acc))
        g = -torch.exp(self.A_log.to(acc)) * F.softplus(self.a_proj(x).to(acc) + self.dt_bias.to(acc))
        o, state = gated_delta_rule(q, k, v, g, beta, initial_state=cache.state if cache else None,
                                    output_final_state=cache is not None)
        if cache is not None:
            cache.conv.update(q=conv_q, k=conv_k, v=conv_v)
            cache.state = state
        o = self.o_norm(o.to(x.dtype)) * F.silu(self.g_proj(x).view(b, t, h, self.value_dim))
        return self.o_proj(o.reshape(b, t, -1))
