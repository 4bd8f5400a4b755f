"""DecoderLM: shapes, causality, sliding window, NoPE, GQA, tied embeddings, parity with HF Llama/Mistral."""

from __future__ import annotations

import math

import pytest
import torch

from lmrepro.config import load_config
from lmrepro.models import DecoderLM, LayerSpec, LMSpec
from lmrepro.models.mixers import AttentionMixer

V = 97


def make_spec(layers=None, *, num_layers=2, hidden=32, heads=4, kv=4, inter=48, init_std=0.1, **kw) -> LMSpec:
    layers = tuple(layers) if layers is not None else tuple(LayerSpec() for _ in range(num_layers))
    return LMSpec(vocab_size=V, hidden_size=hidden, num_layers=len(layers), num_heads=heads, num_kv_heads=kv,
                  intermediate_size=inter, max_seq_len=64, init_std=init_std, layers=layers, **kw)


def make_model(spec: LMSpec, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    model = DecoderLM(spec).eval()
    with torch.no_grad():  # non-trivial norm gains, so a mixed-up norm weight would show
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model


def tokens(b: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def changed_at(ids: torch.Tensor, pos: int) -> torch.Tensor:
    out = ids.clone()
    out[:, pos] = (out[:, pos] + 1 + torch.arange(ids.shape[0])) % V
    return out


CONFIGS = {
    "full": dict(),
    "gqa": dict(kv=2),
    "mqa": dict(kv=1),
    "window": dict(layers=[LayerSpec(window=3), LayerSpec()]),
    "nope": dict(layers=[LayerSpec(rope=False), LayerSpec(rope=False, window=2)]),
    "tied": dict(tie_embeddings=True),
}


# ---------------------------------------------------------------- shapes, hidden states

@pytest.mark.parametrize("t", [1, 7, 16])
@pytest.mark.parametrize("name", ["full", "gqa", "window"])
def test_shapes(name, t):
    spec = make_spec(**CONFIGS[name])
    model = make_model(spec)
    ids = tokens(3, t)
    logits = model(ids)
    assert logits.shape == (3, t, V) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    states = model.hidden_states(ids)
    assert len(states) == spec.num_layers + 1
    assert all(s.shape == (3, t, spec.hidden_size) for s in states)


def test_hidden_states_are_the_residual_stream():
    model = make_model(make_spec(num_layers=3))
    ids = tokens(2, 9)
    with torch.no_grad():
        states = model.hidden_states(ids)
        logits = model(ids)
    assert torch.equal(states[0], model.embed_tokens(ids))
    # the last state is before the final norm: norm + head give the logits
    assert torch.equal(model.lm_head(model.norm(states[-1])), logits)
    assert not torch.allclose(model.norm(states[-1]), states[-1])


# ---------------------------------------------------------------- causality and windows

@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal_exact(name):
    """Changing token t leaves logits at positions < t bit-identical and changes position t."""
    model = make_model(make_spec(**CONFIGS[name]))
    ids = tokens(2, 11)
    with torch.no_grad():
        ref = model(ids)
        for t in (0, 1, 5, 10):
            out = model(changed_at(ids, t))
            assert torch.equal(out[:, :t], ref[:, :t]), f"position < {t} saw token {t}"
            assert not torch.allclose(out[:, t], ref[:, t])


@pytest.mark.parametrize("window", [1, 2, 3, 5])
def test_window_one_layer(window):
    """1 layer, window W: logits at i depend on token p iff 0 <= i - p <= W - 1 (exactly)."""
    model = make_model(make_spec([LayerSpec(window=window)], init_std=0.3))
    t = 12
    ids = tokens(2, t)
    with torch.no_grad():
        ref = model(ids)
        for p in range(t):
            out = model(changed_at(ids, p))
            for i in range(t):
                same = torch.equal(out[:, i], ref[:, i])
                if i < p or i - p >= window:
                    assert same, f"W={window}: query {i} saw token {p}"
                else:
                    assert not same, f"W={window}: query {i} missed token {p}"


def test_window_receptive_field_grows_with_depth():
    """L windowed layers of W: the receptive field is L*(W-1)+1 tokens."""
    w, layers = 3, 3
    model = make_model(make_spec([LayerSpec(window=w)] * layers, init_std=0.3))
    t, p = 14, 2
    ids = tokens(1, t)
    with torch.no_grad():
        ref, out = model(ids), model(changed_at(ids, p))
    reach = layers * (w - 1)
    for i in range(t):
        assert torch.equal(out[:, i], ref[:, i]) == (i < p or i - p > reach), i


def _reference_attention(q, k, v, window):
    """Dense softmax with an explicit mask, kv heads repeated; [B, T, H, D] layout, float64."""
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    t = q.shape[2]
    i = torch.arange(t)
    visible = i[None, :] <= i[:, None]
    if window is not None:
        visible &= i[:, None] - i[None, :] < window
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~visible, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("kv", [4, 2])
@pytest.mark.parametrize("window", [None, 1, 4, 9, 40])
@pytest.mark.parametrize("t", [1, 9])
def test_mixer_matches_dense_reference(window, kv, t):
    spec = make_spec([LayerSpec(window=window)], kv=kv, init_std=0.3)
    torch.manual_seed(0)
    mixer = AttentionMixer(spec, spec.layers[0], 0)
    for p in mixer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, t, spec.hidden_size)
    pos = torch.arange(t)
    b, d = x.shape[0], spec.head_dim
    q = mixer.rope(mixer.q_proj(x).view(b, t, -1, d), pos)
    k = mixer.rope(mixer.k_proj(x).view(b, t, -1, d), pos)
    v = mixer.v_proj(x).view(b, t, -1, d)
    expected = mixer.o_proj(_reference_attention(q, k, v, window).float().reshape(b, t, -1))
    with torch.no_grad():
        torch.testing.assert_close(mixer(x, pos), expected, atol=1e-5, rtol=1e-5)


def test_window_covering_sequence_is_full_causal():
    spec_full = make_spec([LayerSpec()])
    full = make_model(spec_full)
    wide = DecoderLM(make_spec([LayerSpec(window=9)])).eval()
    wide.load_state_dict(full.state_dict())
    ids = tokens(2, 9)
    with torch.no_grad():
        assert torch.equal(wide(ids), full(ids))
        assert not torch.allclose(wide(tokens(2, 10)), full(tokens(2, 10)))


# ---------------------------------------------------------------- NoPE vs RoPE

@pytest.mark.parametrize("rope", [True, False])
def test_position_shift(rope):
    """RoPE depends on relative positions only (shift ≈ same); NoPE ignores positions entirely (exact)."""
    spec = make_spec([LayerSpec(rope=rope)], init_std=0.3)
    torch.manual_seed(0)
    mixer = AttentionMixer(spec, spec.layers[0], 0)
    x = torch.randn(2, 9, spec.hidden_size)
    pos = torch.arange(9)
    with torch.no_grad():
        a, b = mixer(x, pos), mixer(x, pos + 37)
    if rope:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    else:
        assert torch.equal(a, b)


@pytest.mark.parametrize("rope", [True, False])
def test_nope_last_position_ignores_prefix_order(rope):
    """1-layer NoPE: the last position attends to the *set* of earlier tokens, so permuting the
    prefix leaves its logits unchanged (up to summation order); with RoPE the order matters."""
    model = make_model(make_spec([LayerSpec(rope=rope)], init_std=0.5))
    ids = tokens(2, 10)
    perm = torch.cat([torch.randperm(9, generator=torch.Generator().manual_seed(3)), torch.tensor([9])])
    assert not torch.equal(perm, torch.arange(10))
    with torch.no_grad():
        a, b = model(ids)[:, -1], model(ids[:, perm])[:, -1]
    if rope:
        assert (a - b).abs().max() > 1e-3
    else:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- GQA, tied embeddings

@pytest.mark.parametrize("kv", [2, 1])
@pytest.mark.parametrize("window", [None, 3])
def test_gqa_equals_repeated_kv_heads(kv, window):
    heads, hidden = 4, 32
    d = hidden // heads
    layers = [LayerSpec(window=window), LayerSpec()]
    gqa = make_model(make_spec(layers, heads=heads, kv=kv))
    mha = DecoderLM(make_spec(layers, heads=heads, kv=heads)).eval()
    state = {}
    for name, w in gqa.state_dict().items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            # kv head j serves query heads j*rep ... (j+1)*rep-1 (HF repeat_kv / torch enable_gqa)
            w = w.view(kv, d, hidden).repeat_interleave(heads // kv, dim=0).reshape(heads * d, hidden)
        state[name] = w
    mha.load_state_dict(state)
    assert gqa.layers[0].mixer.k_proj.weight.shape == (kv * d, hidden)
    ids = tokens(2, 11)
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids), mha(ids), atol=1e-5, rtol=1e-5)


