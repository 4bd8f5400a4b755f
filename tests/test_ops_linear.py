"""Linear-recurrence ops (Lightning, Mamba-2 SSD, Gated DeltaNet): chunked and dispatched paths
against the naive recurrence (outputs, final states, gradients), state chaining, fla's naive
references as a second oracle, and GPU kernel parity (skipped on CPU)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from lmrepro import ops
from lmrepro.ops import (
    chunked_gated_delta_rule,
    chunked_lightning_attention,
    chunked_mamba2_ssd,
    gated_delta_rule,
    lightning_attention,
    lightning_decay_rates,
    mamba2_ssd,
    naive_gated_delta_rule,
    naive_lightning_attention,
    naive_mamba2_ssd,
)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error of a against the reference b."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


# --- one adapter per op: random inputs and the three paths with one calling convention -------------


@dataclasses.dataclass
class OpCase:
    name: str
    make: Callable  # (b, t, h, dk, dv, dtype, seed) -> (args: dict, state shape)
    naive: Callable
    chunked: Callable
    public: Callable
    grad_args: tuple[str, ...]


def _make_lightning(b, t, h, dk, dv, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    # Mix of fast and slow decays; layer 0 of 4 has the fastest ones.
    decay = lightning_decay_rates(h, 1, 4).to(dtype)
    return dict(q=r(b, t, h, dk), k=r(b, t, h, dk), v=r(b, t, h, dv), decay=decay), (b, h, dk, dv)


def _make_mamba2(b, t, h, dk, dv, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    groups = 2 if h % 2 == 0 else 1
    args = dict(
        x=r(b, t, h, dv),
        dt=F.softplus(r(b, t, h) - 1.0),
        A=-torch.rand(h, generator=gen, dtype=dtype) * 2 - 0.05,
        B=r(b, t, groups, dk),
        C=r(b, t, groups, dk),
        D=r(h),
    )
    return args, (b, h, dk, dv)


def _make_gdn(b, t, h, dk, dv, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    args = dict(
        q=r(b, t, h, dk),
        k=F.normalize(r(b, t, h, dk), dim=-1),
        v=r(b, t, h, dv),
        g=F.logsigmoid(r(b, t, h) + 3.0),
        beta=torch.sigmoid(r(b, t, h)),
    )
    return args, (b, h, dk, dv)


def _call(fn, keys):
    def run(args, **kw):
        pos = [args[k] for k in keys]
        extra = {k: v for k, v in args.items() if k not in keys}
        return fn(*pos, **extra, **kw)

    return run


LIN = ("q", "k", "v", "decay")
SSD = ("x", "dt", "A", "B", "C")
GDN = ("q", "k", "v", "g", "beta")

OPS = {
    "lightning": OpCase(
        "lightning", _make_lightning, _call(naive_lightning_attention, LIN),
        _call(chunked_lightning_attention, LIN), _call(lightning_attention, LIN), ("q", "k", "v", "decay"),
    ),
    "mamba2": OpCase(
        "mamba2", _make_mamba2, _call(naive_mamba2_ssd, SSD),
        _call(chunked_mamba2_ssd, SSD), _call(mamba2_ssd, SSD), ("x", "dt", "A", "B", "C", "D"),
    ),
    "gated_delta": OpCase(
        "gated_delta", _make_gdn, _call(naive_gated_delta_rule, GDN),
        _call(chunked_gated_delta_rule, GDN), _call(gated_delta_rule, GDN), ("q", "k", "v", "g", "beta"),
    ),
}
OP_NAMES = list(OPS)

# (B, T, H, K, V, chunk): odd T, T not a multiple of the chunk, H = 1 and 4, D = 8/16/32.
FWD_CASES = [
    (1, 1, 1, 8, 8, 16),
    (2, 7, 4, 16, 16, 16),
    (1, 33, 4, 8, 16, 16),
    (2, 33, 1, 32, 32, 64),
    (1, 130, 4, 16, 8, 64),
    (1, 130, 1, 32, 16, 16),
    (1, 64, 4, 16, 32, 64),
]
GRAD_CASES = [
    (1, 1, 1, 8, 8, 16),
    (2, 7, 4, 8, 16, 16),
    (1, 33, 1, 16, 8, 16),
    (1, 130, 4, 16, 16, 64),
    (1, 70, 4, 32, 8, 16),
]


def _ids(cases):
    return [f"B{b}-T{t}-H{h}-K{k}-V{v}-C{c}" for b, t, h, k, v, c in cases]


@pytest.mark.parametrize("op", OP_NAMES)
@pytest.mark.parametrize("b,t,h,dk,dv,c", FWD_CASES, ids=_ids(FWD_CASES))
def test_chunked_forward_matches_naive_fp32(op, b, t, h, dk, dv, c):
    case = OPS[op]
    args, sshape = case.make(b, t, h, dk, dv, torch.float32, seed=t * 31 + h)
    s0 = torch.randn(sshape, generator=torch.Generator().manual_seed(1)) * 0.5
    o_ref, s_ref = case.naive(args, initial_state=s0, output_final_state=True)
    o, s = case.chunked(args, initial_state=s0, output_final_state=True, chunk_size=c)
    assert o.shape == o_ref.shape and o.dtype == torch.float32
    assert s.shape == sshape and s.dtype == torch.float32
    assert rel(o, o_ref) <= 1e-5
    assert rel(s, s_ref) <= 1e-5
    # The dispatched public op (auto on CPU -> chunked) computes the same function.
    o_pub, s_pub = case.public(args, initial_state=s0, output_final_state=True, chunk_size=c)
    assert rel(o_pub, o_ref) <= 1e-5 and rel(s_pub, s_ref) <= 1e-5


@pytest.mark.parametrize("op", OP_NAMES)
def test_no_state_in_no_state_out(op):
    case = OPS[op]
    args, _ = case.make(1, 9, 2, 8, 8, torch.float32, seed=3)
    o_ref, s_ref = case.naive(args)
    o, s = case.chunked(args, chunk_size=4)
    assert s is None and s_ref is None
    assert rel(o, o_ref) <= 1e-5


def _loss_and_grads(run, args, s0, grad_args, wo, ws, **kw):
    leaves = {k: args[k].detach().clone().requires_grad_(True) for k in grad_args}
    s0 = s0.detach().clone().requires_grad_(True)
    call_args = {**args, **leaves}
    o, s = run(call_args, initial_state=s0, output_final_state=True, **kw)
    loss = (o * wo).sum() + (s * ws).sum()
    grads = torch.autograd.grad(loss, [*leaves.values(), s0])
    return o, s, dict(zip([*grad_args, "initial_state"], grads))


@pytest.mark.parametrize("op", OP_NAMES)
@pytest.mark.parametrize("b,t,h,dk,dv,c", GRAD_CASES, ids=_ids(GRAD_CASES))
def test_chunked_gradients_match_naive_fp64(op, b, t, h, dk, dv, c):
    case = OPS[op]
    args, sshape = case.make(b, t, h, dk, dv, torch.float64, seed=t + 7 * h)
    gen = torch.Generator().manual_seed(5)
    s0 = torch.randn(sshape, generator=gen, dtype=torch.float64)
    o_shape = args["q"].shape[:3] + (dv,) if "q" in args else args["x"].shape
    wo = torch.randn(o_shape, generator=gen, dtype=torch.float64)
    ws = torch.randn(sshape, generator=gen, dtype=torch.float64)
    o_ref, s_ref, g_ref = _loss_and_grads(case.naive, args, s0, case.grad_args, wo, ws)
    o, s, g = _loss_and_grads(case.chunked, args, s0, case.grad_args, wo, ws, chunk_size=c)
    assert o.dtype == torch.float64 and s.dtype == torch.float64
    assert rel(o, o_ref) <= 1e-10 and rel(s, s_ref) <= 1e-10
    for name in g_ref:
        assert torch.isfinite(g[name]).all(), name
        assert rel(g[name], g_ref[name]) <= 1e-9, name


@pytest.mark.parametrize("op", OP_NAMES)
@pytest.mark.parametrize("backend", ["naive", "chunked", None])
@pytest.mark.parametrize("t,split,c", [(45, 20, 16), (130, 64, 64), (7, 1, 16)])
def test_state_chaining(op, backend, t, split, c):
    """Running two halves with state passing equals one run (split not on a chunk boundary)."""
    case = OPS[op]
    args, sshape = case.make(2, t, 4, 16, 8, torch.float64, seed=t)
    s0 = torch.randn(sshape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def part(sl):
        return {k: (v[:, sl] if v.dim() >= 3 else v) for k, v in args.items()}

    kw = dict(chunk_size=c, backend=backend, output_final_state=True)
    o_full, s_full = case.public(args, initial_state=s0, **kw)
    o1, s1 = case.public(part(slice(0, split)), initial_state=s0, **kw)
    o2, s2 = case.public(part(slice(split, t)), initial_state=s1, **kw)
    assert rel(torch.cat([o1, o2], dim=1), o_full) <= 1e-10
    assert rel(s2, s_full) <= 1e-10


@pytest.mark.parametrize("op", OP_NAMES)
def test_low_precision_inputs_keep_dtype(op):
    case = OPS[op]
    args, sshape = case.make(1, 20, 2, 16, 16, torch.float32, seed=0)
    args16 = {k: v.to(torch.bfloat16) for k, v in args.items()}
    o_ref, s_ref = case.naive(args, output_final_state=True)
    o, s = case.public(args16, output_final_state=True, chunk_size=8)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32  # fp32 accumulation and state
    assert rel(o, o_ref) <= 3e-2 and rel(s, s_ref) <= 3e-2


# --- op-specific semantics ----------------------------------------------------------------------------


def test_lightning_decay_schedule():
    r = lightning_decay_rates(8, 0, 4)
    slopes = torch.tensor([2.0 ** (-(i + 1)) for i in range(8)])  # 2^(-8(h+1)/8)
    torch.testing.assert_close(r, -slopes * (1 + 1e-5))
    last = lightning_decay_rates(8, 3, 4)
    torch.testing.assert_close(last, -slopes * 1e-5)  # last layer barely decays
    assert (lightning_decay_rates(8, 1, 4) < 0).all()
    assert torch.equal(lightning_decay_rates(4, 0, 1), -torch.tensor(ops.alibi_slopes(4)) * (1 + 1e-5))
    # Non-power-of-two heads follow ALiBi's interleaving rule: 4 slopes of H=4, then every other of H=8.
    six = ops.alibi_slopes(6)
    assert six[:4] == ops.alibi_slopes(4) and six[4:] == ops.alibi_slopes(8)[0:4:2]
    assert all(0 < s < 1 for s in six)
    with pytest.raises(ValueError, match="layer_idx"):
        lightning_decay_rates(4, 4, 4)


def test_lightning_rejects_positive_decay_and_bad_shapes():
    q = torch.randn(1, 5, 2, 4)
    with pytest.raises(ValueError, match="<= 0"):
        lightning_attention(q, q, q, torch.tensor([0.1, -0.1]))
    with pytest.raises(ValueError, match=r"decay must have shape \[H\]"):
        lightning_attention(q, q, q, torch.tensor([-0.1]))
    with pytest.raises(ValueError, match="initial_state"):
        lightning_attention(q, q, q, [-0.1, -0.2], initial_state=torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="chunk_size"):
        lightning_attention(q, q, q, [-0.1, -0.2], chunk_size=0)


def test_mamba2_groups_and_skip():
    """B/C groups broadcast to heads as h // (H/G); D is the skip added inside."""
    args, _ = _make_mamba2(1, 11, 4, 8, 8, torch.float64, seed=1)
    y, _ = mamba2_ssd(**args, chunk_size=4)
    full = dict(args)
    full["B"] = args["B"].repeat_interleave(2, dim=2)
    full["C"] = args["C"].repeat_interleave(2, dim=2)
    y_full, _ = naive_mamba2_ssd(**full)
    assert rel(y, y_full) <= 1e-12
    no_d = {k: v for k, v in args.items() if k != "D"}
    y0, _ = mamba2_ssd(**no_d, chunk_size=4)
    assert rel(y - y0, args["D"][:, None] * args["x"]) <= 1e-12
    with pytest.raises(ValueError, match="must divide"):
        mamba2_ssd(args["x"], args["dt"], args["A"], args["B"][:, :, :1].expand(1, 11, 3, 8),
                   args["C"][:, :, :1].expand(1, 11, 3, 8))


