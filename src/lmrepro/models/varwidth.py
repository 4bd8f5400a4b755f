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
from numbers import Integral
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import LMSpec

#: SwiGLU hidden width per unit of block width when ``widths`` are given (the brief: MLP width 4·w_ℓ).
MLP_RATIO = 4

EXPANSIONS = ("carry", "zero", "learned")


def check_widths(spec: "LMSpec") -> tuple[int, ...] | None:
    """Validate ``spec.widths`` / ``spec.expansion`` against the rest of the spec; return widths as a tuple.

    Raises ValueError naming the field and, for a bad width, the 0-indexed layer.
    """
    if spec.expansion not in EXPANSIONS:
        raise ValueError(f"expansion: {spec.expansion!r} is not allowed; choose one of {list(EXPANSIONS)}")
    if spec.widths is None:
        if spec.expansion != "carry":
            # The rule only matters where widths change; accepting it here would silently ignore it.
            raise ValueError(
                f"expansion={spec.expansion!r} needs widths (it says how a wider block is fed); pass "
                f"widths=(hidden_size,)*num_layers for a constant-width model with this rule, or keep 'carry'"
            )
        return None
    if isinstance(spec.widths, (str, bytes)) or not hasattr(spec.widths, "__len__"):
        raise ValueError(f"widths: must be None or a sequence of num_layers ints, got {spec.widths!r}")
    widths = tuple(spec.widths)
    if len(widths) != spec.num_layers:
        raise ValueError(f"widths: {len(widths)} widths for num_layers={spec.num_layers}")
    for i, w in enumerate(widths):
        if isinstance(w, bool) or not isinstance(w, Integral) or w < 1:
            raise ValueError(f"widths[{i}] (layer {i}): must be an int >= 1, got {w!r}")
        if w % spec.num_heads:
            raise ValueError(
                f"widths[{i}] (layer {i}): width {w} is not divisible by num_heads={spec.num_heads} "
                "(head count is constant per block, head dim = width / num_heads)"
            )
        layer = spec.layers[i]
        if layer.mixer == "attention" and layer.rope and (w // spec.num_heads) % 2:
            raise ValueError(
                f"widths[{i}] (layer {i}): head dim {w}/{spec.num_heads} = {w // spec.num_heads} must be "
                "even for RoPE; choose widths that are multiples of 2·num_heads"
            )
        if layer.mixer == "mamba2" and (spec.ssm_expand * w) % spec.ssm_head_dim:
            raise ValueError(
                f"widths[{i}] (layer {i}): ssm_head_dim={spec.ssm_head_dim} must divide "
                f"ssm_expand·width = {spec.ssm_expand * w} for the mamba2 mixer"
            )
    return tuple(int(w) for w in widths)


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
