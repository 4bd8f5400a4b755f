"""Decoder LMs built from a per-layer spec."""

from .cache import DecodeCache, LayerCache
from .lm import MIXERS, Block, DecoderLM
from .spec import LayerSpec, LMSpec

__all__ = ["MIXERS", "Block", "DecodeCache", "DecoderLM", "LayerCache", "LayerSpec", "LMSpec"]