def test_mamba2_mapping_to_simple_gla_equals_lightning_for_constant_decay():
    """With dt = 1 and A = log λ, Mamba-2 is Lightning attention with scale 1 and q = C, k = B."""
    gen = torch.Generator().manual_seed(0)
    b, t, h, n, p = 1, 19, 2, 8, 4
    x = torch.randn(b, t, h, p, generator=gen, dtype=torch.float64)
    bm = torch.randn(b, t, h, n, generator=gen, dtype=torch.float64)
    cm = torch.randn(b, t, h, n, generator=gen, dtype=torch.float64)
    decay = torch.tensor([-0.3, -0.05], dtype=torch.float64)
    y, s = mamba2_ssd(x, torch.ones(b, t, h, dtype=torch.float64), decay, bm, cm, output_final_state=True)
    o, s2 = lightning_attention(cm, bm, x, decay, scale=1.0, output_final_state=True)
    assert rel(y, o) <= 1e-12 and rel(s, s2) <= 1e-12


def test_gated_delta_single_step_writes_value():
    """With beta = 1, g = 0 and a unit key, reading the key right after writing returns its value."""
    k = F.normalize(torch.randn(1, 1, 1, 8, dtype=torch.float64), dim=-1)
    v = torch.randn(1, 1, 1, 4, dtype=torch.float64)
    s0 = torch.randn(1, 1, 8, 4, dtype=torch.float64)
    one = torch.ones(1, 1, 1, dtype=torch.float64)
    o, s = gated_delta_rule(k, k, v, one * 0, one, scale=1.0, initial_state=s0, output_final_state=True)
    torch.testing.assert_close(o, v)
    torch.testing.assert_close(torch.einsum("k,kv->v", k[0, 0, 0], s[0, 0]), v[0, 0, 0])


