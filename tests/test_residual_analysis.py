"""Residual-stream analyses: matrix entropy, MLP activation statistics, logit lens (hand cases + the model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmrepro.eval.residual import (
    activation_density,
    logit_lens,
    matrix_entropy,
    mlp_activations,
    participation_ratio,
    residual_entropy_by_layer,
    unit_utilization,
)
from lmrepro.models import DecoderLM, LMSpec

V, H = 53, 32


def make_model(widths=None, expansion="carry", seed=0) -> DecoderLM:
    torch.manual_seed(seed)
    spec = LMSpec(vocab_size=V, hidden_size=H, num_layers=len(widths) if widths else 3, num_heads=4,
                  num_kv_heads=4, intermediate_size=4 * H, max_seq_len=64, init_std=0.1,
                  widths=tuple(widths) if widths else None, expansion=expansion)
    return DecoderLM(spec).double().eval()


def tokens(b=2, t=12, seed=1):
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


MODELS = {"constant": (None, "carry"), "x": ((48, 32, 16, 48), "carry"), "diamond-zero": ((16, 48, 16), "zero")}


# ---------------------------------------------------------------- matrix entropy

def _orthogonal(n, seed=0):
    return torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


ENTROPY_CASES = {
    "rank-1": (torch.outer(torch.arange(1.0, 6.0), torch.tensor([1.0, -2.0, 0.5])), 0.0),
    "orthogonal": (_orthogonal(5), 1.0),
    "scaled orthogonal 7x4": (3.0 * _orthogonal(7)[:, :4], 1.0),  # r = min(7, 4): 4 equal singular values
    # singular values 3, 4: p = (9/25, 16/25), r = 2
    "diag(3,4)": (torch.diag(torch.tensor([3.0, 4.0])),
                  -(0.36 * math.log(0.36) + 0.64 * math.log(0.64)) / math.log(2)),
    # rank 2 of r = 4, equal energy: log 2 / log 4
    "two equal directions": (torch.cat([torch.eye(2), torch.zeros(2, 2)], 1).repeat(2, 1), 0.5),
    "one row": (torch.tensor([[1.0, 2.0, 3.0]]), 0.0),
}


@pytest.mark.parametrize("name", ENTROPY_CASES)
def test_matrix_entropy_hand_cases(name):
    X, expected = ENTROPY_CASES[name]
    assert matrix_entropy(X) == pytest.approx(expected, abs=1e-9)
    assert matrix_entropy(X.numpy()) == pytest.approx(expected, abs=1e-9)


def test_matrix_entropy_matches_gram_eigenvalues():
    X = torch.randn(20, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ev = np.linalg.eigvalsh((X.T @ X).numpy())  # independent route to σ²
    p = ev / ev.sum()
    assert matrix_entropy(X) == pytest.approx(float(-(p * np.log(p)).sum() / np.log(6)), rel=1e-10)


@pytest.mark.parametrize("bad,match", [(torch.zeros(3, 3), "all zeros"), (torch.ones(3), "2-D"),
                                       (torch.tensor([[1.0, float("nan")]]), "NaN")])
def test_matrix_entropy_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        matrix_entropy(bad)


@pytest.mark.parametrize("name", MODELS)
def test_residual_entropy_uses_each_stage_active_width(name):
    model = make_model(*MODELS[name])
    ids = tokens()
    got = residual_entropy_by_layer(model, ids)
    states = model.hidden_states(ids)
    widths = [H] + list(model.spec.widths or [H] * model.spec.num_layers)
    assert len(got) == model.spec.num_layers + 1 and all(0.0 <= e <= 1.0 for e in got)
    for e, s, w in zip(got, states, widths):
        assert e == pytest.approx(matrix_entropy(s[..., :w].reshape(-1, w)), abs=1e-12)


# ---------------------------------------------------------------- MLP activations

@pytest.mark.parametrize("name", MODELS)
def test_mlp_activations_are_the_swiglu_hidden(name):
    model = make_model(*MODELS[name])
    ids = tokens()
    acts = mlp_activations(model, ids)
    widths = model.spec.widths or [H] * model.spec.num_layers
    assert [a.shape for a in acts] == [(ids.numel(), 4 * w) for w in widths]
    # Independent recomputation for each block from its own input (the reference of the varwidth tests
    # checks the block inputs): silu(gate(norm(x + attn))) * up(...)
    positions = torch.arange(ids.shape[1])
    with torch.no_grad():
        h = model.hidden_states(ids)
        for i, block in enumerate(model.layers):
            w = widths[i]
            x = h[i][..., :w]
            if model.spec.expansion == "zero":  # only the previous stream's own width, zero beyond
                prev = widths[i - 1] if i else H
                x = F.pad(h[i][..., : min(prev, w)], (0, max(w - prev, 0)))
            x = x + block.mixer(block.input_layernorm(x), positions)
            z = block.post_attention_layernorm(x)
            expected = F.silu(block.mlp.gate_proj(z)) * block.mlp.up_proj(z)
            torch.testing.assert_close(acts[i], expected.reshape(-1, 4 * w).float())
    assert not any(m._forward_pre_hooks for m in model.modules())  # hooks removed


def test_activation_density_hand_case_and_monotone():
    acts = [torch.tensor([[0.0, -0.5], [1.0, 2.0]]), torch.tensor([[3.0, -3.0, 0.1]])]
    got = activation_density(acts, [0.0, 0.5, 1.0, 2.5])
    np.testing.assert_allclose(got, [[3 / 4, 2 / 4, 1 / 4, 0.0], [1.0, 2 / 3, 2 / 3, 2 / 3]])
    real = mlp_activations(make_model((48, 16, 48)), tokens())
    dense = activation_density(real, np.linspace(0.0, 0.2, 21))
    assert dense.shape == (3, 21) and np.all(np.diff(dense, axis=1) <= 0) and np.all(dense[:, 0] > 0.99)


def test_unit_utilization():
    acts = [torch.tensor([[0.0, 1.0, -2.0], [0.0, 0.2, 3.0], [0.0, 1.5, 0.0], [0.0, 0.0, 4.0]])]
    np.testing.assert_allclose(unit_utilization(acts, threshold=0.5)[0], [0.0, 0.5, 0.75])
    # default threshold: the layer's RMS = sqrt(33.29 / 12) ≈ 1.666
    np.testing.assert_allclose(unit_utilization(acts)[0], [0.0, 0.0, 0.75])
    with pytest.raises(ValueError, match="threshold"):
        unit_utilization(acts, threshold=float("nan"))


PR_CASES = {
    "one-hot energy": (torch.tensor([[0.0, 3.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0]]), 1.0),
    "uniform energy": (torch.tensor([[1.0, -1.0, 1.0, 1.0, -1.0]]), 5.0),
    "uniform over tokens": (torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]), 3.0),
    "two of four units": (torch.tensor([[1.0, 0.0, 1.0, 0.0]]), 2.0),
    "energies 1 and 3": (torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]]), 16 / 10),
}


@pytest.mark.parametrize("name", PR_CASES)
def test_participation_ratio(name):
    a, expected = PR_CASES[name]
    assert participation_ratio([a]) == [pytest.approx(expected)]


def test_participation_ratio_rejects_silence():
    with pytest.raises(ValueError, match=r"acts\[1\]"):
        participation_ratio([torch.ones(2, 2), torch.zeros(2, 2)])


# ---------------------------------------------------------------- logit lens

@pytest.mark.parametrize("name", MODELS)
def test_logit_lens_last_layer_is_the_model(name):
    model = make_model(*MODELS[name])
    ids = tokens()
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100
    lens = logit_lens(model, ids, targets)
    L = model.spec.num_layers
    assert lens["logprob"].shape == (L + 1,) and lens["entropy"].shape == (L + 1,) and lens["kl_next"].shape == (L,)
    with torch.no_grad():
        logp = F.log_softmax(model(ids), -1)[:, :-1]
    tgt = targets[:, :-1]
    assert lens["logprob"][-1] == pytest.approx(float(logp.gather(-1, tgt[..., None]).mean()), rel=1e-9)
    assert lens["entropy"][-1] == pytest.approx(float(-(logp.exp() * logp).sum(-1).mean()), rel=1e-9)
    assert np.all(lens["kl_next"] >= 0) and np.all(lens["entropy"] <= math.log(V) + 1e-9)
    # stage 0 is the readout of the embedding alone (zero-padded for the variable-width buffer)
    with torch.no_grad():
        emb = model.embed_tokens(ids)
        width = model.norm.weight.shape[0]
        p0 = F.log_softmax(model.lm_head(model.norm(F.pad(emb, (0, max(width - H, 0))))[..., :H]), -1)[:, :-1]
    assert lens["logprob"][0] == pytest.approx(float(p0.gather(-1, tgt[..., None]).mean()), rel=1e-6)


def test_logit_lens_kl_of_a_skipped_block_is_zero():
    model = make_model()
    with torch.no_grad():  # block 1 adds nothing: its output projections are zero
        model.layers[1].mixer.o_proj.weight.zero_()
        model.layers[1].mlp.down_proj.weight.zero_()
    ids = tokens()
    lens = logit_lens(model, ids, ids)
    assert lens["kl_next"][1] == pytest.approx(0.0, abs=1e-12) and lens["kl_next"][0] > 1e-6


def test_logit_lens_rejects_bad_targets():
    model = make_model()
    with pytest.raises(ValueError, match="targets"):
        logit_lens(model, tokens(2, 5), tokens(2, 6))
    with pytest.raises(ValueError, match="ignore_index"):
        logit_lens(model, tokens(2, 5), torch.full((2, 5), -100))
