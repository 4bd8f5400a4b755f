"""FLOPs, KV-cache and parameter accounting for (variable-width) decoder LMs.

The FLOP convention is the xformer brief's (``shared/papers/xformer.md``): forward FLOPs per
sequence of ``s`` tokens

    F = 2*s*h*V                    LM head (input embedding is a lookup, not counted)
      + sum_l 32*s*w_l**2          2 FLOPs per weight, 16*w^2 weights per dense block
      + sum_l 4*s**2*w_l           QK^T and AV, no causal halving
      - 2*s*wasted                 weights that never see signal (see ``width.wasted_parameters``)

training = 3 x forward; 1 PF-day = 1e15 FLOP/s * 86400 s = 8.64e19 FLOPs.

:func:`accounting` applies these conventions to a model spec (``LMSpec``): exact parameters, effective
parameters (without the wasted slices), forward / training FLOPs, average width and KV cache per token.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from lmrepro.models import LMSpec

PF_DAY = 8.64e19


def _widths(widths: Sequence[float]) -> np.ndarray:
    w = np.asarray(widths, dtype=np.float64)
    if w.ndim != 1 or w.size < 1:
        raise ValueError(f"widths must be a non-empty 1-D sequence of block widths, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"widths must all be finite and > 0, got {list(widths)!r}")
    return w


def _positive(name: str, value, integer: bool = True):
    ok_type = Integral if integer else Real
    if isinstance(value, bool) or not isinstance(value, ok_type) or not value > 0:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} > 0, got {value!r}")
    return value


def forward_flops(widths: Sequence[float], hidden_size: int, vocab_size: int, seq_len: int) -> float:
    """Forward FLOPs for one sequence of ``seq_len`` tokens (formula in the module docstring).

    Args:
        widths: L block widths w_1..w_L (ints or floats).
        hidden_size: h, the embedding / LM-head width.
        vocab_size: V.
        seq_len: s, tokens per sequence.

    Returns:
        float FLOPs per sequence.
    """
    # Imported here, not at module level: lmrepro.models may itself use this module, and importing
    # the models package at import time would make that a cycle.
    from lmrepro.models.width import wasted_parameters

    w = _widths(widths)
    h = _positive("hidden_size", hidden_size)
    V = _positive("vocab_size", vocab_size)
    s = float(_positive("seq_len", seq_len))
    return float(
        2.0 * s * h * V
        + 32.0 * s * np.sum(w * w)
        + 4.0 * s * s * np.sum(w)
        - 2.0 * s * wasted_parameters(w, h)
    )


def training_flops(
    widths: Sequence[float], hidden_size: int, vocab_size: int, seq_len: int, tokens: float
) -> float:
    """Training FLOPs for ``tokens`` tokens: 3 * forward_flops(...) * tokens / seq_len."""
    _positive("tokens", tokens, integer=False)
    return 3.0 * forward_flops(widths, hidden_size, vocab_size, seq_len) * float(tokens) / float(seq_len)


def pf_days(flops: float) -> float:
    """FLOPs -> PF-days (flops / 8.64e19)."""
    return float(flops) / PF_DAY


def kv_cache_bytes_per_token(widths: Sequence[float], bytes_per_element: int = 2) -> float:
    """KV-cache bytes per token: sum_l 2 * w_l * bytes_per_element (K and V of width w_l, full MHA)."""
    w = _widths(widths)
    _positive("bytes_per_element", bytes_per_element, integer=False)
    return float(2.0 * np.sum(w) * bytes_per_element)


def average_width(widths: Sequence[float]) -> float:
    """Mean block width (proportional to KV cache per token)."""
    return float(np.mean(_widths(widths)))


def parameter_count(
    widths: Sequence[int],
    hidden_size: int,
    vocab_size: int,
    mlp_ratio: float = 4,
    untied: bool = True,
    include_norms: bool = True,
) -> int:
    """Exact parameter count of a variable-width Llama-style decoder.

    Layout counted (every tensor that exists, including the always-zero 'wasted' slices; no biases):

    * input embedding: ``V x h``;
    * block l (width w = w_l, MLP width f = mlp_ratio * w, which must be an integer):
        - attention q, k, v, o projections: 4 matrices ``w x w`` (no bias; constant head count,
          head dim w / num_heads; RoPE has no parameters),
        - SwiGLU: gate ``w x f``, up ``w x f``, down ``f x w``,
        - two RMSNorm weights of size w (pre-attention, pre-MLP) if ``include_norms``;
    * final RMSNorm weight of size w_L if ``include_norms``;
    * LM head ``h x V`` if ``untied`` (reads the first h residual coordinates), else tied to the
      embedding and not counted again.

    The residual stream is carried forward by slicing (no projection parameters between blocks).

    Returns:
        int = V*h + sum_l (4*w_l^2 + 3*w_l*f_l + 2*w_l) + w_L + [untied]*h*V.
    """
    w = _widths(widths)
    if not np.all(w == np.round(w)):
        raise ValueError(f"widths must be integers for an exact parameter count, got {list(widths)!r}")
    h = _positive("hidden_size", hidden_size)
    V = _positive("vocab_size", vocab_size)
    _positive("mlp_ratio", mlp_ratio, integer=False)
    total = V * h
    for i, wi in enumerate(w.astype(np.int64).tolist(), start=1):
        f = mlp_ratio * wi
        if abs(f - round(f)) > 1e-9:
            raise ValueError(
                f"mlp_ratio={mlp_ratio!r} * width {wi} of layer {i} is not an integer MLP width; "
                "choose mlp_ratio so that mlp_ratio * w_l is integral"
            )
        f = int(round(f))
        total += 4 * wi * wi + 3 * wi * f
        if include_norms:
            total += 2 * wi
    if include_norms:
        total += int(w[-1])
    if untied:
        total += h * V
    return int(total)


# ------------------------------------------------------------------------------------------ a model spec
# lmrepro.models is imported inside the functions (see forward_flops): no import cycle, no torch at import.


def projection_parameters(spec: LMSpec) -> int:
    """Parameters of the learned width projections ("learned" rule): Σ w_{ℓ−1}·w_ℓ where the width changes."""
    from lmrepro.models.varwidth import width_changes

    if spec.expansion != "learned" or spec.widths is None:
        return 0
    return sum(spec.widths[i - 1] * spec.widths[i] for i in width_changes(spec))


def model_parameters(spec: LMSpec) -> int:
    """Exact parameter count of ``DecoderLM(spec)`` (built on the meta device: no memory, any size)."""
    import torch

    from lmrepro.models import DecoderLM

    with torch.device("meta"):
        return DecoderLM(spec).num_parameters()


def accounting(spec: LMSpec, seq_len: int, tokens: float) -> dict[str, float]:
    """Parameters, FLOPs and KV cache of one run (this module's conventions, the brief's formula).

    parameters: every tensor of the model; effective_parameters: minus the wasted (never-signalled) slices;
    forward_flops: per sequence of ``seq_len`` tokens, + 2·s·(projection parameters) for "learned";
    train_flops: 3 × forward × tokens / seq_len; kv_bytes_per_token: bf16, Σ 2·w_ℓ·2 bytes;
    budget_deviation: the matched budget vs the constant-width baseline (``models.width.budget_deviation``)."""
    from lmrepro.models.varwidth import block_widths
    from lmrepro.models.width import budget_deviation, wasted_parameters

    widths = block_widths(spec)
    h, V = spec.hidden_size, spec.vocab_size
    wasted = wasted_parameters(widths, h) if spec.widths is not None else 0.0
    proj = projection_parameters(spec)
    fwd = forward_flops(widths, h, V, seq_len) + 2.0 * seq_len * proj
    params = model_parameters(spec)
    return {"parameters": params, "effective_parameters": params - wasted, "wasted_parameters": wasted,
            "projection_parameters": proj, "average_width": average_width(widths),
            "min_width": min(widths), "max_width": max(widths),
            "forward_flops": fwd, "train_flops": 3.0 * fwd * float(tokens) / seq_len,
            "kv_bytes_per_token": kv_cache_bytes_per_token(widths, 2),
            "budget_deviation": budget_deviation(widths, h, V)}
