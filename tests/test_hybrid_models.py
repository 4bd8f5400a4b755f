"""Hybrid models: every mixer trains, decodes incrementally, restricts its receptive field, round-trips HF."""

from __future__ import annotations

import pytest
import torch

from lmrepro.config.layers import hybrid_pattern, parse_layer_token
from lmrepro.models import DecoderLM, LMSpec
from lmrepro.models.generate import greedy_generate
from lmrepro.models.hybrid import layers_from_pattern
from lmrepro.models.mixers.lightning import restricted_lightning
from lmrepro.models.receptive import restrict_receptive_field, select_layers
from lmrepro.ops import lightning_attention

PATTERNS = {
    "full": ["full", "full"],
    "swa": ["swa-4", "full"],
    "swa-nope": ["swa-4", "full-nope"],
    "lightning": ["lightning", "full"],
    "mamba2": ["mamba2", "full"],
    "gdn": ["gdn", "full"],
}


def make(pattern, dtype=torch.float64, seed=0, **kw) -> DecoderLM:
    torch.manual_seed(seed)
    spec = LMSpec(vocab_size=61, hidden_size=32, num_layers=len(pattern), num_heads=4, num_kv_heads=2,
                  intermediate_size=64, max_seq_len=128, layers=layers_from_pattern(pattern),
                  ssm_head_dim=16, ssm_state_size=8, **kw)
    return DecoderLM(spec).to(dtype)


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("t,prefix", [(1, 1), (13, 5), (40, 1)])
def test_incremental_decoding_equals_full_forward(name, t, prefix):
    model = make(PATTERNS[name])
    x = torch.randint(0, 61, (2, t))
    full = model(x)
    cache = model.new_cache()
    pieces = [model(x[:, :prefix], cache)] + [model(x[:, i:i + 1], cache) for i in range(prefix, t)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-7, atol=1e-7)
    assert cache.seen == t


@pytest.mark.parametrize("name", PATTERNS)
def test_greedy_generation_matches_recomputing_the_full_forward(name):
    model = make(PATTERNS[name])
    prompt = torch.randint(0, 61, (2, 7))
    fast = greedy_generate(model, prompt, max_new_tokens=6)
    slow = prompt
    for _ in range(6):
        slow = torch.cat([slow, model(slow)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("name", PATTERNS)
def test_every_architecture_is_causal_and_trains(name):
    model = make(PATTERNS[name], dtype=torch.float32)
    x = torch.randint(0, 61, (2, 17))
    y = x.clone()
    y[:, 9] = (y[:, 9] + 1) % 61
    assert torch.equal(model(x)[:, :9], model(y)[:, :9])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = torch.randint(0, 61, (4, 33))
    losses = []
    for _ in range(25):
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5  # memorizes the fixed batch
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_hybrid_pattern_puts_full_attention_last_in_each_group_and_nope_only_there():
    assert hybrid_pattern(8, "swa-16", 4, full_attention_rope=False) == (["swa-16"] * 3 + ["full-nope"]) * 2
    assert hybrid_pattern(3, "full", None) == ["full"] * 3
    assert hybrid_pattern(3, "full", None, full_attention_rope=False) == ["full-nope"] * 3
    assert parse_layer_token("swa-128-nope") == ("attention", 128, False)
    with pytest.raises(ValueError, match="allowed: full, full-nope"):
        parse_layer_token("swa-0")
    with pytest.raises(ValueError, match="not a layer type"):
        parse_layer_token("mamba")


def test_select_layers_splits_full_from_efficient():
    model = make(["swa-4", "lightning", "full", "mamba2"])
    assert select_layers(model, "full") == [2]
    assert select_layers(model, "efficient") == [0, 1, 3]
    with pytest.raises(ValueError, match="choose one of"):
        select_layers(model, "swa")


@pytest.mark.parametrize("window,sinks", [(1, 0), (3, 0), (3, 2), (50, 0)])
def test_restricting_full_attention_equals_window_plus_sinks_mask(window, sinks):
    """1-layer model: with the restriction, the logits at t depend exactly on tokens in the window ∪ sinks."""
    model = make(["full"])
    t = 12
    x = torch.randint(0, 61, (1, t))
    with restrict_receptive_field(model, "full", window, sinks) as chosen:
        assert chosen == [0]
        base = model(x)
        for p in range(t):
            y = x.clone()
            y[0, p] = (y[0, p] + 1) % 61
            changed = (model(y) - base).abs().amax(-1)[0] > 0
            for i in range(t):
                visible = p <= i and (i - p < window or p < sinks)
                assert bool(changed[i]) == visible, (p, i)
    # Leaving the block restores the full receptive field.
    assert model.layers[0].mixer.restriction is None


def test_restriction_with_a_huge_window_changes_nothing():
    model = make(PATTERNS["lightning"])
    x = torch.randint(0, 61, (2, 20))
    base = model(x)
    with restrict_receptive_field(model, "all", window=100, sinks=0):
        torch.testing.assert_close(model(x), base, rtol=1e-9, atol=1e-9)


def test_restriction_never_widens_a_sliding_window():
    """A window layer already within the limit keeps its own field: no sink tokens are added to it."""
    model = make(["swa-4"])
    x = torch.randint(0, 61, (2, 20))
    base = model(x)
    with restrict_receptive_field(model, "efficient", window=8, sinks=2):
        torch.testing.assert_close(model(x), base, rtol=1e-9, atol=1e-9)
    with restrict_receptive_field(model, "efficient", window=2, sinks=2):
        assert not torch.allclose(model(x), base)


def test_restricted_lightning_matches_the_op_when_unrestricted_and_masks_otherwise():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 15, 3, 8, dtype=torch.float64) for _ in range(3))
    decay = -torch.tensor([0.1, 0.5, 0.01], dtype=torch.float64)
    full, _ = lightning_attention(q, k, v, decay, backend="naive")
    torch.testing.assert_close(restricted_lightning(q, k, v, decay, window=15, sinks=0), full)
    # Reference for the restricted case: explicit double loop.
    out = restricted_lightning(q, k, v, decay, window=4, sinks=2)
    ref = torch.zeros_like(out)
    for t in range(15):
        for s in range(t + 1):
            if t - s < 4 or s < 2:
                w = torch.exp(decay * (t - s)) * (q[:, t] * k[:, s]).sum(-1) * 8 ** -0.5  # [B, H]
                ref[:, t] += w[..., None] * v[:, s]
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("name", ["mamba2", "gdn"])
def test_restriction_of_recurrent_mixers_raises_instead_of_ignoring(name):
    model = make(PATTERNS[name])
    with restrict_receptive_field(model, "efficient", window=4):
        with pytest.raises(NotImplementedError, match="attention and lightning"):
            model(torch.randint(0, 61, (1, 8)))


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("tie", [False, True])
def test_hf_auto_classes_round_trip(tmp_path, name, tie):
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmrepro.models.hf import LMReproForCausalLM

    model = LMReproForCausalLM.from_model(make(PATTERNS[name], dtype=torch.float32, tie_embeddings=tie))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "lmrepro"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is LMReproForCausalLM
    x = torch.randint(0, 61, (2, 9))
    assert torch.equal(model(x).logits, loaded(x).logits)
    out = loaded(x, labels=x)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    torch.testing.assert_close(out.loss, expected)
