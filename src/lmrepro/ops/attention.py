"""Softmax attention: causal, sliding window, sink tokens, GQA, and queries aligned to the end of the keys.

Layout [B, T, H, D]: q [B, Tq, Hq, D], k [B, Tk, Hkv, D], v [B, Tk, Hkv, Dv] with Hkv dividing Hq
(query head h reads kv head h // (Hq/Hkv), as in flash-attn and torch's ``enable_gqa``) and Tq <= Tk.
The queries are the *last* Tq positions of the sequence (decoding with a KV cache): query i sits at
absolute position p_i = Tk - Tq + i.

Visibility of key j for query i (the one convention of the project):

    causal:  j <= p_i
    window W (int >= 1): additionally p_i - j < W      — the query itself and the W-1 previous tokens
    sinks s: keys j < s stay visible to every query    — StreamingLLM-style attention sinks

so a window of W maps to flash-attn's ``window_size=(W-1, 0)`` (:func:`flash_attn_window`).
``causal=False`` (every key visible) allows neither a window nor sinks.

:func:`attention` returns just ``o`` [B, Tq, Hq, Dv] (no ``final_state``): the recurrent state of
softmax attention is the KV cache itself, which the caller owns.

Paths: "naive" (dense mask, fp32 accumulation, the reference), "sdpa" (``scaled_dot_product_attention``
with an explicit boolean mask, or ``is_causal`` for plain causal Tq == Tk), "flex" (FlexAttention block
mask; compiled on CUDA, eager/unfused and forward-only on CPU — usable for tests), "flash" (``flash_attn_func``, CUDA,
fp16/bf16, no sinks: sinks > 0 on CUDA go to flex).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

from ._chunk import acc_dtype, check_float
from .dispatch import select_backend

__all__ = [
    "attention",
    "attention_mask",
    "flash_attn_window",
    "naive_attention",
]


def flash_attn_window(window: int | None) -> tuple[int, int]:
    """Our window W -> flash-attn's ``window_size``: (W-1, 0); no window -> (-1, -1)."""
    if window is None:
        return (-1, -1)
    _check_window(window)
    return (window - 1, 0)


def _check_window(window) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be None or an int >= 1 (W = query + W-1 previous tokens), got {window!r}")


def _check(q, k, v, window, sinks, causal) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention: q, k, v must be [B, T, H, D]; got q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}"
        )
    check_float("attention", q=q, k=k, v=v)
    (b, tq, hq, d), (bk, tk, hkv, dk) = q.shape, k.shape
    if bk != b or v.shape[0] != b:
        raise ValueError(f"attention: batch sizes differ: q {b}, k {bk}, v {v.shape[0]}")
    if dk != d:
        raise ValueError(f"attention: q and k head dims differ: {d} vs {dk}")
    if v.shape[1:3] != k.shape[1:3]:
        raise ValueError(f"attention: k and v need equal [T, H]; got k {list(k.shape)}, v {list(v.shape)}")
    if hkv < 1 or hq % hkv:
        raise ValueError(f"attention: kv heads ({hkv}) must divide query heads ({hq}) for GQA")
    if window is not None:
        _check_window(window)
    if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"attention: sinks must be an int >= 0, got {sinks!r}")
    if causal:
        if tq > tk:
            raise ValueError(
                f"attention: more queries than keys (Tq={tq} > Tk={tk}); queries are aligned to the end of the keys"
            )
    elif window is not None or sinks:
        raise ValueError("attention: causal=False supports neither a window nor sinks")


def _normalize(window, sinks, tk):
    """A window covering every key is plain causal attention; sinks only matter with a window."""
    if window is not None and window >= tk:
        window = None
    if window is None:
        sinks = 0
    return window, sinks


