"""Fault injection, API arguments: ops, models and analysis refuse what they cannot compute, with the exact
error class and a message naming the argument — never zeros, NaN or a silently different computation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from lmrepro.analysis.scaling import ScalingFitWarning, fit_scaling_law
from lmrepro.config import ConfigError, load_config
from lmrepro.lora.alpha import alpha_for
from lmrepro.models import DecoderLM, LMSpec
from lmrepro.ops.attention import attention
from lmrepro.ops.gated_delta import chunked_gated_delta_rule, gated_delta_rule, naive_gated_delta_rule
from lmrepro.ops.lightning import lightning_attention, naive_lightning_attention
from lmrepro.ops.mamba2 import mamba2_ssd, naive_mamba2_ssd

B, T, H, K = 1, 6, 2, 4


def _gdn(**change):
    g = torch.Generator().manual_seed(0)
    args = {"q": torch.randn(B, T, H, K, generator=g), "k": torch.randn(B, T, H, K, generator=g),
            "v": torch.randn(B, T, H, K, generator=g), "g": -torch.rand(B, T, H, generator=g),
            "beta": torch.rand(B, T, H, generator=g)}
    return {**args, **change}


def _lightning(**change):
    g = torch.Generator().manual_seed(1)
    args = {"q": torch.randn(B, T, H, K, generator=g), "k": torch.randn(B, T, H, K, generator=g),
            "v": torch.randn(B, T, H, K, generator=g), "decay": torch.full((H,), -0.1)}
    return {**args, **change}


def _mamba(**change):
    g = torch.Generator().manual_seed(2)
    args = {"x": torch.randn(B, T, H, K, generator=g), "dt": torch.rand(B, T, H, generator=g),
            "A": -torch.rand(H, generator=g), "B": torch.randn(B, T, 1, 3, generator=g),
            "C": torch.randn(B, T, 1, 3, generator=g)}
    return {**args, **change}


def _int8(t: torch.Tensor) -> torch.Tensor:
    return (t * 10).to(torch.int8)


OP_CASES = [
    # (id, op, kwargs, error class, message fragment)
    ("gdn-int8-q", gated_delta_rule, _gdn(q=_int8(_gdn()["q"])), TypeError, "q must be a floating-point"),
    ("gdn-int8-v", naive_gated_delta_rule, _gdn(v=_int8(_gdn()["v"])), TypeError, "v must be a floating-point"),
    ("gdn-positive-g", gated_delta_rule, _gdn(g=_gdn()["g"].abs() + 0.1), ValueError, "g (the log decay) must be <= 0"),
    ("gdn-positive-g-chunked", chunked_gated_delta_rule, _gdn(g=_gdn()["g"].abs() + 0.1), ValueError, "<= 0"),
    ("gdn-bad-beta-shape", gated_delta_rule, _gdn(beta=torch.rand(B, T)), ValueError, "g and beta must be"),
    ("lightning-int8", lightning_attention, _lightning(k=_int8(_lightning()["k"])), TypeError,
     "k must be a floating-point"),
    ("lightning-positive-decay", naive_lightning_attention, _lightning(decay=torch.full((H,), 0.2)), ValueError,
     "decay (a log decay) must be <= 0"),
    ("mamba2-int8", mamba2_ssd, _mamba(x=_int8(_mamba()["x"])), TypeError, "x must be a floating-point"),
    ("mamba2-positive-A", mamba2_ssd, _mamba(A=torch.rand(H) + 0.1), ValueError, "A must be <= 0"),
    ("mamba2-negative-dt", naive_mamba2_ssd, _mamba(dt=-torch.rand(B, T, H) - 0.1), ValueError, "dt must be >= 0"),
    ("attention-int", attention, {"q": torch.ones(B, T, H, K, dtype=torch.long),
                                  "k": torch.ones(B, T, H, K, dtype=torch.long),
                                  "v": torch.ones(B, T, H, K, dtype=torch.long)}, TypeError, "floating-point"),
    ("attention-window-0", attention, {"q": torch.randn(B, T, H, K), "k": torch.randn(B, T, H, K),
                                       "v": torch.randn(B, T, H, K), "window": 0}, ValueError, "window must be"),
]


@pytest.mark.parametrize("case", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_ops_refuse_what_they_cannot_compute(case):
    _, op, kwargs, error, message = case
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        op(**kwargs)


def test_valid_ops_inputs_still_pass():
    """The checks refuse only what is wrong: the unchanged inputs of every case above compute finite outputs."""
    for op, kwargs in ((gated_delta_rule, _gdn()), (lightning_attention, _lightning()), (mamba2_ssd, _mamba())):
        out = op(**kwargs)[0]
        assert torch.isfinite(out).all() and out.abs().sum() > 0


SPEC = dict(vocab_size=11, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=8,
            max_seq_len=16)
SPEC_CASES = [("num_layers", 0), ("vocab_size", 0), ("hidden_size", -8), ("num_heads", 0), ("max_seq_len", 0),
              ("intermediate_size", 2.5), ("num_kv_heads", True), ("norm_eps", 0.0), ("init_std", float("nan")),
              ("rope_theta", -1.0)]


@pytest.mark.parametrize("field,value", SPEC_CASES, ids=[f"{k}={v}" for k, v in SPEC_CASES])
def test_empty_or_zero_size_specs_are_refused(field, value):
    with pytest.raises(ValueError, match=f"^{field}: must be"):
        LMSpec(**{**SPEC, field: value})


@pytest.fixture(scope="module")
def tiny_model():
    return DecoderLM(LMSpec(**SPEC)).eval()


INPUT_CASES = [
    ("past-max-seq-len", torch.zeros(1, 17, dtype=torch.long), ValueError, "exceed max_seq_len=16"),
    ("id-above-vocab", torch.tensor([[1, 2, 11]]), ValueError, r"in \[0, vocab_size=11\)"),
    ("negative-id", torch.tensor([[1, -1]]), ValueError, "min -1"),
    ("float-ids", torch.zeros(1, 4), TypeError, "integer tensor"),
    ("one-dimensional", torch.zeros(4, dtype=torch.long), ValueError, r"must be \[B, T\]"),
]


@pytest.mark.parametrize("case", INPUT_CASES, ids=[c[0] for c in INPUT_CASES])
def test_model_refuses_bad_input_ids(tiny_model, case):
    _, ids, error, message = case
    with pytest.raises(error, match=message):
        tiny_model(ids)


def test_cached_decoding_counts_cached_positions_against_max_seq_len(tiny_model):
    cache = tiny_model.new_cache()
    tiny_model(torch.zeros(1, 12, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match=r"16 exceed|up to 17 exceed .*12 cached \+ 5 new"):
        tiny_model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_numpy_integer_rank_is_a_rank():
    assert alpha_for("2r", np.int64(4)).lora_alpha == 8.0
    with pytest.raises(ValueError, match="r: must be an int >= 1"):
        alpha_for("2r", np.float64(4.0))


def test_unidentifiable_scaling_fit_is_flagged_not_trusted():
    """Every N equal: the N term is a constant the D term can absorb; the old fit reported r² ≈ 1."""
    N, D = [1e6] * 6, [1e6 * 2**i for i in range(6)]
    L = [3.0, 2.8, 2.65, 2.55, 2.5, 2.46]
    with pytest.warns(ScalingFitWarning, match="cannot separate N from D"):
        fit = fit_scaling_law(N, D, L)
    assert not fit.identifiable and not fit.trustworthy
    # Collinear log N and log D (tokens a fixed multiple of parameters) are just as unidentifiable.
    n = np.array([1e5, 2e5, 4e5, 8e5, 1.6e6])
    with pytest.warns(ScalingFitWarning):
        assert not fit_scaling_law(n, 20 * n, 2 + 30 * n**-0.25).identifiable
    # A well-posed grid raises no warning.
    grid_n, grid_d = np.meshgrid([1e5, 4e5, 1.6e6], [1e7, 4e7, 1.6e8])
    grid_n, grid_d = grid_n.ravel(), grid_d.ravel()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScalingFitWarning)
        assert fit_scaling_law(grid_n, grid_d, 400 * grid_n**-0.25 + 300 * grid_d**-0.3).trustworthy


@pytest.mark.parametrize("arch", ["swa-small-foo", "Full", "swa-", ""])
def test_unknown_architecture_names_are_refused(arch):
    from lmrepro.papers.hybrid_attention import runs

    cfg = load_config(profile="smoke")
    with pytest.raises(ConfigError, match="is not an architecture"):
        runs.arch_spec(cfg, arch, next(iter(cfg.hybrid_attention.sizes)))


def test_windows_that_round_to_zero_tokens_are_refused():
    from lmrepro.config import derive

    h = load_config(profile="smoke").hybrid_attention
    with pytest.raises(ConfigError, match="window_fractions.small: .* rounds to 0 tokens"):
        derive(h, "hybrid_attention", window_fractions={**h.window_fractions, "small": 0.1 / h.seq_len})


@pytest.mark.parametrize("task", ["domian", "reasoning; rm -rf /", ""])
def test_unknown_lora_tasks_are_refused(task, tmp_path):
    from lmrepro.papers.lora_alpha import artifacts
    from lmrepro.paths import Paths

    with pytest.raises(ConfigError, match="is not a task"):
        artifacts.sweep_dir(Paths(tmp_path), task)
