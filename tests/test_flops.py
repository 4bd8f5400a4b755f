"""FLOPs / KV / parameter accounting (xformer brief's formula)."""

import pytest
import torch
from torch import nn

from lmrepro.analysis.flops import (
    PF_DAY,
    accounting,
    average_width,
    forward_flops,
    kv_cache_bytes_per_token,
    model_parameters,
    parameter_count,
    pf_days,
    projection_parameters,
    training_flops,
)
from lmrepro.models import DecoderLM, LMSpec
from lmrepro.models.varwidth import readout_width
from lmrepro.models.width import budget_deviation, wasted_parameters, width_schedule

V_PAPER = 100263
PAPER = [(16, 640), (24, 960), (32, 1280), (40, 1600)]


def test_forward_flops_hand_computed():
    # widths [2, 3], h = 2, V = 5, s = 4:
    # LM head 2*4*2*5 = 80; blocks 32*4*(4 + 9) = 1664; attention 4*16*(2 + 3) = 320;
    # wasted: w_1 = h -> 0, w_L = 3 -> 4*(3-2)*3 = 12, minus 2*4*12 = 96.
    assert forward_flops([2, 3], 2, 5, 4) == 80 + 1664 + 320 - 96


def test_baseline_forward_flops_closed_form():
    L, h, V, s = 3, 8, 11, 5
    expected = 2 * s * h * V + L * (32 * s * h * h + 4 * s * s * h)
    assert forward_flops([h] * L, h, V, s) == expected


def test_training_flops_and_pf_days():
    f = forward_flops([2, 3], 2, 5, 4)
    assert training_flops([2, 3], 2, 5, 4, tokens=40) == pytest.approx(3 * f * 10)
    assert pf_days(PF_DAY) == 1.0
    assert pf_days(8.64e19 * 2.5) == pytest.approx(2.5)


def test_kv_and_average_width():
    assert kv_cache_bytes_per_token([2, 3]) == 2 * 5 * 2
    assert kv_cache_bytes_per_token([2, 3], bytes_per_element=4) == 2 * 5 * 4
    assert average_width([2, 3]) == 2.5


def test_parameter_count_hand_computed():
    # widths [2, 3], h = 2, V = 5, mlp_ratio 4:
    # embedding 10; block w=2: 4*4 + 3*2*8 = 64 (+4 norms); block w=3: 36 + 3*3*12 = 144 (+6 norms);
    # final norm 3; LM head 10.
    assert parameter_count([2, 3], 2, 5) == 10 + 68 + 150 + 3 + 10
    assert parameter_count([2, 3], 2, 5, untied=False) == 10 + 68 + 150 + 3
    assert parameter_count([2, 3], 2, 5, include_norms=False) == 10 + 64 + 144 + 10
    assert parameter_count([2, 3], 2, 5, mlp_ratio=2) == 10 + (16 + 24 + 4) + (36 + 54 + 6) + 3 + 10


class _RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


