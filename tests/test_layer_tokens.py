"""The layer-token grammar (lmrepro.config.layers): parse and render are inverse over every token kind,
and LayerSpec reads and writes tokens only through them."""

from __future__ import annotations

import pytest

from lmrepro.config.layers import EFFICIENT_MIXERS, hybrid_pattern, parse_layer_token, render_layer_token
from lmrepro.models import LayerSpec
from lmrepro.models.hybrid import layers_from_pattern

TOKENS = ["full", "full-nope", "swa-1", "swa-2", "swa-3", "swa-7", "swa-64", "swa-127", "swa-4096",
          "swa-1-nope", "swa-5-nope", "swa-128-nope", *EFFICIENT_MIXERS]


@pytest.mark.parametrize("token", TOKENS)
def test_round_trip(token):
    mixer, window, rope = parse_layer_token(token)
    assert render_layer_token(mixer, window, rope) == token
    layer = LayerSpec.from_token(token)
    assert (layer.mixer, layer.window, layer.rope) == (mixer, window, rope)
    assert layer.name == token


@pytest.mark.parametrize("fields", [("attention", None, True), ("attention", None, False), ("attention", 9, True),
                                    ("attention", 33, False), *[(m, None, True) for m in EFFICIENT_MIXERS]])
def test_render_then_parse(fields):
    assert parse_layer_token(render_layer_token(*fields)) == fields


@pytest.mark.parametrize("fields", [("attention", 0, True), ("attention", -3, True), ("attention", 2.0, True),
                                    ("attention", True, True), ("gdn", 4, True), ("mamba2", None, False),
                                    ("conv", None, True)])
def test_render_rejects_what_no_token_names(fields):
    with pytest.raises(ValueError):
        render_layer_token(*fields)


@pytest.mark.parametrize("token", ["swa-0", "swa-07", "swa-", "full-rope", "nope", "attention", "SWA-4",
                                   "swa-4-nope-nope"])
def test_parse_rejects(token):
    with pytest.raises(ValueError, match="allowed"):
        parse_layer_token(token)


def test_hybrid_pattern_names_round_trip():
    for rope in (True, False):
        pattern = hybrid_pattern(6, "swa-3", 3, full_attention_rope=rope)
        assert [layer.name for layer in layers_from_pattern(pattern)] == pattern
        assert pattern[2] == ("full" if rope else "full-nope")
