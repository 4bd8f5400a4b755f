"""Grammar of per-layer mixer tokens, shared by config validation and model construction: the one place
that parses (:func:`parse_layer_token`) and writes (:func:`render_layer_token`) them.

Tokens: ``full`` (causal softmax attention, RoPE), ``full-nope`` (no positional encoding),
``swa-<W>`` / ``swa-<W>-nope`` (sliding window of W tokens: a query sees itself and W−1 previous ones),
``lightning``, ``mamba2``, ``gdn`` (Gated DeltaNet).
"""

from __future__ import annotations

import re

EFFICIENT_MIXERS = ("lightning", "mamba2", "gdn")
_ATTENTION = re.compile(r"^(full|swa-(?P<window>[1-9][0-9]*))(?P<nope>-nope)?$")
ALLOWED = "full, full-nope, swa-<W>, swa-<W>-nope, " + ", ".join(EFFICIENT_MIXERS)


def parse_layer_token(token: str) -> tuple[str, int | None, bool]:
    """``token`` → (mixer, window, rope); ValueError naming the allowed tokens."""
    if token in EFFICIENT_MIXERS:
        return token, None, True
    match = _ATTENTION.match(token) if isinstance(token, str) else None
    if not match:
        raise ValueError(f"{token!r} is not a layer type; allowed: {ALLOWED}")
    window = int(match["window"]) if match["window"] else None
    return "attention", window, match["nope"] is None


def render_layer_token(mixer: str, window: int | None = None, rope: bool = True) -> str:
    """(mixer, window, rope) → token; the inverse of :func:`parse_layer_token`. ValueError for a combination
    no token names (an unknown mixer, a window < 1, or window / NoPE on a mixer that is not attention)."""
    if mixer != "attention":
        if mixer not in EFFICIENT_MIXERS:
            raise ValueError(f"mixer {mixer!r} has no layer token; allowed: attention, " + ", ".join(EFFICIENT_MIXERS))
        if window is not None or not rope:
            raise ValueError(f"window / rope apply to attention layers only, not to mixer {mixer!r}")
        return mixer
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window: must be None or an int >= 1, got {window!r}")
    base = "full" if window is None else f"swa-{window}"
    return base if rope else base + "-nope"


def hybrid_pattern(num_layers: int, mixer: str, full_attention_every: int | None,
                   full_attention_rope: bool = True) -> list[str]:
    """Layer tokens of a layer-wise hybrid: ``mixer`` everywhere, except the last layer of every group of
    ``full_attention_every`` layers, which is full attention (NoPE when ``full_attention_rope`` is False).

    ``full_attention_every=None`` gives a homogeneous model (all ``mixer``).
    """
    parse_layer_token(mixer)
    full = render_layer_token("attention", None, full_attention_rope)
    if full_attention_every is None:
        return [full if mixer == "full" else mixer] * num_layers
    return [full if (i + 1) % full_attention_every == 0 else mixer for i in range(num_layers)]