def test_gated_delta_shape_errors():
    q = torch.randn(1, 5, 2, 4)
    with pytest.raises(ValueError, match="g and beta"):
        gated_delta_rule(q, q, q, torch.zeros(1, 5, 3), torch.zeros(1, 5, 2))
    with pytest.raises(ValueError, match="expected q, k"):
        gated_delta_rule(q, q[:, :4], q, torch.zeros(1, 5, 2), torch.zeros(1, 5, 2))


# --- fla's naive references as a second oracle (CPU) ------------------------------------------------

fla_gdn = pytest.importorskip("fla.ops.gated_delta_rule.naive", reason="flash-linear-attention not installed")
fla_sgla = pytest.importorskip("fla.ops.simple_gla.naive", reason="flash-linear-attention not installed")

FLA_CASES = [(2, 7, 4, 16, 16), (1, 33, 1, 8, 32), (1, 130, 4, 32, 16)]


@pytest.mark.parametrize("b,t,h,dk,dv", FLA_CASES)
def test_gated_delta_matches_fla_naive(b, t, h, dk, dv):
    args, sshape = _make_gdn(b, t, h, dk, dv, torch.float32, seed=t)
    s0 = torch.randn(sshape, generator=torch.Generator().manual_seed(4))
    o, s = chunked_gated_delta_rule(**args, initial_state=s0, output_final_state=True, chunk_size=16)
    # fla: naive_recurrent_gated_delta_rule(q, k, v, beta, g, ...) — note beta before g.
    o_f, s_f = fla_gdn.naive_recurrent_gated_delta_rule(
        q=args["q"], k=args["k"], v=args["v"], beta=args["beta"], g=args["g"],
        initial_state=s0.clone(), output_final_state=True,
    )
    assert rel(o, o_f) <= 1e-5 and rel(s, s_f) <= 1e-5
    o_c, s_c = fla_gdn.naive_chunk_gated_delta_rule(
        q=args["q"], k=args["k"], v=args["v"], g=args["g"], beta=args["beta"], chunk_size=16,
        initial_state=s0.clone(), output_final_state=True,
    )
    assert rel(o, o_c) <= 1e-5 and rel(s, s_c) <= 1e-5


