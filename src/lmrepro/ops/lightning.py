"""Lightning Attention: linear attention with a fixed per-head exponential decay.

Recurrence per head h (TransNormerLLM / MiniMax-01 "Lightning Attention"), state S [K, V]:

    S_t = λ_h · S_{t-1} + k_t v_tᵀ,        o_t = scale · S_tᵀ q_t,        decay_h = log λ_h <= 0

Layout [B, T, H, D]; states [B, H, K, V] (fla's convention). ``scale`` defaults to K**-0.5 like fla.
No normalization or feature map is applied inside: the mixer owns those (e.g. SiLU on q/k, an output
norm), exactly as with fla's kernels.

Paths: :func:`naive_lightning_attention` (step-by-step recurrence), :func:`chunked_lightning_attention`
(matmuls per chunk) and the CUDA kernel ``fla.ops.simple_gla.chunk_simple_gla(q, k, v, g_gamma=decay,
scale=scale, ...)``. We deliberately do not call ``fla.ops.lightning_attn.chunk_lightning_attn``: it
hard-codes a different slope schedule; passing our own per-head log decay as ``g_gamma`` keeps the
schedule in one place (:func:`lightning_decay_rates`). fla's kernel does not differentiate ``g_gamma``,
so a decay that requires grad is refused on that path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._chunk import (acc_dtype, check_chunk_size, check_float, check_sign, check_state, chunked_scalar_decay,
                     fla_simple_gla)
from .dispatch import select_backend

__all__ = [
    "alibi_slopes",
    "chunked_lightning_attention",
    "lightning_attention",
    "lightning_decay_rates",
    "naive_lightning_attention",
]


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi head slopes (Press et al. 2022): for H a power of two, s_h = 2^(-8(h+1)/H), h = 0..H-1.

    Otherwise the slopes of the largest power of two P < H, followed by every other slope of the
    2P-head schedule (the rule of the ALiBi reference code), so slopes stay in (0, 1).
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    p = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(p) + alibi_slopes(2 * p)[0::2][: num_heads - p]


def lightning_decay_rates(num_heads: int, layer_idx: int, num_layers: int) -> torch.Tensor:
    """Per-head log decay log λ_h [H] (float32) for layer ``layer_idx`` of ``num_layers`` (0-based).

    Formula (MiniMax-01's Lightning Attention, a refinement of TransNormerLLM's schedule):

        log λ_h = -s_h · (1 - l / (L - 1) + 1e-5)          (L = 1: log λ_h = -s_h · (1 + 1e-5))

    with s_h the ALiBi slopes :func:`alibi_slopes`. Early layers decay fast (local), the last layer
    hardly decays (global); the 1e-5 keeps the last layer's decay strictly below 1.
    (fla's ``chunk_lightning_attn`` uses the linear variant -(8/H)(1 - l/L)·h instead; not used here.)
    """
    if not 0 <= layer_idx < num_layers:
        raise ValueError(f"need 0 <= layer_idx < num_layers, got layer_idx={layer_idx}, num_layers={num_layers}")
    depth = 0.0 if num_layers == 1 else layer_idx / (num_layers - 1)
    slopes = torch.tensor(alibi_slopes(num_heads), dtype=torch.float32)
    return -slopes * (1.0 - depth + 1e-5)


def _prepare(q, k, v, decay, initial_state, name):
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"{name}: expected q, k [B, T, H, K] and v [B, T, H, V] with equal B, T, H; got "
            f"q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}"
        )
    b, t, h, dk = q.shape
    if not isinstance(decay, torch.Tensor):
        decay = torch.as_tensor(decay, dtype=torch.float32, device=q.device)
    if decay.shape != (h,):
        raise ValueError(f"{name}: decay must have shape [H] = [{h}], got {list(decay.shape)}")
    check_float(name, q=q, k=k, v=v, decay=decay, initial_state=initial_state)
    check_sign(decay, name, "decay (a log decay)", positive=False)
    check_state(initial_state, (b, h, dk, v.shape[-1]), name)
    return decay


def naive_lightning_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    decay: torch.Tensor | Sequence[float],
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference: the recurrence one step at a time in fp32 (fp64 for fp64 inputs). Shapes as the module."""
    decay = _prepare(q, k, v, decay, initial_state, "naive_lightning_attention")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dt = acc_dtype(q, k, v, decay, initial_state)
    b, t, h, dk = q.shape
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    lam = decay.to(dt).exp()[None, :, None, None]  # [1, H, 1, 1]
    s = initial_state.to(dt) if initial_state is not None else q.new_zeros(b, h, dk, v.shape[-1])
    outs = []
    for i in range(t):
        s = lam * s + k[:, i, :, :, None] * v[:, i, :, None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, i], s))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(b, 0, h, v.shape[-1])
    return o, (s if output_final_state else None)


def chunked_lightning_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    decay: torch.Tensor | Sequence[float],
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked matmul form (fp32 accumulation, autograd-differentiable). Shapes as the module."""
    decay = _prepare(q, k, v, decay, initial_state, "chunked_lightning_attention")
    check_chunk_size(chunk_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    b, t, h, _ = q.shape
    g = decay.to(acc_dtype(q, decay))[None, None, :].expand(b, t, h)
    return chunked_scalar_decay(
        q, k, v, g, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, chunk_size=chunk_size,
    )


def lightning_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    decay: torch.Tensor | Sequence[float],
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Lightning Attention with fixed per-head log decay ``decay`` [H] (see the module docstring).

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]; decay: [H] log λ_h <= 0 (:func:`lightning_decay_rates`).
        scale: defaults to K**-0.5. initial_state: [B, H, K, V] (may require grad).
        chunk_size: chunk length of the chunked CPU path (the fla kernel uses its own tiling).
        backend: "naive" | "chunked" | "fla" | None (automatic, see :mod:`lmrepro.ops.dispatch`).
    Returns:
        o [B, T, H, V] in q's dtype, and the final state [B, H, K, V] (float32; float64 for float64
        inputs) if ``output_final_state`` else None.
    """
    chosen = select_backend("lightning_attention", backend, device=q.device, dtype=q.dtype)
    if chosen == "naive":
        o, s = naive_lightning_attention(
            q, k, v, decay, scale=scale, initial_state=initial_state, output_final_state=output_final_state
        )
    elif chosen == "chunked":
        o, s = chunked_lightning_attention(
            q, k, v, decay, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, chunk_size=chunk_size,
        )
    else:
        decay = _prepare(q, k, v, decay, initial_state, "lightning_attention")
        if decay.requires_grad:
            raise ValueError(
                "lightning_attention: fla's kernel does not return a gradient for the decay; "
                "pass a fixed decay (buffer) or use backend='chunked'"
            )
        o, s = fla_simple_gla(
            q, k, v, g_gamma=decay.to(q.device), scale=q.shape[-1] ** -0.5 if scale is None else scale,
            initial_state=initial_state, output_final_state=output_final_state,
        )
    return o.to(q.dtype), s
