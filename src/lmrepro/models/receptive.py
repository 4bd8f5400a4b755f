"""Receptive-field restriction at inference (StreamingLLM style), without retraining.

Chosen layers see only the last ``window`` tokens plus the first ``sinks`` tokens of the sequence.
The hybrid-attention paper restricts either the full-attention layers or the efficient layers and
compares the damage to long-context perplexity.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .lm import DecoderLM

TARGETS = ("full", "efficient", "all")


def select_layers(model: DecoderLM, target: str) -> list[int]:
    """Indices of the layers ``target`` names: "full" (global softmax attention), "efficient" (every
    other layer: sliding-window attention and recurrent mixers) or "all"."""
    if target not in TARGETS:
        raise ValueError(f"target {target!r} is not allowed; choose one of {list(TARGETS)}")
    full = [i for i, block in enumerate(model.layers) if block.layer.is_full_attention]
    if target == "full":
        return full
    if target == "efficient":
        return [i for i in range(len(model.layers)) if i not in full]
    return list(range(len(model.layers)))


@contextlib.contextmanager
def restrict_receptive_field(model: DecoderLM, target: str, window: int, sinks: int = 0) -> Iterator[list[int]]:
    """Within the block, layers named by ``target`` see only their last ``window`` tokens and the first
    ``sinks`` tokens; a sliding-window layer whose own window is already ≤ ``window`` is left as it is
    (it gains no sinks). Yields the layer indices the restriction applies to. Raises for mixers without a
    restricted path (Mamba-2, Gated DeltaNet) on the first forward, never silently ignoring the request."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"sinks must be an int >= 0, got {sinks!r}")
    chosen = select_layers(model, target)
    previous = {i: model.layers[i].mixer.restriction for i in chosen}
    try:
        for i in chosen:
            model.layers[i].mixer.restriction = (window, sinks)
        yield chosen
    finally:
        for i, old in previous.items():
            model.layers[i].mixer.restriction = old
