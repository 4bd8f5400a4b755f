"""Mamba-2 SSD (state-space duality): a scalar, data-dependent decay per (step, head).

We keep Mamba-2's own argument names, which is what the mixer has at hand after its in-projection
and short causal conv (``dt = softplus(dt_raw + dt_bias)``, ``A = -exp(A_log)`` are the mixer's job):

    x  [B, T, H, P]   input per head (P = head dim)
    dt [B, T, H]      positive step sizes
    A  [H]            negative per-head rates
    B, C [B, T, G, N] input / output projections shared by groups of H/G heads (G divides H;
                      head h uses group h // (H/G), as in mamba_ssm)
    D  [H] optional   skip, added *inside*: y += D_h · x

Recurrence per head h, state h_t [N, P]:

    h_t = exp(dt_t A_h) · h_{t-1} + dt_t · B_t x_tᵀ,        y_t = h_tᵀ C_t  (+ D_h x_t)

Mapping to fla's ``chunk_simple_gla(q, k, v, g, scale, initial_state, output_final_state)`` with
state S [K, V], S_t = exp(g_t) S_{t-1} + k_t v_tᵀ, o_t = scale · S_tᵀ q_t:

    q = C (groups repeated to H heads), k = B (same), v = x · dt, g = A · dt, scale = 1,
    K = N, V = P; state layout [B, H, N, P] (fla's [B, H, K, V]; mamba_ssm stores [B, H, P, N]).

Paths: :func:`naive_mamba2_ssd` (step-by-step recurrence), :func:`chunked_mamba2_ssd` (chunked matmul
form) and the fla kernel above on CUDA.
"""

from __future__ import annotations

import torch

from ._chunk import (acc_dtype, check_chunk_size, check_float, check_sign, check_state, chunked_scalar_decay,
                     fla_simple_gla)
from .dispatch import select_backend

__all__ = ["chunked_mamba2_ssd", "mamba2_ssd", "naive_mamba2_ssd", "ssd_to_simple_gla"]


def _check(x, dt, A, B, C, D, initial_state, name):
    if x.dim() != 4:
        raise ValueError(f"{name}: x must be [B, T, H, P], got {list(x.shape)}")
    b, t, h, p = x.shape
    if dt.shape != (b, t, h):
        raise ValueError(f"{name}: dt must be [B, T, H] = {[b, t, h]}, got {list(dt.shape)}")
    if A.shape != (h,):
        raise ValueError(f"{name}: A must be [H] = [{h}], got {list(A.shape)}")
    if B.dim() != 4 or B.shape != C.shape or B.shape[:2] != (b, t):
        raise ValueError(
            f"{name}: B and C must both be [B, T, G, N] with B, T of x; got B {list(B.shape)}, C {list(C.shape)}"
        )
    g = B.shape[2]
    if h % g:
        raise ValueError(f"{name}: groups G={g} of B/C must divide heads H={h}")
    if D is not None and D.shape != (h,):
        raise ValueError(f"{name}: D must be [H] = [{h}], got {list(D.shape)}")
    check_float(name, x=x, dt=dt, A=A, B=B, C=C, D=D, initial_state=initial_state)
    # dt·A is the log decay: A <= 0 and dt >= 0 (softplus output), else the state grows without bound.
    check_sign(A, name, "A", positive=False)
    check_sign(dt, name, "dt", positive=True)
    check_state(initial_state, (b, h, B.shape[-1], p), name)


def _heads(z: torch.Tensor, h: int) -> torch.Tensor:
    """[B, T, G, N] -> [B, T, H, N]: head h reads group h // (H/G)."""
    b, t, g, n = z.shape
    return z[:, :, :, None, :].expand(b, t, g, h // g, n).reshape(b, t, h, n)


def ssd_to_simple_gla(x, dt, A, B, C):
    """Mamba-2 inputs -> fla simple-GLA inputs ``(q, k, v, g)`` (scale 1); see the module docstring."""
    h = x.shape[2]
    return _heads(C, h), _heads(B, h), x * dt.unsqueeze(-1).to(x.dtype), dt * A


def naive_mamba2_ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference: Mamba-2's recurrence one step at a time, fp32 (fp64 for fp64 inputs)."""
    _check(x, dt, A, B, C, D, initial_state, "naive_mamba2_ssd")
    acc = acc_dtype(x, dt, A, B, C, D, initial_state)
    b, t, h, p = x.shape
    n = B.shape[-1]
    x, dt, A = x.to(acc), dt.to(acc), A.to(acc)
    Bh, Ch = _heads(B.to(acc), h), _heads(C.to(acc), h)
    state = initial_state.to(acc) if initial_state is not None else x.new_zeros(b, h, n, p)
    ys = []
    for i in range(t):
        decay = torch.exp(dt[:, i] * A)[:, :, None, None]  # [B, H, 1, 1]
        state = decay * state + dt[:, i, :, None, None] * Bh[:, i, :, :, None] * x[:, i, :, None, :]
        y = torch.einsum("bhn,bhnp->bhp", Ch[:, i], state)
        if D is not None:
            y = y + D.to(acc)[:, None] * x[:, i]
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p)
    return y, (state if output_final_state else None)


def chunked_mamba2_ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked matmul form via the simple-GLA mapping (fp32 accumulation, differentiable)."""
    _check(x, dt, A, B, C, D, initial_state, "chunked_mamba2_ssd")
    check_chunk_size(chunk_size)
    acc = acc_dtype(x, dt, A, B, C, D, initial_state)
    q, k, v, g = ssd_to_simple_gla(x.to(acc), dt.to(acc), A.to(acc), B, C)
    y, s = chunked_scalar_decay(
        q, k, v, g, scale=1.0, initial_state=initial_state,
        output_final_state=output_final_state, chunk_size=chunk_size,
    )
    if D is not None:
        y = y + D.to(acc)[:, None] * x.to(acc)
    return y, s


def mamba2_ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mamba-2 SSD scan (see the module docstring for shapes, recurrence and the fla mapping).

    Returns y [B, T, H, P] in x's dtype (D skip included) and the final state [B, H, N, P]
    (float32; float64 for float64 inputs) if ``output_final_state`` else None.
    ``chunk_size`` is the chunk length of the chunked CPU path (the fla kernel uses its own tiling).
    ``backend``: "naive" | "chunked" | "fla" | None (automatic, see :mod:`lmrepro.ops.dispatch`).
    """
    chosen = select_backend("mamba2_ssd", backend, device=x.device, dtype=x.dtype)
    kwargs = dict(D=D, initial_state=initial_state, output_final_state=output_final_state)
    if chosen == "naive":
        y, s = naive_mamba2_ssd(x, dt, A, B, C, **kwargs)
    elif chosen == "chunked":
        y, s = chunked_mamba2_ssd(x, dt, A, B, C, chunk_size=chunk_size, **kwargs)
    else:
        _check(x, dt, A, B, C, D, initial_state, "mamba2_ssd")
        # The decay is formed in fp32 so bf16 activations do not quantize dt·A before the cumsum.
        q, k, v, g = ssd_to_simple_gla(x, dt.float(), A.float(), B, C)
        y, s = fla_simple_gla(
            q, k, v.to(x.dtype), g=g, scale=1.0,
            initial_state=initial_state, output_final_state=output_final_state,
        )
        if D is not None:
            y = y.float() + D.float()[:, None] * x.float()
    return y.to(x.dtype), s