class _Block(nn.Module):
    def __init__(self, w, f):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(w, w, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(w, f, bias=False), nn.Linear(w, f, bias=False)
        self.down = nn.Linear(f, w, bias=False)
        self.norm1, self.norm2 = _RMSNorm(w), _RMSNorm(w)


class _VarWidthLM(nn.Module):
    """The documented layout, built from torch modules, as an independent count."""

    def __init__(self, widths, h, V, mlp_ratio=4):
        super().__init__()
        self.embed = nn.Embedding(V, h)
        self.blocks = nn.ModuleList(_Block(w, mlp_ratio * w) for w in widths)
        self.norm = _RMSNorm(widths[-1])
        self.head = nn.Linear(h, V, bias=False)


@pytest.mark.parametrize("widths,h,V", [([16, 8, 16], 12, 37), ([32], 32, 50), ([64, 32, 32, 96], 64, 101)])
def test_parameter_count_matches_module(widths, h, V):
    model = _VarWidthLM(widths, h, V)
    assert parameter_count(widths, h, V) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: forward_flops([], 2, 5, 4), "widths"),
        (lambda: forward_flops([2, -1], 2, 5, 4), "widths"),
        (lambda: forward_flops([2, 3], 0, 5, 4), "hidden_size"),
        (lambda: forward_flops([2, 3], 2, 0, 4), "vocab_size"),
        (lambda: forward_flops([2, 3], 2, 5, 0), "seq_len"),
        (lambda: training_flops([2, 3], 2, 5, 4, 0), "tokens"),
        (lambda: parameter_count([2, 3], 2, 5, mlp_ratio=2.7), "mlp_ratio"),
        (lambda: parameter_count([2.5, 3], 2, 5), "integers"),
        (lambda: kv_cache_bytes_per_token([2, 3], bytes_per_element=0), "bytes_per_element"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("L,h", PAPER)
def test_paper_flop_and_kv_savings(L, h):
    x = width_schedule(h, L, V_PAPER)
    base = [h] * L
    flop_saving = 1 - forward_flops(x, h, V_PAPER, 4096) / forward_flops(base, h, V_PAPER, 4096)
    kv_saving = 1 - kv_cache_bytes_per_token(x) / kv_cache_bytes_per_token(base)
    print(
        f"\n{L}x{h}: FLOP saving at 4096 ctx {flop_saving:.2%}, KV/avg-width saving {kv_saving:.2%}, "
        f"params base {parameter_count(base, h, V_PAPER):,} x {parameter_count(x, h, V_PAPER):,}"
    )
    # Brief: about 2.5-4.6% FLOPs and 10-11% average width at equal parameters.
    assert 0.02 <= flop_saving <= 0.05
    assert 0.09 <= kv_saving <= 0.12


# ---------------------------------------------------------------------- accounting of a model spec

X_WIDTHS = (48, 40, 32, 24, 16, 24, 48)  # an X shape around h = 32 (multiples of 2·heads)


def _spec(widths=X_WIDTHS, expansion="carry", h=32, V=97):
    return LMSpec(vocab_size=V, hidden_size=h, num_layers=len(widths) if widths else 4, num_heads=4,
                  num_kv_heads=4, intermediate_size=4 * h, max_seq_len=64, tie_embeddings=False,
                  widths=widths, expansion=expansion)


@pytest.mark.parametrize("widths, expansion", [(None, "carry"), (X_WIDTHS, "carry"), (X_WIDTHS, "zero"),
                                               (X_WIDTHS, "learned")])
def test_model_parameters_match_the_instantiated_model(widths, expansion):
    spec = _spec(widths, expansion)
    actual = DecoderLM(spec).num_parameters()
    assert model_parameters(spec) == actual
    w = list(widths or [spec.hidden_size] * spec.num_layers)
    extra_norm = readout_width(spec) - w[-1]  # the readout norm spans max(w_L, h)
    assert actual == parameter_count(w, spec.hidden_size, spec.vocab_size) + extra_norm + projection_parameters(spec)


def test_accounting_conventions():
    s = 16
    spec = _spec(expansion="learned")
    acc = accounting(spec, s, 10 * s)
    w = X_WIDTHS
    proj = sum(a * b for a, b in zip(w, w[1:]) if a != b)
    assert acc["projection_parameters"] == proj > 0 and projection_parameters(_spec()) == 0
    assert acc["forward_flops"] == pytest.approx(forward_flops(w, spec.hidden_size, spec.vocab_size, s) + 2 * s * proj)
    assert acc["train_flops"] == pytest.approx(3 * acc["forward_flops"] * 10)
    assert acc["kv_bytes_per_token"] == 2 * 2 * sum(w)
    assert acc["wasted_parameters"] == wasted_parameters(w, spec.hidden_size) > 0
    assert acc["effective_parameters"] == acc["parameters"] - acc["wasted_parameters"]
    assert acc["budget_deviation"] == budget_deviation(w, spec.hidden_size, spec.vocab_size)
    assert (acc["min_width"], acc["max_width"], acc["average_width"]) == (16, 48, sum(w) / len(w))
    base = accounting(_spec(None), s, 10 * s)
    assert base["wasted_parameters"] == 0 and base["budget_deviation"] == 0 and base["average_width"] == 32