def test_tied_embeddings_share_storage():
    tied = make_model(make_spec(tie_embeddings=True))
    untied = make_model(make_spec())
    assert tied.lm_head.weight is tied.embed_tokens.weight
    assert tied.lm_head.weight.data_ptr() == tied.embed_tokens.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.embed_tokens.weight.data_ptr()
    assert untied.num_parameters() - tied.num_parameters() == V * 32
    # a training step keeps them tied
    opt = torch.optim.SGD(tied.parameters(), lr=0.1)
    tied(tokens(2, 5)).square().mean().backward()
    opt.step()
    assert tied.lm_head.weight is tied.embed_tokens.weight


def test_gradients_reach_every_parameter():
    model = make_model(make_spec(**CONFIGS["window"]))
    model(tokens(2, 7)).logsumexp(-1).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_init_scales_residual_projections():
    spec = make_spec(num_layers=8, hidden=64, heads=4, inter=256, init_std=0.02)
    torch.manual_seed(0)
    model = DecoderLM(spec)
    std = lambda n: dict(model.named_parameters())[n].std().item()  # noqa: E731
    assert std("layers.0.mixer.q_proj.weight") == pytest.approx(0.02, rel=0.1)
    assert std("layers.0.mlp.down_proj.weight") == pytest.approx(0.02 / 4, rel=0.1)
    assert std("layers.0.mixer.o_proj.weight") == pytest.approx(0.02 / 4, rel=0.15)
    assert torch.equal(model.norm.weight, torch.ones(64))


