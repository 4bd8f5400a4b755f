"""Layer patterns → :class:`LayerSpec` tuples (token grammar in :mod:`lmrepro.config.layers`)."""

from __future__ import annotations

from ..config import ModelConfig
from ..config.layers import hybrid_pattern, parse_layer_token
from .spec import LayerSpec


def layer_spec(token: str) -> LayerSpec:
    mixer, window, rope = parse_layer_token(token)
    return LayerSpec(mixer=mixer, window=window, rope=rope)


def layers_from_pattern(tokens: list[str]) -> tuple[LayerSpec, ...]:
    return tuple(layer_spec(t) for t in tokens)


def layers_from_config(model: ModelConfig) -> tuple[LayerSpec, ...]:
    return layers_from_pattern(hybrid_pattern(model.num_layers, model.mixer, model.full_attention_every,
                                              model.full_attention_rope))
