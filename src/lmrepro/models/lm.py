"""Decoder-only LM assembled from an :class:`LMSpec` (one mixer per layer + SwiGLU MLP), constant or
variable width (per-block widths and the residual rules are defined in :mod:`lmrepro.models.varwidth`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .cache import DecodeCache, LayerCache
from .layers import RMSNorm, SwiGLU
from .loss import summed_cross_entropy
from .mixers import MIXERS
from .spec import LayerSpec, LMSpec
from .varwidth import block_spec, readout_width, residual_width, width_changes


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then + mlp(norm(x)); x [B, T, spec.hidden_size]."""

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
    """input_ids [B, T] (long) → logits [B, T, vocab_size] (fp32 on CPU, autocast dtype on GPU).

    With ``spec.widths`` the residual stream is a buffer of ``residual_width`` W coordinates; block ℓ is a
    :class:`Block` of width w_ℓ (built from ``varwidth.block_spec``) fed per ``spec.expansion``.
    """

    def __init__(self, spec: LMSpec):
        super().__init__()
        self.spec = spec
        # Plain list, not modules: the per-block specs carry each block's width and init std.
        self.block_specs = [block_spec(spec, i) for i in range(spec.num_layers)]
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(
            Block(block, layer, i) for i, (block, layer) in enumerate(zip(self.block_specs, spec.layers))
        )
        self.norm = RMSNorm(readout_width(spec), spec.norm_eps)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        if spec.expansion == "learned":
            # Key = 0-indexed block that reads the projected stream: P_ℓ maps w_{ℓ−1} → w_ℓ.
            self.width_projections = nn.ModuleDict({
                str(i): nn.Linear(spec.widths[i - 1], spec.widths[i], bias=False) for i in width_changes(spec)
            })
        # Trainer switch (train.activation_checkpointing): recompute each block in backward instead of keeping
        # its activations; training only, never with a decode cache.
        self.activation_checkpointing = False
        self.reset_parameters()

    def _block(self, i: int, x: torch.Tensor, positions: torch.Tensor, cache: LayerCache | None) -> torch.Tensor:
        return self.layers[i](x, positions, cache)

    def reset_parameters(self) -> None:
        """Normal(0, std) for embeddings and linear weights; residual output projections scaled by
        1/sqrt(2·L) (GPT-2) so the residual stream's variance does not grow with depth. std = init_std,
        times sqrt(h / w_ℓ) inside block ℓ of a variable-width model (its block spec's init_std). Width
        projections ("learned") start as the rectangular identity. Mixer-specific parameters (convolutions,
        SSM decay rates, norms) keep the initialisation of their own module. μP (``spec.mup_base_width`` h0):
        block ℓ's matrices get init_std·sqrt(h0 / w_ℓ) instead (w_ℓ = h for constant width)."""
        residual_out = ("o_proj", "out_proj", "down_proj")
        base = self.spec.mup_base_width
        for name, module in self.named_modules():
            if name.startswith("width_projections."):
                nn.init.eye_(module.weight)
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                std = self.spec.init_std
                if name.startswith("layers."):
                    block = self.block_specs[int(name.split(".")[1])]
                    std = block.init_std if base is None else self.spec.init_std * math.sqrt(base / block.hidden_size)
                scale = 1.0 / math.sqrt(2 * self.spec.num_layers) if name.endswith(residual_out) else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)

    def _var_block(self, i: int, x: torch.Tensor, positions: torch.Tensor, cache: LayerCache | None) -> torch.Tensor:
        """Block i of a variable-width model on the residual buffer x [B, T, W] → [B, T, W]."""
        w, mode = self.spec.widths[i], self.spec.expansion
        if mode == "learned" and str(i) in self.width_projections:
            inp = self.width_projections[str(i)](x[..., : self.spec.widths[i - 1]])
        else:
            # "zero"/"learned" keep zeros beyond the active width (below), so this prefix already is
            # the zero-padded (or cut) stream; for "carry" it holds the most recent value of each coordinate.
            inp = x[..., :w]
        y = self.layers[i](inp, positions, cache)
        if mode == "carry":
            return torch.cat([y, x[..., w:]], dim=-1)
        return F.pad(y, (0, x.shape[-1] - w))

    def check_input(self, input_ids: torch.Tensor, start: int = 0) -> None:
        """input_ids must be integer [B, T], positions start..start+T-1 within ``max_seq_len`` and (on CPU;
        on CUDA the range check would cost a host sync) ids in [0, vocab_size)."""
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids: must be an integer tensor (token ids), got {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: must be [B, T], got shape {list(input_ids.shape)}")
        end = start + input_ids.shape[1]
        if end > self.spec.max_seq_len:
            raise ValueError(f"input_ids: positions up to {end} exceed max_seq_len={self.spec.max_seq_len} "
                             f"({start} cached + {input_ids.shape[1]} new tokens)")
        if input_ids.device.type == "cpu" and input_ids.numel():
            lo, hi = torch.aminmax(input_ids)
            if lo < 0 or hi >= self.spec.vocab_size:
                raise ValueError(f"input_ids: token ids must be in [0, vocab_size={self.spec.vocab_size}), got "
                                 f"min {int(lo)}, max {int(hi)}")

    def _run(self, input_ids: torch.Tensor, cache: DecodeCache | None, keep_states: bool):
        start = cache.seen if cache is not None else 0
        self.check_input(input_ids, start)
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        x = self.embed_tokens(input_ids)
        varwidth = self.spec.widths is not None
        if varwidth:  # coordinates [h, W) start at zero
            x = F.pad(x, (0, residual_width(self.spec) - self.spec.hidden_size))
        states = [x] if keep_states else None
        for i, layer in enumerate(self.layers):
            layer_cache = cache.layers[i] if cache is not None else None
            block = self._var_block if varwidth else self._block
            if self.activation_checkpointing and self.training and torch.is_grad_enabled() and cache is None:
                # Keeps only the block's input; backward recomputes the block (the same function, less memory).
                x = checkpoint(block, i, x, positions, layer_cache, use_reentrant=False)
            else:
                x = block(i, x, positions, layer_cache)
            if keep_states:
                states.append(x)
        if cache is not None:
            cache.seen += input_ids.shape[1]
        return x, states

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        """Residual stream x [B, T, W] → logits [B, T, V]: final RMSNorm over the first ``readout_width``
        coordinates (max(w_L, h); h for constant width), then the first h of them to the LM head."""
        if self.spec.widths is None:
            logits = self.lm_head(self.norm(x))
        else:
            logits = self.lm_head(self.norm(x[..., : self.norm.weight.shape[0]])[..., : self.spec.hidden_size])
        if self.spec.mup_base_width is not None:  # μP's output multiplier 1/width_mult (standard: none at all)
            logits = logits * (self.spec.mup_base_width / self.spec.hidden_size)
        return logits

    def lr_multipliers(self) -> dict[str, float]:
        """Parameter name → factor on the optimizer's learning rate: 1 everywhere in the standard
        parametrization; μP (Adam): h0 / w_ℓ for the matrices of block ℓ (fan-in ∝ its width w_ℓ) and
        h0 / w_{ℓ−1} for a width projection into block ℓ; 1 for embeddings, LM head and vectors (norm gains)."""
        base = self.spec.mup_base_width
        out = {}
        for name, p in self.named_parameters():
            parts = name.split(".")
            if base is None or p.dim() < 2 or parts[0] not in ("layers", "width_projections"):
                out[name] = 1.0
            elif parts[0] == "layers":
                out[name] = base / self.block_specs[int(parts[1])].hidden_size
            else:
                out[name] = base / self.spec.widths[int(parts[1]) - 1]
        return out

    def hidden_states(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Residual stream after the embedding and after each block: L+1 tensors [B, T, W] (W = hidden_size
        for constant width, else ``varwidth.residual_width``; "zero"/"learned" streams zero-padded to W)."""
        return self._run(input_ids, None, keep_states=True)[1]

    def forward(self, input_ids: torch.Tensor, cache: DecodeCache | None = None, *,
                targets: torch.Tensor | None = None, target_weights: torch.Tensor | None = None,
                loss_chunk: int = 0) -> torch.Tensor:
        """input_ids [B, T] → logits [B, T, V]. With ``cache`` (see :meth:`new_cache`) the tokens continue
        the sequence already processed: attention appends to its KV cache, linear mixers carry their state.

        With ``targets`` [B, T] (the next-token ids) it returns instead the summed cross-entropy, an fp32 scalar
        (each position × ``target_weights`` [B, T] when given), computed ``loss_chunk`` positions at a time when
        > 0 so the [B·T, V] fp32 logits never exist at once (``models.loss``). Inside forward, so DDP and FSDP
        see every parameter used."""
        x, _ = self._run(input_ids, cache, keep_states=False)
        if targets is None:
            return self.readout(x)
        return summed_cross_entropy(self.readout, x, targets, target_weights, loss_chunk)

    def new_cache(self) -> DecodeCache:
        return DecodeCache.empty(len(self.layers))

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed_tokens.weight.numel()
        return n
