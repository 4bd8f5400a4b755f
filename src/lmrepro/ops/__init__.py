"""Sequence-mixing ops in the [B, T, H, D] layout, one module per op.

Each module holds a slow, obviously-correct reference (``naive_*``: step-by-step recurrence or dense
mask), a fast PyTorch path (``chunked_*`` / sdpa) and a lazily imported CUDA kernel path (fla,
flash-attn, FlexAttention). :mod:`lmrepro.ops.dispatch` chooses the path per call, can be forced for
tests (:func:`force_backend`) and records what ran (:func:`backends_used`).

Return convention: the linear ops return ``(o, final_state)`` with states [B, H, K, V] like fla;
:func:`attention` returns just ``o`` (its state is the caller's KV cache).
"""

from .attention import attention, attention_mask, flash_attn_window, naive_attention
from .dispatch import (
    BackendUnavailableError,
    backend_available,
    backends_used,
    force_backend,
    reset_backends_used,
    select_backend,
    twice_differentiable,
)
from .gated_delta import chunked_gated_delta_rule, gated_delta_rule, naive_gated_delta_rule
from .lightning import (
    alibi_slopes,
    chunked_lightning_attention,
    lightning_attention,
    lightning_decay_rates,
    naive_lightning_attention,
)
from .mamba2 import chunked_mamba2_ssd, mamba2_ssd, naive_mamba2_ssd, ssd_to_simple_gla

__all__ = [
    "BackendUnavailableError",
    "alibi_slopes",
    "attention",
    "attention_mask",
    "backend_available",
    "backends_used",
    "chunked_gated_delta_rule",
    "chunked_lightning_attention",
    "chunked_mamba2_ssd",
    "flash_attn_window",
    "force_backend",
    "gated_delta_rule",
    "lightning_attention",
    "lightning_decay_rates",
    "mamba2_ssd",
    "naive_attention",
    "naive_gated_delta_rule",
    "naive_lightning_attention",
    "naive_mamba2_ssd",
    "reset_backends_used",
    "select_backend",
    "ssd_to_simple_gla",
    "twice_differentiable",
]
