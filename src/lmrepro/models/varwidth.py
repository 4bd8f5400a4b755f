"""Variable-width ("><former") helpers: per-block widths, per-block specs, residual-buffer widths.

A spec with ``widths = (w_1, .., w_L)`` describes the xformer brief's model (``shared/papers/xformer.md``):

* embedding and LM head stay at width h = ``hidden_size``;
* one residual buffer of width ``residual_width = max(h, w_1, .., w_L)``; the embedding fills its
  first h coordinates, the rest start at zero;
* block ℓ is an ordinary constant-width block of width w_ℓ built from :func:`block_spec`: constant head
  count, head dim w_ℓ / num_heads with its own RoPE, SwiGLU hidden ``MLP_RATIO · w_ℓ`` (``intermediate_size``
  is ignored: it describes the constant-width model only), init std ``init_std · sqrt(h / w_ℓ)``;
* the final RMSNorm spans ``readout_width = max(w_L, h)`` coordinates and its first h go to the LM head.
  The brief says "final RMSNorm over w_L, then the first h coordinates": that is our rule whenever
  w_L ≥ h (every X shape). When w_L < h (diamond, decreasing) the head still needs h coordinates, so the
  norm spans h of them (coordinates [w_L, h) are what the residual rule leaves there) and has h − w_L
  more weights than ``lmrepro.analysis.flops.parameter_count`` counts.

How a block's input is formed (``expansion``; see :class:`lmrepro.models.lm.DecoderLM` for the code):

``"carry"`` (the paper): block ℓ reads the buffer prefix ``x[:w_ℓ]`` and adds its output into the same
    slice; coordinates it does not touch pass through unchanged, so a coordinate re-entering a wider block
    comes from the most recent earlier layer (embedding included) that had it, zero if none did.
``"zero"`` (ablation): the residual stream is exactly w_ℓ wide after block ℓ (h after the embedding):
    when a block (or the readout) is wider than its predecessor, the coordinates beyond the predecessor's
    width are zero; coordinates a narrower block drops are lost.
``"learned"`` (ablation): as ``"zero"``, but between consecutive blocks of different width the stream is
    mapped by a learned, bias-free linear map P_ℓ: R^{w_{ℓ−1}} → R^{w_ℓ} (``DecoderLM.width_projections``,
    counted in the parameters; initialised to the rectangular identity so that at init it equals
    ``"zero"`` rather than scaling the residual stream by a random matrix). The two ends are not
    projected: the embedding is zero-padded (or cut) to w_1 and the readout zero-pads w_L to h.
"""

from __future__ import annotations

import dataclasses
import math

from .spec import EXPANSIONS, LMSpec

__all__ = ["EXPANSIONS", "MLP_RATIO", "block_spec", "block_widths", "readout_width", "residual_width",
           "stage_widths", "width_changes"]

#: SwiGLU hidden width per unit of block width when ``widths`` are given (the brief: MLP width 4·w_ℓ).
MLP_RATIO = 4


def block_widths(spec: "LMSpec") -> tuple[int, ...]:
    """(w_1, .., w_L); all ``hidden_size`` for a constant-width spec."""
    return spec.widths if spec.widths is not None else (spec.hidden_size,) * spec.num_layers


def stage_widths(spec: "LMSpec") -> tuple[int, ...]:
    """Active width of the residual stream after the embedding and after each block: (h, w_1, .., w_L)."""
    return (spec.hidden_size,) + block_widths(spec)


def residual_width(spec: "LMSpec") -> int:
    """Width W of the global residual buffer: max(h, w_1, .., w_L) (h for a constant-width spec)."""
    return max(stage_widths(spec))


def readout_width(spec: "LMSpec") -> int:
    """Width of the final RMSNorm: max(w_L, h) (see the module docstring for w_L < h)."""
    return max(block_widths(spec)[-1], spec.hidden_size)


def width_changes(spec: "LMSpec") -> tuple[int, ...]:
    """0-indexed blocks ℓ ≥ 1 whose width differs from block ℓ−1 (where "learned" puts a projection)."""
    w = block_widths(spec)
    return tuple(i for i in range(1, len(w)) if w[i] != w[i - 1])


def block_spec(spec: "LMSpec", layer_idx: int) -> "LMSpec":
    """Constant-width spec of block ``layer_idx`` (0-indexed): the spec itself without widths, else
    hidden_size = w_ℓ, intermediate_size = MLP_RATIO·w_ℓ, init_std scaled by sqrt(h / w_ℓ), so the
    existing mixers build the block unchanged (their own head dim and RoPE over it)."""
    if spec.widths is None:
        return spec
    w = spec.widths[layer_idx]
    return dataclasses.replace(
        spec,
        hidden_size=w,
        intermediate_size=MLP_RATIO * w,
        init_std=spec.init_std * math.sqrt(spec.hidden_size / w),
        widths=None,
        expansion="carry",
    )
