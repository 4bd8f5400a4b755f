"""Variable-width DecoderLM (xformer brief): global residual buffer vs literal per-coordinate references,
parameter counts, constant-width parity, incremental decoding, init, validation, save/load and HF round trips."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from lmrepro.analysis.flops import parameter_count
from lmrepro.models import DecoderLM, LayerSpec, LMSpec
from lmrepro.models.hybrid import layers_from_pattern
from lmrepro.models.width import width_schedule

V, H, HEADS = 61, 32, 4

SHAPES = {
    "x": (48, 32, 16, 32, 48),
    "diamond": (16, 32, 48, 32, 16),  # w_L < h: the readout spans h coordinates
    "constant": (32, 32, 32),
    # coordinates re-enter from non-adjacent earlier layers; last block narrower than h
    "zigzag": (48, 16, 32, 64, 8),
}
MODES = ("carry", "zero", "learned")


def make_spec(widths, expansion="carry", layers=None, **kw) -> LMSpec:
    layers = tuple(layers) if layers is not None else tuple(LayerSpec() for _ in widths)
    base = dict(vocab_size=V, hidden_size=H, num_layers=len(widths), num_heads=HEADS, num_kv_heads=HEADS,
                intermediate_size=4 * H, max_seq_len=64, init_std=0.1, layers=layers, ssm_head_dim=16,
                ssm_state_size=8, widths=tuple(widths), expansion=expansion)
    return LMSpec(**{**base, **kw})


def make_model(spec: LMSpec, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    model = DecoderLM(spec).double().eval()
    with torch.no_grad():  # non-trivial norm gains and projections, so a mixed-up slice would show
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
            elif name.startswith("width_projections."):
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]))
    return model


def tokens(b: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- literal references

def fit(v: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad or cut the last dim of v to ``width``."""
    return F.pad(v, (0, width - v.shape[-1])) if width >= v.shape[-1] else v[..., :width]


def carried(outs: list[torch.Tensor], width: int) -> torch.Tensor:
    """Coordinate by coordinate: the most recent earlier layer output that has coordinate c, zero if none."""
    b, t = outs[0].shape[:2]
    cols = []
    for c in range(width):
        col = torch.zeros(b, t, dtype=outs[0].dtype)
        for prev in reversed(outs):
            if prev.shape[-1] > c:
                col = prev[..., c]
                break
        cols.append(col)
    return torch.stack(cols, dim=-1)


def reference(model: DecoderLM, ids: torch.Tensor):
    """(logits, per-layer outputs at their own widths), from the literal definition of each residual rule."""
    spec, h = model.spec, model.spec.hidden_size
    widths, mode = spec.widths, spec.expansion
    positions = torch.arange(ids.shape[1])
    outs = [model.embed_tokens(ids)]  # index 0: the embedding, width h
    for i, block in enumerate(model.layers):
        w = widths[i]
        if mode == "carry":
            inp = carried(outs, w)
        elif mode == "learned" and i > 0 and widths[i - 1] != w:
            inp = outs[-1] @ model.width_projections[str(i)].weight.T
        else:  # "zero", or "learned" without a width change: the previous stream, padded with zeros or cut
            inp = fit(outs[-1], w)
        outs.append(block(inp, positions))
    width = max(widths[-1], h)
    final = carried(outs, width) if mode == "carry" else fit(outs[-1], width)
    assert model.norm.weight.shape == (width,)
    return model.norm(final)[..., :h] @ model.lm_head.weight.T, outs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_buffer_implementation_equals_literal_reference(shape, mode):
    model = make_model(make_spec(SHAPES[shape], mode))
    ids = tokens(2, 9)
    with torch.no_grad():
        logits, states = model(ids), model.hidden_states(ids)
        ref_logits, outs = reference(model, ids)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-10)
    for i, (state, out) in enumerate(zip(states, outs)):  # the active prefix of the buffer is the stream
        torch.testing.assert_close(state[..., : out.shape[-1]], out, rtol=1e-10, atol=1e-10, msg=f"stage {i}")
    assert logits.abs().std() > 0.1  # not a degenerate, near-zero model


