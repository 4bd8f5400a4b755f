"""Softmax attention: window / sink / GQA / decoding-alignment semantics of the naive reference,
and the sdpa and flex paths (plus flash on GPU) against it."""

from __future__ import annotations

import pytest
import torch

from lmrepro.ops import (
    BackendUnavailableError,
    attention,
    attention_mask,
    backend_available,
    flash_attn_window,
    naive_attention,
)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def qkv(b, tq, tk, hq, hkv, d, dtype=torch.float64, seed=0, dv=None):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, tq, hq, d, generator=gen, dtype=dtype)
    k = torch.randn(b, tk, hkv, d, generator=gen, dtype=dtype)
    v = torch.randn(b, tk, hkv, dv or d, generator=gen, dtype=dtype)
    return q, k, v


def loop_reference(q, k, v, window, sinks, scale=None):
    """Independent oracle: build each query's visible key set explicitly from the convention."""
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    out = torch.zeros(b, tq, hq, v.shape[-1], dtype=torch.float64)
    for i in range(tq):
        p = tk - tq + i
        keys = [j for j in range(p + 1) if window is None or p - j < window or j < sinks]
        for h in range(hq):
            kh = h // (hq // hkv)
            s = (k[:, keys, kh].double() @ q[:, i, h].double()[..., None]).squeeze(-1) * scale
            out[:, i, h] = (s.softmax(-1)[..., None] * v[:, keys, kh].double()).sum(1)
    return out


# (B, Tq, Tk, Hq, Hkv, D, window, sinks)
CASES = [
    (1, 1, 1, 1, 1, 8, None, 0),
    (2, 7, 7, 4, 4, 16, None, 0),
    (1, 7, 7, 4, 2, 8, 3, 0),
    (1, 33, 33, 4, 1, 32, 8, 2),
    (2, 33, 33, 1, 1, 16, 1, 0),
    (1, 130, 130, 4, 2, 16, 16, 4),
    (1, 130, 130, 4, 4, 8, 200, 0),
    (1, 1, 33, 4, 2, 16, 8, 2),  # one decoding step against a cache
    (1, 5, 33, 4, 1, 8, None, 0),  # a few queries at the end of the keys
    (2, 9, 130, 4, 4, 32, 16, 3),
]
IDS = [f"B{b}-Tq{tq}-Tk{tk}-H{hq}/{hkv}-D{d}-W{w}-S{s}" for b, tq, tk, hq, hkv, d, w, s in CASES]


@pytest.mark.parametrize("b,tq,tk,hq,hkv,d,window,sinks", CASES, ids=IDS)
def test_naive_matches_loop_oracle(b, tq, tk, hq, hkv, d, window, sinks):
    q, k, v = qkv(b, min(tq, 9), tk, hq, hkv, d)  # the loop oracle is slow: at most 9 queries
    o = naive_attention(q, k, v, window=window, sinks=sinks)
    assert rel(o, loop_reference(q, k, v, window, sinks)) <= 1e-12


@pytest.mark.parametrize("backend", ["sdpa", "flex", None])
@pytest.mark.parametrize("b,tq,tk,hq,hkv,d,window,sinks", CASES, ids=IDS)
def test_backend_matches_naive(backend, b, tq, tk, hq, hkv, d, window, sinks):
    q, k, v = qkv(b, tq, tk, hq, hkv, d, seed=tq + tk)
    ref = naive_attention(q, k, v, window=window, sinks=sinks)
    o = attention(q, k, v, window=window, sinks=sinks, backend=backend)
    assert o.shape == (b, tq, hq, d) and o.dtype == q.dtype
    assert rel(o, ref) <= 1e-10


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize("window,sinks", [(None, 0), (5, 0), (5, 2), (1, 1)])
def test_gradients_match_naive(backend, window, sinks):
    q, k, v = qkv(2, 21, 21, 4, 2, 16, seed=3)
    w = torch.randn(2, 21, 4, 16, dtype=torch.float64)

    def grads(bk):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        o = attention(*leaves, window=window, sinks=sinks, backend=bk)
        return torch.autograd.grad((o * w).sum(), leaves)

    for a, b in zip(grads(backend), grads("naive")):
        assert rel(a, b) <= 1e-10


def test_fp32_sdpa_within_1e5_of_naive():
    q, k, v = qkv(1, 130, 130, 4, 2, 32, dtype=torch.float32, seed=1)
    ref = naive_attention(q, k, v, window=16, sinks=2)
    assert rel(attention(q, k, v, window=16, sinks=2, backend="sdpa"), ref) <= 1e-5


