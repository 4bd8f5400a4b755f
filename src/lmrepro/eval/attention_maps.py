"""Attention probabilities of a :class:`DecoderLM`'s softmax-attention layers, recomputed from outside.

The mixers never materialise their attention matrix (sdpa / flash paths), so the analyses that need it
(retrieval heads, attention entropy) rebuild it from the residual stream instead of changing the model:
layer ℓ's input is ``input_layernorm(states[ℓ])``; q and k come from its ``q_proj`` / ``k_proj``, are
rotated by its RoPE when it has one (positions 0..T−1, as in :meth:`DecoderLM.hidden_states`), and query
head h reads kv head h // (H / Hkv). The scores are scaled by head_dim**-0.5, masked with the layer's
own visibility rule (causal, its window, and an inference-time ``restriction`` if one is set; see
:func:`lmrepro.ops.attention_mask`) and soft-maxed in fp32 (fp64 for an fp64 model).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.mixers.attention import effective_window
from ..ops import attention_mask

__all__ = ["attention_layers", "attention_probs", "layer_qkv", "layer_visibility", "probs_from_states"]


def attention_layers(model, full_only: bool = False) -> list[int]:
    """Indices of the softmax-attention layers (full and sliding-window; only full when ``full_only``).

    Arrays of per-head scores [L_attn, H] in :mod:`lmrepro.eval.laziness` have one row per entry, in order.
    """
    return [i for i, block in enumerate(model.layers)
            if block.layer.mixer == "attention" and (block.layer.is_full_attention or not full_only)]


def _check_layers(model, layers) -> list[int]:
    allowed = attention_layers(model)
    if layers is None:
        return allowed
    layers = [int(i) for i in layers]
    bad = [i for i in layers if i not in allowed]
    if bad:
        raise ValueError(f"layers: {bad} are not softmax-attention layers of this model; allowed: {allowed}")
    return layers


def layer_qkv(model, layer_idx: int, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Residual state entering layer ``layer_idx`` [B, T, hidden] → q [B, T, H, D], k, v [B, T, Hkv, D].

    q and k carry the layer's RoPE (if any) at positions 0..T−1, exactly as the mixer computes them.
    """
    block = model.layers[layer_idx]
    mixer = block.mixer
    x = block.input_layernorm(residual)
    b, t, _ = x.shape
    q = mixer.q_proj(x).view(b, t, mixer.num_heads, mixer.head_dim)
    k = mixer.k_proj(x).view(b, t, mixer.num_kv_heads, mixer.head_dim)
    v = mixer.v_proj(x).view(b, t, mixer.num_kv_heads, mixer.head_dim)
    if mixer.rope is not None:
        positions = torch.arange(t, device=x.device)
        q, k = mixer.rope(q, positions), mixer.rope(k, positions)
    return q, k, v


def layer_visibility(model, layer_idx: int, t: int, device=None) -> torch.Tensor:
    """Boolean mask [T, T] (True = key visible) of layer ``layer_idx`` for a T-token sequence."""
    mixer = model.layers[layer_idx].mixer
    window, sinks = effective_window(mixer.window, mixer.restriction)  # the rule AttentionMixer.forward uses
    return attention_mask(t, t, window=window, sinks=sinks, device=device)


def _query_rows(query_positions, t: int) -> list[int]:
    if query_positions is None:
        return list(range(t))
    rows = [int(p) for p in query_positions]
    bad = [p for p in rows if not -t <= p < t]
    if bad:
        raise ValueError(f"query_positions: {bad} out of range for a sequence of {t} tokens (allowed -{t}..{t - 1})")
    return [p % t for p in rows]


def probs_from_states(model, states: Sequence[torch.Tensor], layers=None,
                      query_positions=None) -> dict[int, torch.Tensor]:
    """Attention probabilities from residual states (the L+1 tensors [B, T, hidden] of ``hidden_states``).

    Returns {layer_idx: probs [B, H, Tq, T]}; rows follow ``query_positions`` (ints, negative counts from
    the end; None = every position), masked keys are exactly 0 and every row sums to 1.
    """
    layers = _check_layers(model, layers)
    t = states[0].shape[1]
    rows = _query_rows(query_positions, t)
    out = {}
    for i in layers:
        q, k, _ = layer_qkv(model, i, states[i])
        acc = torch.promote_types(q.dtype, torch.float32)
        rep = q.shape[2] // k.shape[2]
        qh = q[:, rows].to(acc).transpose(1, 2)  # [B, H, Tq, D]
        kh = k.to(acc).repeat_interleave(rep, dim=2).transpose(1, 2)  # [B, H, T, D]
        scores = (qh @ kh.transpose(-1, -2)) * q.shape[-1] ** -0.5
        visible = layer_visibility(model, i, t, device=q.device)[rows]  # [Tq, T]
        out[i] = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
    return out


@torch.no_grad()
def attention_probs(model, input_ids: torch.Tensor, layers=None, query_positions=None) -> dict[int, torch.Tensor]:
    """input_ids [B, T] → {layer_idx: attention probabilities [B, H, Tq, T]} of the attention ``layers``
    (default: every softmax-attention layer, windowed ones included). See :func:`probs_from_states`."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a LongTensor [B, T], got {getattr(input_ids, 'shape', type(input_ids))}")
    device = next(model.parameters()).device
    states = model.hidden_states(input_ids.to(device))
    return probs_from_states(model, states, layers, query_positions)