@pytest.mark.parametrize("b,t,h,dk,dv", FLA_CASES)
def test_mamba2_and_lightning_match_fla_simple_gla_naive(b, t, h, dk, dv):
    args, sshape = _make_mamba2(b, t, h, dk, dv, torch.float32, seed=t)
    s0 = torch.randn(sshape, generator=torch.Generator().manual_seed(4))
    no_d = {k: v for k, v in args.items() if k != "D"}
    y, s = mamba2_ssd(**no_d, initial_state=s0, output_final_state=True)
    q, k, v, g = ops.ssd_to_simple_gla(no_d["x"], no_d["dt"], no_d["A"], no_d["B"], no_d["C"])
    o_f, s_f = fla_sgla.naive_recurrent_simple_gla(
        q, k, v, g, scale=1.0, initial_state=s0.clone(), output_final_state=True
    )
    assert rel(y, o_f) <= 1e-5 and rel(s, s_f) <= 1e-5
    o_c, s_c = fla_sgla.naive_chunk_simple_gla(
        q, k, v, g, initial_state=s0.clone(), output_final_state=True, chunk_size=16, scale=1.0
    )
    assert rel(y, o_c) <= 1e-5 and rel(s, s_c) <= 1e-5

    largs, _ = _make_lightning(b, t, h, dk, dv, torch.float32, seed=t)
    o, s = lightning_attention(**largs, initial_state=s0, output_final_state=True)
    g_l = largs["decay"][None, None, :].expand(b, t, h).contiguous()
    o_f, s_f = fla_sgla.naive_recurrent_simple_gla(
        largs["q"], largs["k"], largs["v"], g_l, initial_state=s0.clone(), output_final_state=True
    )  # fla's default scale K**-0.5 is ours too
    assert rel(o, o_f) <= 1e-5 and rel(s, s_f) <= 1e-5


