"""Decoder LMs built from a per-layer spec."""

from .lm import MIXERS, Block, DecoderLM
from .spec import LayerSpec, LMSpec

__all__ = ["MIXERS", "Block", "DecoderLM", "LayerSpec", "LMSpec"]