def test_literal_reference_with_every_mixer():
    layers = layers_from_pattern(["swa-4", "lightning", "mamba2", "gdn", "full"])
    model = make_model(make_spec(SHAPES["x"], layers=layers))
    ids = tokens(2, 11)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(model, ids)[0], rtol=1e-9, atol=1e-9)


def test_carry_differs_from_zero_when_coordinates_reenter():
    ids = tokens(2, 9)
    carry = make_model(make_spec(SHAPES["x"], "carry"))
    zero = make_model(make_spec(SHAPES["x"], "zero"))
    zero.load_state_dict(carry.state_dict())
    with torch.no_grad():
        assert not torch.allclose(carry(ids), zero(ids))


# ---------------------------------------------------------------- parity, counts, init

@pytest.mark.parametrize("mode", MODES)
def test_widths_all_h_reproduce_the_constant_width_model(mode):
    const = LMSpec(vocab_size=V, hidden_size=H, num_layers=3, num_heads=HEADS, num_kv_heads=2,
                   intermediate_size=4 * H, max_seq_len=64, init_std=0.1)
    var = dataclasses.replace(const, widths=(H,) * 3, expansion=mode)
    torch.manual_seed(0)
    a = DecoderLM(const)
    torch.manual_seed(0)
    b = DecoderLM(var)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # same init, same names
    ids = tokens(3, 10)
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))
        assert all(torch.equal(x, y) for x, y in zip(a.hidden_states(ids), b.hidden_states(ids)))


