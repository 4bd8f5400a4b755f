"""Mamba-2 mixer (Dao & Gu 2024): in-projection, short causal conv, SSD scan, gated RMSNorm.

in_proj(x) → z [d_inner], xBC [d_inner + 2N], dt [H]; xBC = silu(conv(xBC)); dt = softplus(dt + dt_bias);
A = −exp(A_log); y = SSD(x, dt, A, B, C) + D·x; y = RMSNorm(y · silu(z)); out = out_proj(y).
One B/C group shared by all heads (ngroups = 1); d_inner = expand · hidden; H = d_inner / head_dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import mamba2_ssd
from ..cache import LayerCache
from ..conv import ShortConv
from ..layers import RMSNorm


class Mamba2Mixer(nn.Module):
    """x [B, T, hidden] → [B, T, hidden]."""

    def __init__(self, spec, layer, layer_idx: int):
        super().__init__()
        hidden = spec.hidden_size
        self.d_inner = spec.ssm_expand * hidden
        if self.d_inner % spec.ssm_head_dim:
            raise ValueError(f"ssm_head_dim {spec.ssm_head_dim} must divide ssm_expand·hidden = {self.d_inner}")
        self.head_dim, self.state_size = spec.ssm_head_dim, spec.ssm_state_size
        self.num_heads = self.d_inner // self.head_dim
        n = self.state_size
        self.in_proj = nn.Linear(hidden, 2 * self.d_inner + 2 * n + self.num_heads, bias=False)
        self.conv = ShortConv(self.d_inner + 2 * n, spec.conv_kernel)
        # dt initialised log-uniformly in [1e-3, 1e-1] through the inverse softplus, A in [1, 16] (Mamba-2).
        dt = torch.exp(torch.rand(self.num_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.num_heads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.num_heads))
        self.norm = RMSNorm(self.d_inner, spec.norm_eps)
        self.out_proj = nn.Linear(self.d_inner, hidden, bias=False)
        self.restriction: tuple[int, int] | None = None

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        if self.restriction is not None:
            raise NotImplementedError("receptive-field restriction is implemented for attention and lightning "
                                      "layers only")
        b, t, _ = x.shape
        n, h = self.state_size, self.num_heads
        z, xbc, dt = self.in_proj(x).split([self.d_inner, self.d_inner + 2 * n, h], dim=-1)
        xbc, conv_state = self.conv(xbc, cache.conv.get("xbc") if cache else None)
        xs, B, C = xbc.split([self.d_inner, n, n], dim=-1)
        acc = torch.promote_types(x.dtype, torch.float32)  # decay rates in at least fp32
        dt = F.softplus(dt.to(acc) + self.dt_bias.to(acc))
        A = -torch.exp(self.A_log.to(acc))
        y, state = mamba2_ssd(xs.view(b, t, h, self.head_dim), dt, A, B.view(b, t, 1, n), C.view(b, t, 1, n),
                              D=self.D, initial_state=cache.state if cache else None,
                              output_final_state=cache is not None)
        if cache is not None:
            cache.conv["xbc"], cache.state = conv_state, state
        y = self.norm(y.reshape(b, t, self.d_inner).to(x.dtype) * F.silu(z))
        return self.out_proj(y)
