"""Backend dispatch: precedence (explicit > forced > automatic), clear errors for unavailable or unknown
backends, logging once per (op, backend), and the provenance registry."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch

from lmrepro.ops import (
    BackendUnavailableError,
    attention,
    backend_available,
    backends_used,
    force_backend,
    gated_delta_rule,
    lightning_attention,
    mamba2_ssd,
    reset_backends_used,
    select_backend,
)
from lmrepro.ops.dispatch import OP_BACKENDS

LINEAR_OPS = ["lightning_attention", "mamba2_ssd", "gated_delta_rule"]


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    # fla on CPU exists only under Triton's interpreter; these tests describe the normal CPU process.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reset_backends_used()
    yield
    reset_backends_used()


def run_all_ops(**kw):
    """Call every public op once on tiny CPU inputs."""
    x = torch.randn(1, 5, 2, 4)
    g = torch.full((1, 5, 2), -0.1)
    attention(x, x, x, window=kw.get("window"), backend=kw.get("attention"))
    lightning_attention(x, x, x, [-0.1, -0.2], backend=kw.get("linear"))
    mamba2_ssd(x, g.abs(), torch.tensor([-1.0, -0.5]), x, x, backend=kw.get("linear"))
    gated_delta_rule(x, x, x, g, torch.full((1, 5, 2), 0.5), backend=kw.get("linear"))


def test_automatic_on_cpu():
    run_all_ops()
    assert backends_used() == {
        "attention": "sdpa",
        "gated_delta_rule": "chunked",
        "lightning_attention": "chunked",
        "mamba2_ssd": "chunked",
    }
    for op in OP_BACKENDS:
        assert select_backend(op, device="cpu") == ("sdpa" if op == "attention" else "chunked")


def test_force_backend_naive_applies_to_all_ops_and_restores():
    with force_backend("naive"):
        run_all_ops(window=3)
        assert set(backends_used().values()) == {"naive"}
    reset_backends_used()
    run_all_ops()
    assert backends_used()["gated_delta_rule"] == "chunked"


def test_force_chunked_leaves_attention_automatic():
    with force_backend("chunked"):
        run_all_ops()
    used = backends_used()
    assert used["attention"] == "sdpa"
    assert all(used[op] == "chunked" for op in LINEAR_OPS)


def test_explicit_beats_forced_and_inner_force_beats_outer():
    with force_backend("naive"):
        assert select_backend("gated_delta_rule", "chunked") == "chunked"
        with force_backend({"gated_delta_rule": "chunked"}):
            assert select_backend("gated_delta_rule") == "chunked"
            assert select_backend("mamba2_ssd") == "naive"  # outer override still applies
        assert select_backend("gated_delta_rule") == "naive"
    assert select_backend("gated_delta_rule") == "chunked"


def test_force_restored_after_exception():
    with pytest.raises(RuntimeError, match="boom"):
        with force_backend("naive"):
            raise RuntimeError("boom")
    assert select_backend("mamba2_ssd") == "chunked"


def test_force_scoped_to_ops():
    with force_backend("naive", ops=["mamba2_ssd"]):
        assert select_backend("mamba2_ssd") == "naive"
        assert select_backend("gated_delta_rule") == "chunked"


@pytest.mark.parametrize("op", LINEAR_OPS)
def test_forced_unavailable_kernel_raises(op):
    with force_backend("fla"):
        with pytest.raises(BackendUnavailableError, match=f"{op}: backend 'fla' \\(forced\\)"):
            select_backend(op, device="cpu")
    with pytest.raises(BackendUnavailableError, match="need CUDA tensors"):
        select_backend(op, "fla", device="cpu")
    assert op not in backends_used()  # nothing recorded for a refused choice


def test_unavailable_backend_raises_from_public_ops():
    x = torch.randn(1, 5, 2, 4)
    g = torch.full((1, 5, 2), -0.1)
    with force_backend("fla"):
        with pytest.raises(BackendUnavailableError):
            gated_delta_rule(x, x, x, g, g.abs())
        with pytest.raises(BackendUnavailableError):
            lightning_attention(x, x, x, [-0.1, -0.2])
        with pytest.raises(BackendUnavailableError):
            mamba2_ssd(x, g.abs(), torch.tensor([-1.0, -0.5]), x, x)
        attention(x, x, x)  # "fla" is no attention backend: attention stays automatic
    with force_backend("flash"):
        with pytest.raises(BackendUnavailableError, match="flash"):
            attention(x, x, x)


def test_backend_available_reasons():
    assert backend_available("attention", "flex", device="cpu")[0]  # forward-only there, see below
    assert backend_available("mamba2_ssd", "naive")[0] and backend_available("mamba2_ssd", "chunked")[0]
    ok, reason = backend_available("gated_delta_rule", "fla", device="cpu")
    assert not ok and "CUDA" in reason


def test_unknown_names_raise_value_error():
    with pytest.raises(ValueError, match="not a backend of op 'attention'"):
        select_backend("attention", "chunked")
    with pytest.raises(ValueError, match="unknown op"):
        select_backend("conv", None)
    with pytest.raises(ValueError, match="unknown backend"):
        with force_backend("cuda"):
            pass
    with pytest.raises(ValueError, match="not a backend of op 'attention'"):
        with force_backend("chunked", ops=["attention"]):
            pass
    with pytest.raises(ValueError, match="not a backend of op"):
        with force_backend({"attention": "fla"}):
            pass
    x = torch.randn(1, 3, 1, 4)
    with pytest.raises(ValueError, match="allowed"):
        gated_delta_rule(x, x, x, torch.zeros(1, 3, 1), torch.zeros(1, 3, 1), backend="sdpa")


def test_registry_lists_every_backend_used_in_order():
    select_backend("mamba2_ssd", "chunked")
    select_backend("mamba2_ssd", "naive")
    select_backend("mamba2_ssd", "chunked")
    assert backends_used() == {"mamba2_ssd": "chunked,naive"}
    reset_backends_used()
    assert backends_used() == {}


def test_logs_once_per_op_and_backend(caplog):
    with caplog.at_level(logging.INFO, logger="lmrepro.ops"):
        for _ in range(3):
            select_backend("gated_delta_rule")
        select_backend("gated_delta_rule", "naive")
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == [
        "gated_delta_rule: using backend 'chunked' (auto, device cpu)",
        "gated_delta_rule: using backend 'naive' (explicit, device cpu)",
    ]


def test_flex_on_cpu_is_forward_only():
    x = torch.randn(1, 6, 2, 8)
    attention(x, x, x, window=2, backend="flex")  # fine without grad
    with pytest.raises(BackendUnavailableError, match="no backward on CPU"):
        attention(x.requires_grad_(True), x, x, window=2, backend="flex")


def test_automatic_rule_on_cuda(monkeypatch):
    """The CUDA branch of the automatic rule, with the kernel libraries pretended installed
    (select_backend only inspects the device type; nothing runs on a GPU here)."""
    from lmrepro.ops import dispatch

    monkeypatch.setattr(dispatch, "_installed", lambda module: True)
    cuda, bf16 = torch.device("cuda"), torch.bfloat16
    for op in LINEAR_OPS:
        assert select_backend(op, device=cuda) == "fla"
    assert select_backend("attention", device=cuda, dtype=bf16) == "flash"
    assert select_backend("attention", device=cuda, dtype=bf16, window=128) == "flash"
    assert select_backend("attention", device=cuda, dtype=bf16, window=128, sinks=4) == "flex"
    assert select_backend("attention", device=cuda, dtype=torch.float32, window=128) == "flex"
    assert select_backend("attention", device=cuda, dtype=torch.float32) == "sdpa"
    assert select_backend("attention", device=cuda, dtype=bf16, same_head_dim=False) == "sdpa"
    with pytest.raises(BackendUnavailableError, match="sink"):
        select_backend("attention", "flash", device=cuda, dtype=bf16, window=128, sinks=4)
    monkeypatch.setattr(dispatch, "_installed", lambda module: False)
    assert select_backend("gated_delta_rule", device=cuda) == "chunked"
    assert select_backend("attention", device=cuda, dtype=bf16) == "sdpa"


# (op, how, device) -> backend chosen inside twice_differentiable(); "auto" or a forced backend name.
TWICE_TABLE = [
    ("attention", "auto", "cpu", "sdpa"),
    ("attention", "auto", "cuda", "sdpa"),  # flash (bf16) is replaced
    ("attention", "naive", "cpu", "naive"),
    ("attention", "sdpa", "cuda", "sdpa"),
    ("attention", "flex", "cpu", "sdpa"),
    ("attention", "flash", "cuda", "sdpa"),
    *[(op, how, dev, want) for op in LINEAR_OPS for how, dev, want in [
        ("auto", "cpu", "chunked"), ("auto", "cuda", "chunked"), ("naive", "cpu", "naive"),
        ("chunked", "cuda", "chunked"), ("fla", "cuda", "chunked")]],
]


@pytest.mark.parametrize("op, how, dev, want", TWICE_TABLE)
def test_twice_differentiable_restricts_backends(monkeypatch, op, how, dev, want):
    from lmrepro.ops import dispatch, twice_differentiable

    monkeypatch.setattr(dispatch, "_installed", lambda module: True)  # pretend every kernel is installed
    forced = force_backend({op: how}) if how != "auto" else contextlib.nullcontext()
    with forced:
        outside = select_backend(op, device=dev, dtype=torch.bfloat16)
        with twice_differentiable():
            assert select_backend(op, device=dev, dtype=torch.bfloat16) == want
            assert want in dispatch.TWICE_DIFFERENTIABLE[op]
        assert select_backend(op, device=dev, dtype=torch.bfloat16) == outside  # restored


def test_twice_differentiable_explicit_kernel_raises_and_sdpa_is_math_only():
    from lmrepro.ops import twice_differentiable

    flags = torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()
    with twice_differentiable():
        assert not torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
        assert select_backend("attention", "naive") == "naive"
        with pytest.raises(BackendUnavailableError, match="double backward"):
            select_backend("gated_delta_rule", "fla", device="cuda")
        with pytest.raises(BackendUnavailableError, match="double backward"):
            select_backend("attention", "flex")
        # A double backward through attention and a linear op works on the chosen paths.
        x = torch.randn(1, 5, 2, 4, dtype=torch.float64, requires_grad=True)
        g = torch.full((1, 5, 2), -0.1, dtype=torch.float64)
        out = attention(x, x, x).sum() + gated_delta_rule(x, x, x, g, torch.full_like(g, 0.5))[0].pow(2).sum()
        (grad,) = torch.autograd.grad(out, x, create_graph=True)
        (hv,) = torch.autograd.grad(grad, x, grad_outputs=torch.ones_like(grad))
        assert torch.isfinite(hv).all()
    assert (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()) == flags