def _extra_for_learned(widths):
    return sum(widths[i - 1] * widths[i] for i in range(1, len(widths)) if widths[i] != widths[i - 1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("shape", ["schedule-x", "x", "constant", "diamond", "zigzag"])
def test_parameter_count_matches_flops_accounting(shape, tie, mode):
    if shape == "schedule-x":
        widths = tuple(width_schedule(64, 8, V, quantize=8, num_heads=HEADS))
        assert widths[0] > 64 and min(widths) < 32  # a real X shape
        spec = dataclasses.replace(make_spec(widths, mode), hidden_size=64, tie_embeddings=tie)
    else:
        widths = SHAPES[shape]
        spec = make_spec(widths, mode, tie_embeddings=tie)
    model = DecoderLM(spec)
    h = spec.hidden_size
    expected = parameter_count(widths, h, V, untied=not tie)
    # parameter_count sizes the final norm w_L; with w_L < h our norm spans the h coordinates the head reads.
    expected += max(h - widths[-1], 0)
    if mode == "learned":
        expected += _extra_for_learned(widths)
    assert model.num_parameters() == expected


def test_per_block_width_heads_rope_and_init():
    spec = dataclasses.replace(make_spec((64, 16, 32)), init_std=0.02)
    torch.manual_seed(0)
    model = DecoderLM(spec)
    params = dict(model.named_parameters())
    for i, w in enumerate(spec.widths):
        mixer, mlp = model.layers[i].mixer, model.layers[i].mlp
        assert mixer.num_heads == HEADS and mixer.head_dim == w // HEADS and mixer.rope.head_dim == w // HEADS
        assert mixer.q_proj.weight.shape == (w, w) and mlp.gate_proj.weight.shape == (4 * w, w)
        std = 0.02 * math.sqrt(H / w)
        assert params[f"layers.{i}.mlp.gate_proj.weight"].std().item() == pytest.approx(std, rel=0.1)
        assert params[f"layers.{i}.mlp.down_proj.weight"].std().item() == pytest.approx(std / math.sqrt(6), rel=0.1)
    assert params["embed_tokens.weight"].std().item() == pytest.approx(0.02, rel=0.1)
    assert params["lm_head.weight"].std().item() == pytest.approx(0.02, rel=0.1)


def test_learned_projections_start_as_identity_so_learned_equals_zero_at_init():
    ids = tokens(2, 8)
    torch.manual_seed(0)
    learned = DecoderLM(make_spec(SHAPES["zigzag"], "learned")).double()
    zero = DecoderLM(make_spec(SHAPES["zigzag"], "zero")).double()
    zero.load_state_dict({k: v for k, v in learned.state_dict().items() if not k.startswith("width_projections")})
    with torch.no_grad():
        torch.testing.assert_close(learned(ids), zero(ids), rtol=1e-12, atol=1e-12)


def test_first_block_qkv_columns_beyond_h_never_receive_signal():
    model = make_model(make_spec(SHAPES["x"])).train()
    model(tokens(2, 9)).logsumexp(-1).mean().backward()
    mixer = model.layers[0].mixer
    for proj in (mixer.q_proj, mixer.k_proj, mixer.v_proj):
        assert torch.equal(proj.weight.grad[:, H:], torch.zeros_like(proj.weight.grad[:, H:]))
        assert proj.weight.grad[:, :H].abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- decoding

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pattern", [None, ["swa-4", "lightning", "mamba2", "gdn", "full"]])
def test_incremental_decoding_equals_full_forward(pattern, mode):
    layers = layers_from_pattern(pattern) if pattern else None
    model = make_model(make_spec(SHAPES["x"], mode, layers=layers))
    x, prefix = tokens(2, 12), 5
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache()
        pieces = [model(x[:, :prefix], cache)] + [model(x[:, i:i + 1], cache) for i in range(prefix, x.shape[1])]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-7, atol=1e-7)
    assert cache.seen == x.shape[1]


# ---------------------------------------------------------------- spec validation and serialisation

BAD_SPECS = [
    (dict(widths=(32, 32, 32)), r"widths: 3 widths for num_layers=2"),
    (dict(widths=(30, 32)), r"widths\[0\] \(layer 0\).*num_heads=4"),
    (dict(widths=(32, 36)), r"widths\[1\] \(layer 1\).*even for RoPE"),
    (dict(widths=(0, 32)), r"widths\[0\] \(layer 0\).*int >= 1"),
    (dict(widths=(32.0, 32)), r"widths\[0\] \(layer 0\).*int >= 1"),
    (dict(widths=(True, 32)), r"widths\[0\] \(layer 0\).*int >= 1"),
    (dict(widths="3232"), r"widths: must be None or a sequence"),
    (dict(widths=(32, 32), expansion="pad"), r"expansion: 'pad' is not allowed.*carry"),
    (dict(widths=None, expansion="zero"), r"expansion='zero' needs widths"),
    (dict(widths=(32, 40), layers=(LayerSpec(), LayerSpec(mixer="mamba2")), ssm_head_dim=32),
     r"widths\[1\] \(layer 1\).*ssm_head_dim=32"),
]


@pytest.mark.parametrize("overrides,message", BAD_SPECS)
def test_spec_rejects_bad_widths(overrides, message):
    base = dict(vocab_size=V, hidden_size=H, num_layers=2, num_heads=HEADS, num_kv_heads=HEADS,
                intermediate_size=4 * H, max_seq_len=16)
    with pytest.raises(ValueError, match=message):
        LMSpec(**{**base, **overrides})


def test_spec_accepts_lists_and_nope_odd_head_dims():
    spec = make_spec([48, 36], layers=(LayerSpec(), LayerSpec(rope=False)))  # head dim 9 is fine without RoPE
    assert spec.widths == (48, 36) and hash(spec) == hash(make_spec((48, 36), layers=spec.layers))
    DecoderLM(spec)
    # h itself need not be a multiple of the head count when every block width is
    dataclasses.replace(spec, hidden_size=30)


@pytest.mark.parametrize("mode", MODES)
def test_model_folder_round_trip(tmp_path, mode):
    from lmrepro.train import load_model, save_model

    model = make_model(make_spec(SHAPES["zigzag"], mode)).float()
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert loaded.spec == model.spec
    ids = tokens(2, 7)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


@pytest.mark.parametrize("mode,tie", [("carry", False), ("learned", True)])
def test_hf_round_trip(tmp_path, mode, tie):
    from transformers import AutoModelForCausalLM

    from lmrepro.models.hf import LMReproForCausalLM

    model = LMReproForCausalLM.from_model(make_model(make_spec(SHAPES["x"], mode, tie_embeddings=tie)).float())
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.model.spec == model.model.spec
    ids = tokens(2, 9)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
