"""Gated DeltaNet: the delta rule with a data-dependent scalar gate per (step, head).

fla's convention (state S [K, V] per head, layout [B, T, H, D]):

    S_t = exp(g_t) · (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,        o_t = scale · S_tᵀ q_t

(the same map as ``S_{t-1}(I - β k kᵀ)`` written for a [V, K] state). ``g`` [B, T, H] is the log
decay (<= 0), ``beta`` [B, T, H] in (0, 1), ``scale`` defaults to K**-0.5 like fla.
**k is assumed L2-normalized by the caller** (the mixer does it, as Qwen3-Next / fla layers do); nothing
is normalized here, so for unnormalized k the recurrence is still computed exactly, it is just not
a contraction.

Chunked form (WY / UT transform). Inside a chunk with cumulative log decay gc, Γ_ij = exp(gc_i - gc_j)
(j <= i) and S_0 the state at the chunk start, the recurrence is S_t = a_t S_{t-1} + k_t u_tᵀ with
"new values" u_t = β_t (v_t - (a_t S_{t-1})ᵀ k_t), a_t = e^{g_t}; unrolled, S_t = e^{gc_t} S_0 + Σ_{j<=t} Γ_tj k_j u_jᵀ,
so the u_t of a chunk satisfy the unit-lower-triangular system

    (I + L) U = diag(β) V - diag(β e^{gc}) K S_0,      L_tj = β_t Γ_tj k_tᵀk_j  (j < t)

so U = Ũ - W S_0 with Ũ = (I+L)⁻¹ diag(β) V and W = (I+L)⁻¹ diag(β e^{gc}) K, both independent of S_0
(computed for all chunks at once by triangular solves). Then, chunk by chunk:

    o = scale · [diag(e^{gc}) Q S_0 + (Q Kᵀ ⊙ Γ) U],        S_next = e^{gc_C} S_0 + (diag(e^{gc_C - gc}) K)ᵀ U

CUDA kernel: ``fla.ops.gated_delta_rule.chunk_gated_delta_rule(q, k, v, g, beta, scale=scale,
initial_state=..., output_final_state=...)`` with the same layout, g as natural-log decay (the kernel
rescales to log2 itself), beta post-sigmoid, no in-kernel L2 norm (``use_qk_l2norm_in_kernel=False``).
"""

from __future__ import annotations

import torch

from ._chunk import (acc_dtype, check_chunk_size, check_float, check_sign, check_state, chunk_view, empty_result,
                     masked_decay, unchunk)
from .dispatch import select_backend

__all__ = ["chunked_gated_delta_rule", "gated_delta_rule", "naive_gated_delta_rule"]


def _check(q, k, v, g, beta, initial_state, name):
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"{name}: expected q, k [B, T, H, K] and v [B, T, H, V] with equal B, T, H; got "
            f"q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}"
        )
    if g.shape != q.shape[:3] or beta.shape != q.shape[:3]:
        raise ValueError(
            f"{name}: g and beta must be [B, T, H] = {list(q.shape[:3])}, got g {list(g.shape)}, "
            f"beta {list(beta.shape)}"
        )
    check_float(name, q=q, k=k, v=v, g=g, beta=beta, initial_state=initial_state)
    check_sign(g, name, "g (the log decay)", positive=False)
    check_state(initial_state, (q.shape[0], q.shape[2], q.shape[3], v.shape[3]), name)