# --- GPU: fla kernels against the references ------------------------------------------------------

needs_cuda_fla = pytest.mark.skipif(
    not torch.cuda.is_available() or not ops.backend_available("gated_delta_rule", "fla", device="cuda")[0],
    reason="needs a CUDA device and flash-linear-attention (kernel path)",
)


@pytest.mark.gpu
@needs_cuda_fla
@pytest.mark.parametrize("op", OP_NAMES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-3), (torch.bfloat16, 3e-2)])
def test_fla_kernel_matches_reference(op, dtype, tol):
    case = OPS[op]
    args, sshape = case.make(2, 300, 4, 64, 64, torch.float32, seed=0)
    s0 = torch.randn(sshape, generator=torch.Generator().manual_seed(1)) * 0.5
    o_ref, s_ref = case.chunked(args, initial_state=s0, output_final_state=True)
    cuda = {k: (v.cuda().to(dtype) if k not in ("decay", "A", "D") else v.cuda()) for k, v in args.items()}
    o, s = case.public(cuda, initial_state=s0.cuda(), output_final_state=True, backend="fla")
    assert o.dtype == dtype
    assert rel(o.float().cpu(), o_ref) <= tol and rel(s.float().cpu(), s_ref) <= tol


@pytest.mark.parametrize("op", OP_NAMES)
@pytest.mark.parametrize("path", ["naive", "chunked"])
def test_empty_sequence_returns_initial_state(op, path):
    case = OPS[op]
    args, sshape = case.make(1, 0, 2, 8, 4, torch.float32, seed=0)
    s0 = torch.randn(sshape)
    o, s = getattr(case, path)(args, initial_state=s0, output_final_state=True)
    assert o.shape[1] == 0 and torch.equal(s, s0)
