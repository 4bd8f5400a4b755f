"""Decoder-only LM assembled from an :class:`LMSpec` (one mixer per layer + SwiGLU MLP)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .cache import DecodeCache, LayerCache
from .layers import RMSNorm, SwiGLU
from .mixers import MIXERS
from .spec import LayerSpec, LMSpec


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then + mlp(norm(x))."""

    def __init__(self, spec: LMSpec, layer: LayerSpec, layer_idx: int):
        super().__init__()
        if layer.mixer not in MIXERS:
            raise ValueError(f"mixer {layer.mixer!r} is unknown; available: {sorted(MIXERS)}")
        self.layer = layer
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.mixer = MIXERS[layer.mixer](spec, layer, layer_idx)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.mlp = SwiGLU(spec.hidden_size, spec.intermediate_size)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.mixer(self.input_layernorm(x), positions, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderLM(nn.Module):
    """input_ids [B, T] (long) → logits [B, T, vocab_size] (fp32 on CPU, autocast dtype on GPU)."""

    def __init__(self, spec: LMSpec):
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(Block(spec, layer, i) for i, layer in enumerate(spec.layers))
        self.norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) for embeddings and linear weights; residual output projections scaled by
        1/sqrt(2·L) (GPT-2) so the residual stream's variance does not grow with depth. Mixer-specific
        parameters (convolutions, SSM decay rates, norms) keep the initialisation of their own module."""
        std = self.spec.init_std
        residual_out = ("o_proj", "out_proj", "down_proj")
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                scale = 1.0 / math.sqrt(2 * self.spec.num_layers) if name.endswith(residual_out) else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)

    def _run(self, input_ids: torch.Tensor, cache: DecodeCache | None, keep_states: bool):
        start = cache.seen if cache is not None else 0
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        x = self.embed_tokens(input_ids)
        states = [x] if keep_states else None
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, cache.layers[i] if cache is not None else None)
            if keep_states:
                states.append(x)
        if cache is not None:
            cache.seen += input_ids.shape[1]
        return x, states

    def hidden_states(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Residual stream after the embedding and after each block: L+1 tensors [B, T, hidden]."""
        return self._run(input_ids, None, keep_states=True)[1]

    def forward(self, input_ids: torch.Tensor, cache: DecodeCache | None = None) -> torch.Tensor:
        """input_ids [B, T] → logits [B, T, V]. With ``cache`` (see :meth:`new_cache`) the tokens continue
        the sequence already processed: attention appends to its KV cache, linear mixers carry their state."""
        x, _ = self._run(input_ids, cache, keep_states=False)
        return self.lm_head(self.norm(x))

    def new_cache(self) -> DecodeCache:
        return DecodeCache.empty(len(self.layers))

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed_tokens.weight.numel()
        return n