# ---------------------------------------------------------------- spec

def test_spec_validation():
    with pytest.raises(ValueError, match="window"):
        LayerSpec(window=0)
    with pytest.raises(ValueError, match="window"):
        LayerSpec(window=2.0)
    with pytest.raises(ValueError, match="num_heads"):
        make_spec(hidden=30, heads=4)
    with pytest.raises(ValueError, match="num_kv_heads"):
        make_spec(heads=4, kv=3)
    with pytest.raises(ValueError, match="layers"):
        LMSpec(vocab_size=V, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=4, intermediate_size=8,
               max_seq_len=8, layers=(LayerSpec(),))
    with pytest.raises(ValueError, match="even"):
        DecoderLM(make_spec(hidden=36, heads=4))  # head_dim 9 with RoPE
    DecoderLM(make_spec([LayerSpec(rope=False)], hidden=36, heads=4))  # NoPE needs no even head_dim
    spec = make_spec([LayerSpec(), LayerSpec(window=4)])
    assert isinstance(spec.layers, tuple) and hash(spec) == hash(make_spec([LayerSpec(), LayerSpec(window=4)]))
    assert len(make_spec(num_layers=3).layers) == 3


def test_spec_from_config():
    cfg = load_config(profile="paper").model
    spec = LMSpec.from_config(cfg, vocab_size=1000)
    assert (spec.num_heads, spec.num_kv_heads, spec.rope_theta) == (cfg.num_heads, cfg.num_kv_heads, cfg.rope_theta)
    assert spec.layers == tuple(LayerSpec() for _ in range(cfg.num_layers))
    smoke = load_config(profile="smoke").model
    assert LMSpec.from_config(smoke, vocab_size=512).num_kv_heads == smoke.num_heads


# ---------------------------------------------------------------- parity with transformers

def _copy_into_hf(ours: DecoderLM, hf) -> None:
    state = {}
    for name, w in ours.state_dict().items():
        name = name.replace(".mixer.", ".self_attn.")
        state[name if name.startswith("lm_head") else f"model.{name}"] = w
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)


@pytest.mark.parametrize("heads, kv, theta", [(4, 4, 10000.0), (4, 2, 500000.0), (4, 1, 10000.0)])
def test_parity_with_hf_llama(heads, kv, theta):
    transformers = pytest.importorskip("transformers")
    spec = make_spec(num_layers=2, hidden=32, heads=heads, kv=kv, inter=48, rope_theta=theta, norm_eps=1e-6,
                     init_std=0.2)
    ours = make_model(spec)
    config = transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=heads,
        num_key_value_heads=kv, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=theta,
        hidden_act="silu", attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        attn_implementation="eager",
    )
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": config.rope_theta}
    assert rope["rope_theta"] == theta  # the kwarg really reached HF's RoPE
    hf = transformers.LlamaForCausalLM(config).eval()
    _copy_into_hf(ours, hf)
    for t in (1, 7, 16):
        ids = tokens(2, t, seed=t)
        with torch.no_grad():
            expected = hf(input_ids=ids).logits
            got = ours(ids)
        assert expected.abs().max() > 0.1  # non-trivial logits
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_parity_with_hf_mistral_sliding_window():
    """HF's sliding_window=W has our convention (query + W-1 previous tokens)."""
    transformers = pytest.importorskip("transformers")
    w = 3
    spec = make_spec([LayerSpec(window=w)] * 2, heads=4, kv=2, inter=48, init_std=0.3)
    ours = make_model(spec)
    config = transformers.MistralConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
        hidden_act="silu", sliding_window=w, tie_word_embeddings=False, attn_implementation="eager",
    )
    hf = transformers.MistralForCausalLM(config).eval()
    _copy_into_hf(ours, hf)
    ids = tokens(2, 11)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
