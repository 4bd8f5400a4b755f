"""Short causal depthwise convolution (Mamba-2 / Gated DeltaNet), with a decoding state."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortConv(nn.Module):
    """x [B, T, C] → silu(causal depthwise conv(x)) [B, T, C].

    ``state`` [B, C, K−1] holds the previous K−1 inputs (zeros at the sequence start); the returned
    state lets step-by-step decoding continue exactly where a full forward would be.
    """

    def __init__(self, channels: int, kernel_size: int = 4):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, c = x.shape
        history = state if state is not None else x.new_zeros(b, c, self.kernel_size - 1)
        padded = torch.cat([history.to(x.dtype), x.transpose(1, 2)], dim=2)  # [B, C, K-1+T]
        y = F.conv1d(padded, self.weight, self.bias, groups=c)  # [B, C, T]
        new_state = padded[:, :, padded.shape[2] - (self.kernel_size - 1):]
        return F.silu(y).transpose(1, 2), new_state