@pytest.mark.parametrize("backend", ["naive", "sdpa", "flex"])
def test_window_one_sees_only_itself(backend):
    q, k, v = qkv(2, 13, 13, 4, 2, 8)
    o = attention(q, k, v, window=1, backend=backend)
    torch.testing.assert_close(o, v.repeat_interleave(2, dim=2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["naive", "sdpa", "flex"])
@pytest.mark.parametrize("window", [33, 34, 1000])
def test_window_at_least_t_equals_plain_causal(backend, window):
    q, k, v = qkv(1, 33, 33, 4, 4, 16)
    full = naive_attention(q, k, v)
    assert rel(attention(q, k, v, window=window, backend=backend), full) <= 1e-12
    # Sinks add nothing when the window already covers everything.
    assert rel(attention(q, k, v, window=window, sinks=3, backend=backend), full) <= 1e-12


@pytest.mark.parametrize("backend", ["naive", "sdpa", "flex"])
@pytest.mark.parametrize("window,sinks", [(None, 0), (4, 0), (4, 2)])
def test_gqa_equals_repeated_kv_heads(backend, window, sinks):
    q, k, v = qkv(2, 17, 17, 6, 2, 8)
    o = attention(q, k, v, window=window, sinks=sinks, backend=backend)
    o_rep = naive_attention(q, k.repeat_interleave(3, 2), v.repeat_interleave(3, 2), window=window, sinks=sinks)
    assert rel(o, o_rep) <= 1e-12


def test_sinks_are_visible_to_every_query():
    q, k, v = qkv(1, 40, 40, 2, 2, 8)
    m = attention_mask(40, 40, window=4, sinks=3)
    assert m[:, :3].tril().equal(torch.ones(40, 3, dtype=torch.bool).tril())  # causal sinks
    assert m[39].nonzero().flatten().tolist() == [0, 1, 2, 36, 37, 38, 39]
    # Changing a sink value changes the last output; changing a token outside window and sinks does not.
    v2 = v.clone()
    v2[:, 1] += 1.0
    v3 = v.clone()
    v3[:, 10] += 1.0
    base = attention(q, k, v, window=4, sinks=3)
    assert not torch.allclose(attention(q, k, v2, window=4, sinks=3)[:, -1], base[:, -1])
    torch.testing.assert_close(attention(q, k, v3, window=4, sinks=3)[:, -1], base[:, -1], rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["naive", "sdpa", "flex"])
@pytest.mark.parametrize("window,sinks", [(None, 0), (6, 0), (6, 2)])
@pytest.mark.parametrize("tq", [1, 4])
def test_decoding_alignment(backend, window, sinks, tq):
    """Tq < Tk: the queries are the last Tq positions, as when decoding with a KV cache."""
    q, k, v = qkv(2, 29, 29, 4, 2, 16, seed=7)
    full = naive_attention(q, k, v, window=window, sinks=sinks)
    o = attention(q[:, -tq:], k, v, window=window, sinks=sinks, backend=backend)
    assert rel(o, full[:, -tq:]) <= 1e-12


def test_value_head_dim_may_differ():
    q, k, v = qkv(1, 9, 9, 2, 1, 8, dv=12)
    o = attention(q, k, v, window=3, backend="sdpa")
    assert o.shape == (1, 9, 2, 12)
    assert rel(o, naive_attention(q, k, v, window=3)) <= 1e-12


def test_non_causal():
    q, k, v = qkv(1, 5, 9, 2, 2, 8)
    o = attention(q, k, v, causal=False)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * 8 ** -0.5
    ref = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)
    assert rel(o, ref) <= 1e-12
    with pytest.raises(ValueError, match="causal=False"):
        attention(q, k, v, causal=False, window=2)


def test_flash_window_helper():
    assert flash_attn_window(None) == (-1, -1)
    assert flash_attn_window(1) == (0, 0)
    assert flash_attn_window(128) == (127, 0)
    with pytest.raises(ValueError, match="window"):
        flash_attn_window(0)


@pytest.mark.parametrize(
    "kwargs,shapes,match",
    [
        (dict(window=0), None, "window"),
        (dict(window=2.5), None, "window"),
        (dict(window=True), None, "window"),
        (dict(window=4, sinks=-1), None, "sinks"),
        ({}, ((1, 9, 2, 8), (1, 5, 2, 8), (1, 5, 2, 8)), "more queries than keys"),
        ({}, ((1, 5, 3, 8), (1, 5, 2, 8), (1, 5, 2, 8)), "must divide"),
        ({}, ((1, 5, 2, 8), (1, 5, 2, 4), (1, 5, 2, 4)), "head dims"),
        ({}, ((1, 5, 2, 8), (2, 5, 2, 8), (2, 5, 2, 8)), "batch"),
        ({}, ((5, 2, 8), (5, 2, 8), (5, 2, 8)), r"\[B, T, H, D\]"),
    ],
)
def test_validation_errors(kwargs, shapes, match):
    shapes = shapes or ((1, 5, 2, 8),) * 3
    q, k, v = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        attention(q, k, v, **kwargs)


def test_flash_unavailable_on_cpu_raises():
    q, k, v = qkv(1, 4, 4, 2, 2, 8)
    assert not backend_available("attention", "flash", device="cpu")[0]
    with pytest.raises(BackendUnavailableError, match="flash"):
        attention(q, k, v, backend="flash")


# --- GPU ---------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["sdpa", "flex", "flash"])
@pytest.mark.parametrize("window,sinks", [(None, 0), (64, 0), (64, 4)])
@pytest.mark.parametrize("tq", [300, 1])
def test_cuda_backends_match_naive(backend, window, sinks, tq):
    ok, reason = backend_available("attention", backend, device="cuda", dtype=torch.bfloat16, sinks=sinks)
    if not ok:
        pytest.skip(reason)
    q, k, v = (x.cuda().to(torch.bfloat16) for x in qkv(2, tq, 300, 8, 2, 64, dtype=torch.float32))
    ref = naive_attention(q.float(), k.float(), v.float(), window=window, sinks=sinks)
    o = attention(q, k, v, window=window, sinks=sinks, backend=backend)
    assert rel(o.float(), ref) <= 2e-2