def attention_mask(
    t_q: int,
    t_k: int,
    *,
    window: int | None = None,
    sinks: int = 0,
    causal: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean visibility mask [Tq, Tk] (True = attend) of the module's convention."""
    if not causal:
        return torch.ones(t_q, t_k, dtype=torch.bool, device=device)
    pos = torch.arange(t_k - t_q, t_k, device=device)[:, None]  # absolute query positions
    key = torch.arange(t_k, device=device)[None, :]
    keep = key <= pos
    if window is not None:
        keep = keep & ((pos - key < window) | (key < sinks))
    return keep


def naive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None = None,
    sinks: int = 0,
    scale: float | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Reference: dense scores, boolean mask, softmax in fp32 (fp64 for fp64 inputs)."""
    _check(q, k, v, window, sinks, causal)
    acc = acc_dtype(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    rep = q.shape[2] // k.shape[2]
    qh = q.to(acc).transpose(1, 2)  # [B, Hq, Tq, D]
    kh = k.to(acc).repeat_interleave(rep, dim=2).transpose(1, 2)
    vh = v.to(acc).repeat_interleave(rep, dim=2).transpose(1, 2)
    scores = (qh @ kh.transpose(-1, -2)) * scale
    mask = attention_mask(q.shape[1], k.shape[1], window=window, sinks=sinks, causal=causal, device=q.device)
    probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return (probs @ vh).transpose(1, 2).to(q.dtype)


def _sdpa(q, k, v, window, sinks, scale, causal):
    tq, tk = q.shape[1], k.shape[1]
    gqa = q.shape[2] != k.shape[2]
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    kwargs = dict(scale=scale, enable_gqa=gqa)
    if not causal or (window is None and tq == 1):
        o = F.scaled_dot_product_attention(qh, kh, vh, **kwargs)
    elif window is None and tq == tk:
        o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, **kwargs)
    else:
        # is_causal aligns the mask top-left, so Tq < Tk and windows need the explicit mask.
        mask = attention_mask(tq, tk, window=window, sinks=sinks, device=q.device)
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, **kwargs)
    return o.transpose(1, 2)


@functools.lru_cache(maxsize=32)
def _flex_block_mask(tq: int, tk: int, window, sinks: int, causal: bool, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    off = tk - tq

    def mask_mod(b, h, q_idx, kv_idx):
        pos = q_idx + off
        keep = kv_idx <= pos
        if window is not None:
            keep = keep & ((pos - kv_idx < window) | (kv_idx < sinks))
        return keep

    if not causal:
        return None
    return create_block_mask(mask_mod, None, None, tq, tk, device=device)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q, k, v, window, sinks, scale, causal):
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = _flex_block_mask(q.shape[1], k.shape[1], window, sinks, causal, str(q.device))
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    kwargs = dict(block_mask=block_mask, scale=scale, enable_gqa=q.shape[2] != k.shape[2])
    if q.device.type == "cuda":
        o = _compiled_flex()(qh, kh, vh, **kwargs)
    else:
        with warnings.catch_warnings():  # eager CPU flex is unfused by design (tests only)
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            o = flex_attention(qh, kh, vh, **kwargs)
    return o.transpose(1, 2)


def _flash(q, k, v, window, scale, causal):
    from flash_attn import flash_attn_func

    # flash-attn aligns a causal mask to the bottom-right for Tq < Tk, as we do.
    return flash_attn_func(
        q, k, v, softmax_scale=scale, causal=causal, window_size=flash_attn_window(window)
    )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None = None,
    sinks: int = 0,
    scale: float | None = None,
    causal: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """Causal softmax attention (module docstring); returns o [B, Tq, Hq, Dv] in q's dtype.

    Args:
        q [B, Tq, Hq, D], k [B, Tk, Hkv, D], v [B, Tk, Hkv, Dv]; window: None or int W >= 1;
        sinks: leading tokens visible to every query in addition to the window;
        scale: default D**-0.5; backend: "naive" | "sdpa" | "flex" | "flash" | None (automatic).
    """
    _check(q, k, v, window, sinks, causal)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    window, sinks = _normalize(window, sinks, k.shape[1])
    chosen = select_backend(
        "attention", backend, device=q.device, dtype=q.dtype, window=window, sinks=sinks,
        same_head_dim=v.shape[-1] == q.shape[-1],
        requires_grad=torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)),
    )
    if chosen == "naive":
        return naive_attention(q, k, v, window=window, sinks=sinks, scale=scale, causal=causal)
    if chosen == "sdpa":
        return _sdpa(q, k, v, window, sinks, scale, causal)
    if chosen == "flex":
        return _flex(q, k, v, window, sinks, scale, causal)
    return _flash(q, k, v, window, scale, causal)