def naive_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference: the recurrence one step at a time in fp32 (fp64 for fp64 inputs)."""
    _check(q, k, v, g, beta, initial_state, "naive_gated_delta_rule")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    acc = acc_dtype(q, k, v, g, beta, initial_state)
    b, t, h, dk = q.shape
    q, k, v, g, beta = (z.to(acc) for z in (q, k, v, g, beta))
    s = initial_state.to(acc) if initial_state is not None else q.new_zeros(b, h, dk, v.shape[-1])
    outs = []
    for i in range(t):
        k_i, beta_i = k[:, i], beta[:, i, :, None]  # [B,H,K], [B,H,1]
        s = g[:, i].exp()[:, :, None, None] * s  # decay
        pred = torch.einsum("bhk,bhkv->bhv", k_i, s)  # what the state currently recalls for k_i
        u = beta_i * (v[:, i] - pred)  # delta-rule correction
        s = s + k_i[..., :, None] * u[..., None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, i], s))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(b, 0, h, v.shape[-1])
    return o, (s if output_final_state else None)


def chunked_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """WY/UT-transform chunked form (module docstring); fp32 accumulation, differentiable."""
    _check(q, k, v, g, beta, initial_state, "chunked_gated_delta_rule")
    check_chunk_size(chunk_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    acc = acc_dtype(q, k, v, g, beta, initial_state)
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    if t == 0:
        return empty_result(q, v, initial_state, output_final_state, acc)
    qc, kc, vc = (chunk_view(z.to(acc), chunk_size) for z in (q, k, v))  # [B,H,N,C,*]
    bc = chunk_view(beta.to(acc), chunk_size)  # [B,H,N,C]; padded steps have beta = 0
    gc = chunk_view(g.to(acc), chunk_size).cumsum(-1)
    n, c = qc.shape[2], qc.shape[3]

    gamma = masked_decay(gc)  # [B,H,N,C,C], Γ_ij for j <= i
    strict = torch.ones(c, c, dtype=torch.bool, device=q.device).tril(-1)
    lower = (bc.unsqueeze(-1) * (kc @ kc.transpose(-1, -2)) * gamma).masked_fill(~strict, 0.0)
    eye = torch.eye(c, dtype=acc, device=q.device)
    system = eye + lower  # unit lower triangular
    u_tilde = torch.linalg.solve_triangular(system, bc.unsqueeze(-1) * vc, upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(
        system, (bc * gc.exp()).unsqueeze(-1) * kc, upper=False, unitriangular=True
    )
    a_qk = (qc @ kc.transpose(-1, -2)) * gamma
    q_dec = qc * gc.exp().unsqueeze(-1)
    k_dec = kc * (gc[..., -1:] - gc).exp().unsqueeze(-1)
    chunk_decay = gc[..., -1].exp()

    s = initial_state.to(acc) if initial_state is not None else q.new_zeros(b, h, dk, dv, dtype=acc)
    outs = []
    for i in range(n):  # sequential only across chunks
        u = u_tilde[:, :, i] - w[:, :, i] @ s
        outs.append(q_dec[:, :, i] @ s + a_qk[:, :, i] @ u)
        s = chunk_decay[:, :, i, None, None] * s + k_dec[:, :, i].transpose(-1, -2) @ u
    o = unchunk(torch.stack(outs, dim=2) * scale, t)
    return o, (s if output_final_state else None)


def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule (module docstring).

    Args:
        q, k: [B, T, H, K] (k L2-normalized by the caller); v: [B, T, H, V];
        g: [B, T, H] log decay; beta: [B, T, H] in (0, 1); scale: default K**-0.5;
        initial_state: [B, H, K, V] (may require grad); chunk_size: of the chunked CPU path.
        backend: "naive" | "chunked" | "fla" | None (automatic, see :mod:`lmrepro.ops.dispatch`).
    Returns:
        o [B, T, H, V] in q's dtype and the final state [B, H, K, V] (float32; float64 for float64
        inputs) if ``output_final_state`` else None.
    """
    chosen = select_backend("gated_delta_rule", backend, device=q.device, dtype=q.dtype)
    kwargs = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state)
    if chosen == "naive":
        o, s = naive_gated_delta_rule(q, k, v, g, beta, **kwargs)
    elif chosen == "chunked":
        o, s = chunked_gated_delta_rule(q, k, v, g, beta, chunk_size=chunk_size, **kwargs)
    else:
        _check(q, k, v, g, beta, initial_state, "gated_delta_rule")
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        o, s = chunk_gated_delta_rule(
            q, k, v, g.float(), beta.to(q.dtype),
            scale=q.shape[-1] ** -0.5 if scale is None else scale,
            initial_state=initial_state,
            output_final_state=output_final_state,
            use_qk_l2norm_in_kernel=False,
        )
    return o.to(q.dtype), s
