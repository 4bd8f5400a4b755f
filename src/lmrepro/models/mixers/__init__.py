"""Sequence mixers by name. Each takes ``(spec, layer, layer_idx)`` and maps
x [B, T, hidden] → [B, T, hidden] given absolute ``positions`` [T] and an optional decoding cache."""

from .attention import AttentionMixer
from .gated_deltanet import GatedDeltaNetMixer
from .lightning import LightningMixer
from .mamba2 import Mamba2Mixer

MIXERS = {
    "attention": AttentionMixer,
    "lightning": LightningMixer,
    "mamba2": Mamba2Mixer,
    "gdn": GatedDeltaNetMixer,
}

__all__ = ["MIXERS", "AttentionMixer", "GatedDeltaNetMixer", "LightningMixer", "Mamba2Mixer"]
