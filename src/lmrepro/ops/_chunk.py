"""Shared helpers for the chunked (matmul-based) linear-recurrence paths.

Notation inside a chunk of length C (positions i, j = 0..C-1) with per-step log decays g:

    gc_i   = g_0 + ... + g_i                 (cumulative log decay inside the chunk)
    Γ_ij   = exp(gc_i - gc_j)  for j <= i,   0 above the diagonal

Only differences ``gc_i - gc_j`` with ``j <= i`` and ``gc_last - gc_j`` are exponentiated, which are
always <= 0 for log decays <= 0, so nothing overflows (no ``k * exp(-gc)`` trick). The masked entries
are set to ``-inf`` *before* ``exp`` so their gradients are exactly zero instead of ``inf * 0``.

Everything is accumulated in float32 (float64 when any input is float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "acc_dtype",
    "check_chunk_size",
    "check_state",
    "chunk_view",
    "check_float",
    "check_sign",
    "chunked_scalar_decay",
    "masked_decay",
]


def acc_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (the accumulation dtype of every CPU path)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def check_chunk_size(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size


def check_float(name: str, **tensors: torch.Tensor | None) -> None:
    """Every given tensor is floating point; integer inputs would otherwise flow through the float math and
    come out as zeros."""
    for arg, t in tensors.items():
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{name}: {arg} must be a floating-point tensor (float64, float32, bfloat16 or "
                            f"float16), got {t.dtype}")


def check_sign(t: torch.Tensor, name: str, arg: str, *, positive: bool) -> None:
    """``t >= 0`` (``positive``) or ``t <= 0``: a log decay of the wrong sign makes the state grow as e^{+t}
    (Inf / NaN a few hundred steps later). Checked on CPU only: on CUDA it would cost a host sync per layer."""
    if t.device.type != "cpu":
        return
    bad = (t < 0) if positive else (t > 0)
    if bool(bad.any()):
        worst = t.min() if positive else t.max()
        raise ValueError(f"{name}: {arg} must be {'>= 0' if positive else '<= 0'} everywhere, got "
                         f"{'min' if positive else 'max'} {worst.item():.4g}")


def check_state(initial_state: torch.Tensor | None, shape: tuple[int, ...], name: str) -> None:
    if initial_state is not None and tuple(initial_state.shape) != tuple(shape):
        raise ValueError(
            f"{name}: initial_state must have shape {list(shape)} ([B, H, K, V]), "
            f"got {list(initial_state.shape)}"
        )


def chunk_view(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """[B, T, H, *rest] -> [B, H, N, C, *rest], zero-padding T up to a multiple of C.

    Zero padding is neutral for every op here: a padded step has k = v = 0, beta = 0 and log decay
    g = 0 (decay 1), so it leaves the state unchanged, and its outputs are cut off afterwards.
    """
    b, t, h = x.shape[:3]
    rest = x.shape[3:]
    n = -(-t // chunk_size)
    pad = n * chunk_size - t
    if pad:
        # F.pad pads from the last dim backwards: (0,0) per trailing dim, then (0, pad) on T.
        x = F.pad(x, (0, 0) * len(rest) + (0, 0) + (0, pad))
    x = x.reshape(b, n, chunk_size, h, *rest)
    return x.movedim(3, 1)  # [B, H, N, C, *rest]


def unchunk(x: torch.Tensor, t: int) -> torch.Tensor:
    """[B, H, N, C, D] -> [B, T, H, D] (drops the padding)."""
    b, h, n, c, d = x.shape
    return x.movedim(1, 3).reshape(b, n * c, h, d)[:, :t]


def empty_result(q, v, initial_state, output_final_state, dt):
    """T = 0: no output steps; the final state is the initial one."""
    b, _, h, dk = q.shape
    o = q.new_zeros(b, 0, h, v.shape[-1], dtype=dt)
    if not output_final_state:
        return o, None
    s = initial_state.to(dt) if initial_state is not None else q.new_zeros(b, h, dk, v.shape[-1], dtype=dt)
    return o, s


def masked_decay(gc: torch.Tensor, *, strict: bool = False) -> torch.Tensor:
    """Γ from cumulative log decays ``gc`` [..., C]: exp(gc_i - gc_j) on/below the diagonal, else 0.

    With ``strict=True`` the diagonal is zero as well.
    """
    c = gc.shape[-1]
    keep = torch.ones(c, c, dtype=torch.bool, device=gc.device).tril(-1 if strict else 0)
    diff = gc.unsqueeze(-1) - gc.unsqueeze(-2)
    return diff.masked_fill(~keep, float("-inf")).exp()


def chunked_scalar_decay(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked linear attention with a scalar log decay per (step, head) (fla's "simple GLA").

    Recurrence: S_t = exp(g_t) S_{t-1} + k_t v_tᵀ,  o_t = scale · S_tᵀ q_t.

    Args: q, k [B, T, H, K]; v [B, T, H, V]; g [B, T, H] log decay; initial_state [B, H, K, V].
    Returns o [B, T, H, V] in the accumulation dtype and the final state [B, H, K, V] (or None).
    Per chunk: o = scale·[(Q Kᵀ ⊙ Γ) V + diag(exp(gc)) Q S_0]; S_next = exp(gc_C) S_0 + (exp(gc_C - gc) K)ᵀ V.
    """
    dt = acc_dtype(q, k, v, g, initial_state)
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    if t == 0:
        return empty_result(q, v, initial_state, output_final_state, dt)
    qc, kc, vc = (chunk_view(x.to(dt), chunk_size) for x in (q, k, v))  # [B,H,N,C,*]
    gc = chunk_view(g.to(dt), chunk_size).cumsum(-1)  # [B,H,N,C]
    n = qc.shape[2]

    gamma = masked_decay(gc)  # [B,H,N,C,C]
    o_intra = ((qc @ kc.transpose(-1, -2)) * gamma) @ vc
    q_dec = qc * gc.exp().unsqueeze(-1)
    k_dec = kc * (gc[..., -1:] - gc).exp().unsqueeze(-1)
    kv = k_dec.transpose(-1, -2) @ vc  # [B,H,N,K,V] contribution of each chunk to the next state
    chunk_decay = gc[..., -1].exp()  # [B,H,N]

    s = (
        initial_state.to(dt)
        if initial_state is not None
        else q.new_zeros(b, h, dk, dv, dtype=dt)
    )
    starts = []
    for i in range(n):  # scan over chunks only: N = ceil(T / C) small steps
        starts.append(s)
        s = chunk_decay[:, :, i, None, None] * s + kv[:, :, i]
    o_inter = q_dec @ torch.stack(starts, dim=2)
    o = unchunk((o_intra + o_inter) * scale, t)
    return o, (s if output_final_state else None)


def fla_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fla's ``chunk_simple_gla`` (CUDA Triton kernel), imported lazily.

    Same layout and recurrence as :func:`chunked_scalar_decay`: q, k [B, T, H, K], v [B, T, H, V],
    ``g`` [B, T, H] (data-dependent) or ``g_gamma`` [H] (fixed) natural-log decays, state
    [B, H, K, V]. The scale is always passed explicitly (fla's default is K**-0.5).
    Log decays are handed over in float32 (the kernel cumsums them; bf16 cumsums drift).
    """
    from fla.ops.simple_gla import chunk_simple_gla

    return chunk_simple_gla(
        q=q,
        k=k,
        v=v,
        g=None if g is None else g.float(),
        g_gamma=None if g_gamma is None else g_gamma.float(),
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
    )
