"""Decoder-only LM assembled from an :class:`LMSpec` (one mixer per layer + SwiGLU MLP)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import AttentionMixer
from .layers import RMSNorm, SwiGLU
from .spec import LayerSpec, LMSpec

# Sequence mixers by name; later architectures register here.
MIXERS: dict[str, type[nn.Module]] = {"attention": AttentionMixer}


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then + mlp(norm(x))."""

    def __init__(self, spec: LMSpec, layer: LayerSpec):
        super().__init__()
        if layer.mixer not in MIXERS:
            raise ValueError(f"mixer {layer.mixer!r} is unknown; available: {sorted(MIXERS)}")
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.mixer = MIXERS[layer.mixer](spec, layer)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.mlp = SwiGLU(spec.hidden_size, spec.intermediate_size)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.input_layernorm(x), positions)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderLM(nn.Module):
    """input_ids [B, T] (long) → logits [B, T, vocab_size] (fp32 on CPU, autocast dtype on GPU)."""

    def __init__(self, spec: LMSpec):
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(Block(spec, layer) for layer in spec.layers)
        self.norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) everywhere; residual output projections scaled by 1/sqrt(2·L)
        (GPT-2) so the residual stream's variance does not grow with depth."""
        std = self.spec.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            scale = 1.0 / math.sqrt(2 * self.spec.num_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
            nn.init.normal_(p, mean=0.0, std=std * scale)

    def hidden_states(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Residual stream after the embedding and after each block: L+1 tensors [B, T, hidden]."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed_tokens(input_ids)
        states = [x]
        for layer in self.layers:
            x = layer(x, positions)
            states.append(x)
        return states

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, positions)
        return self.lm_head(self.norm(x))

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed_tokens.weight.numel()
        return n
