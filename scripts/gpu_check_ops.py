#!/usr/bin/env python
"""GPU check of the sequence-mixing ops: kernel parity against the references, then throughput at 16K.

    PYTHONPATH=src python scripts/gpu_check_ops.py [--quick] [--json-out results.json]
    PYTHONPATH=src python scripts/gpu_check_ops.py --interpret   # no GPU: fla's kernels on CPU, small shapes

Needs only torch + triton (+ flash-linear-attention's kernels, fla-core, for the linear ops; flash_attn
optional). On a machine where nothing can be installed, `make vendor` (elsewhere) unzips the locked fla-core
wheel into ``vendor/``; carry it and run with ``PYTHONPATH=src:vendor``.

Checks (each records the norm-wise relative error ||a - b|| / ||b||):
  * linear ops (lightning_attention, mamba2_ssd, gated_delta_rule), fla kernel path:
      - vs the naive recurrence, fp32, T=100 (outputs, final state);
      - vs the chunked PyTorch path in fp32 on the same (bf16-rounded) inputs, T=1000 (not a multiple
        of 64), with initial state: outputs, final state, and gradients of every input; in fp32 and bf16.
  * attention: sdpa / flex / flash (when installed) vs the naive dense-mask reference, windows, sinks,
    GQA, decoding (Tq < Tk), outputs and gradients, fp32 (not flash) and bf16.
  * whole hybrid models (Lightning, Mamba-2, Gated DeltaNet at laptop size s1, fp32, T=1000): logits and
    parameter gradients with the linear ops forced onto the kernel vs onto the chunked path.
Timing (skipped with --quick): B=1, T=16384, bf16, forward and forward+backward (CUDA events, median),
kernel vs chunked PyTorch for the linear ops (H=8, K=V=128); sdpa / flash / flex attention
(16 query heads, 4 kv heads, D=128) for full causal and windows 128 / 2048 with and without sinks.

``--interpret`` runs the same parity checks on CPU with fla's real Triton kernels executed by Triton's
interpreter (:mod:`lmrepro.ops.triton_interpreter`) at small shapes (T = 100 / 300, models T = 100), in
float32 only (the interpreter cannot do bfloat16 arithmetic) against 1e-5 (outputs, states) and 5e-5
(gradients), and attention's CPU paths; no timing. It checks the kernel code (first autotune config) and
our glue (layouts, decay conventions, scale, states, gradients), not GPU numerics or speed. About 15 s on a
quiet 2-core machine. (Mamba-2's D skip term is applied outside the kernel, so its gradient matches exactly.)

Prints one JSON object. Exit status: 0 all parity checks passed; 1 a parity check failed or raised;
2 no CUDA device (nothing checked); 3 parity passed but a kernel library was missing (incomplete).
Expected runtime on a GPU: ~1-4 min with --quick (Triton JIT/autotune and flex compilation dominate), add ~1-2 min
for timing; well under 10 min.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TOL = {  # (outputs/state, gradients) per dtype; fla's Triton dots run in tf32 for fp32 inputs
    "float32": (5e-3, 1e-2),
    "bfloat16": (2e-2, 5e-2),
}
NAIVE_TOL = 5e-3  # kernel vs naive recurrence, fp32, outputs and state
# Triton's interpreter computes in true fp32 (NumPy), so the fp32 parity target applies.
INTERPRET_TOL = {"float32": (1e-5, 5e-5)}
# --interpret swaps the device (the kernel stays fla, run by Triton's interpreter) and the shapes.
DEVICE = "cuda"
KERNEL = "fla"
# (B, T, H, D) of the linear-op checks vs the naive recurrence and vs the chunked path; attention T_k.
SHAPES = {"naive": (2, 100, 4, 64), "chunked": (2, 1000, 4, 64), "attention_tk": 1024}
INTERPRET_SHAPES = {"naive": (2, 100, 2, 32), "chunked": (2, 300, 3, 32), "attention_tk": 256}


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="parity checks only, no 16K timing")
    ap.add_argument("--json-out", default=None, help="also write the JSON here (rewritten after each section)")
    ap.add_argument("--seq-len", type=int, default=16384, help="timing context length")
    ap.add_argument("--interpret", action="store_true",
                    help="no GPU: run fla's Triton kernels on CPU in Triton's interpreter, small shapes, no timing")
    args = ap.parse_args()
    global DEVICE, SHAPES, TOL, NAIVE_TOL
    if args.interpret:
        # Before anything imports triton: kernels are compiled or interpreted when they are defined.
        os.environ["TRITON_INTERPRET"] = "1"
        DEVICE, SHAPES, TOL, NAIVE_TOL = "cpu", INTERPRET_SHAPES, {**TOL, **INTERPRET_TOL}, INTERPRET_TOL["float32"][0]

    report: dict = {"ok": False, "status": None, "parity": [], "timing": [], "missing": [], "errors": []}

    def emit() -> None:
        text = json.dumps(report, indent=2)
        if args.json_out:
            with open(args.json_out, "w") as f:
                f.write(text)
        return text

    try:
        import torch
    except ImportError as e:  # pragma: no cover
        report["status"] = f"torch not importable: {e}"
        print(emit())
        return 2
    report["versions"] = {"python": platform.python_version(), "torch": torch.__version__}
    if DEVICE == "cuda" and not torch.cuda.is_available():
        report["status"] = "no CUDA device: this script checks GPU kernels and cannot run on CPU"
        print(emit())
        print("gpu_check_ops: " + report["status"], file=sys.stderr)
        return 2
    report["device"] = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (Triton interpreter)"
    report["interpret"] = DEVICE != "cuda"
    for mod in ("triton", "fla", "flash_attn", "einops"):
        try:
            m = __import__(mod)
            report["versions"][mod] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001 - any import failure means "unavailable"
            report["versions"][mod] = f"unavailable ({type(e).__name__}: {e})"

    # FlexAttention compiles once per shape and mask; the checks below exceed dynamo's default limit of 8.
    try:
        import torch._dynamo

        for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 64))
    except Exception:  # noqa: BLE001 - only a performance knob
        pass
    # References in true fp32: no TF32 in PyTorch matmuls.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    from lmrepro import ops

    t_start = time.time()
    _linear_parity(torch, ops, report)
    emit()
    _attention_parity(torch, ops, report)
    emit()
    _model_parity(torch, ops, report)
    emit()
    if not args.quick and DEVICE == "cuda":
        try:
            _timing(torch, ops, report, args.seq_len)
        except Exception as e:  # noqa: BLE001 - timing problems are reported, not parity failures
            report["errors"].append({"section": "timing", "error": f"{type(e).__name__}: {e}",
                                     "traceback": traceback.format_exc(limit=4)})
    report["backends_used"] = ops.backends_used()
    report["wall_s"] = round(time.time() - t_start, 1)
    failed = [p for p in report["parity"] if not p["pass"]]
    parity_errors = [e for e in report["errors"] if e["section"] != "timing"]
    report["ok"] = not failed and not parity_errors
    if failed or parity_errors:
        report["status"] = f"{len(failed)} parity checks failed, {len(parity_errors)} raised"
        code = 1
    elif report["missing"]:
        report["status"] = "parity passed, but kernels missing: " + ", ".join(sorted(set(report["missing"])))
        code = 3
    else:
        report["status"] = f"all {len(report['parity'])} parity checks passed"
        code = 0
    print(emit())
    return code


# ---------------------------------------------------------------------------------------------------
# inputs


def _linear_inputs(torch, op: str, b: int, t: int, h: int, d: int, dtype, seed: int = 0):
    import torch.nn.functional as F

    gen = torch.Generator(device=DEVICE).manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=gen, device=DEVICE)

    if op == "lightning_attention":
        from lmrepro.ops import lightning_decay_rates

        a = dict(q=r(b, t, h, d), k=r(b, t, h, d), v=r(b, t, h, d))
        params = dict(decay=lightning_decay_rates(h, 1, 4).to(DEVICE))
        pos = ("q", "k", "v", "decay")
    elif op == "mamba2_ssd":
        a = dict(x=r(b, t, h, d), dt=F.softplus(r(b, t, h) - 1), B=r(b, t, 1, d) * d ** -0.5,
                 C=r(b, t, 1, d) * d ** -0.5)
        params = dict(A=-torch.rand(h, generator=gen, device=DEVICE) - 0.05, D=r(h))
        pos = ("x", "dt", "A", "B", "C")
    else:
        a = dict(q=F.normalize(r(b, t, h, d), dim=-1), k=F.normalize(r(b, t, h, d), dim=-1), v=r(b, t, h, d),
                 g=F.logsigmoid(r(b, t, h) + 3), beta=torch.sigmoid(r(b, t, h)))
        params = {}
        pos = ("q", "k", "v", "g", "beta")
    # Activations in the test dtype; decays/gates are rounded the same way so both paths see equal inputs.
    a = {k: v.to(dtype) for k, v in a.items()}
    s0 = r(b, h, d, d) * 0.1
    return a, params, pos, s0


def _run_linear(ops, op, acts, params, pos, s0, backend, grad: bool):
    import torch

    fn = {"lightning_attention": ops.lightning_attention, "mamba2_ssd": ops.mamba2_ssd,
          "gated_delta_rule": ops.gated_delta_rule}[op]
    leaves = {k: v.detach().clone().requires_grad_(grad) for k, v in acts.items()}
    p = {k: v.detach().clone().requires_grad_(grad and k != "decay") for k, v in params.items()}
    s0 = s0.detach().clone().requires_grad_(grad)
    allargs = {**leaves, **p}
    o, s = fn(*[allargs[k] for k in pos], **{k: v for k, v in allargs.items() if k not in pos},
              initial_state=s0, output_final_state=True, backend=backend)
    out = {"o": o.detach().float(), "state": s.detach().float()}
    if grad:
        gen = torch.Generator(device=DEVICE).manual_seed(123)
        wo = torch.randn(o.shape, generator=gen, device=DEVICE)
        ws = torch.randn(s.shape, generator=gen, device=DEVICE)
        loss = (o.float() * wo).sum() + (s.float() * ws).sum()
        names = [*leaves, *[k for k in p if k != "decay"], "initial_state"]
        tensors = [*leaves.values(), *[v for k, v in p.items() if k != "decay"], s0]
        for name, g in zip(names, torch.autograd.grad(loss, tensors)):
            out["d" + name] = g.float()
    return out


def _cast_ref(torch, acts, params, s0):
    return ({k: v.float() for k, v in acts.items()}, {k: v.float() for k, v in params.items()}, s0.float())


def _record(report, check: dict, errs: dict, tol_out: float, tol_grad: float) -> None:
    worst_ok = all(e <= (tol_grad if k.startswith("d") else tol_out) for k, e in errs.items())
    check.update(rel_err={k: float(f"{e:.3g}") for k, e in errs.items()}, tol=[tol_out, tol_grad],
                 **{"pass": bool(worst_ok)})
    report["parity"].append(check)


def _linear_parity(torch, ops, report) -> None:
    for op in ("lightning_attention", "mamba2_ssd", "gated_delta_rule"):
        ok, reason = ops.backend_available(op, KERNEL, device=DEVICE)
        if not ok:
            report["missing"].append(f"{op}:{KERNEL} ({reason})")
            continue
        # 1) kernel vs the naive recurrence, fp32, short sequence.
        try:
            b, t, h, d = SHAPES["naive"]
            acts, params, pos, s0 = _linear_inputs(torch, op, b, t, h, d, torch.float32, seed=1)
            ref = _run_linear(ops, op, acts, params, pos, s0, "naive", grad=False)
            ker = _run_linear(ops, op, acts, params, pos, s0, KERNEL, grad=False)
            _record(report, {"op": op, "backend": KERNEL, "vs": "naive", "dtype": "float32", "T": t},
                    {k: rel(ker[k], ref[k]) for k in ref}, NAIVE_TOL, NAIVE_TOL)
        except Exception as e:  # noqa: BLE001
            report["errors"].append({"section": f"{op}/naive", "error": f"{type(e).__name__}: {e}",
                                     "traceback": traceback.format_exc(limit=6)})
        # 2) kernel vs chunked fp32, with gradients, fp32 and bf16.
        # Triton's interpreter keeps bfloat16 as raw uint16 bits (see lmrepro.ops.triton_interpreter).
        for dtype in (torch.float32,) if DEVICE == "cpu" else (torch.float32, torch.bfloat16):
            name = str(dtype).split(".")[-1]
            try:
                b, t, h, d = SHAPES["chunked"]
                acts, params, pos, s0 = _linear_inputs(torch, op, b, t, h, d, dtype, seed=2)
                ref = _run_linear(ops, op, *_cast_ref(torch, acts, params, s0)[:2], pos, s0, "chunked", grad=True)
                ker = _run_linear(ops, op, acts, params, pos, s0, KERNEL, grad=True)
                _record(report, {"op": op, "backend": KERNEL, "vs": "chunked", "dtype": name, "T": t},
                        {k: rel(ker[k], ref[k]) for k in ref}, *TOL[name])
            except Exception as e:  # noqa: BLE001
                report["errors"].append({"section": f"{op}/{name}", "error": f"{type(e).__name__}: {e}",
                                         "traceback": traceback.format_exc(limit=6)})


def _attention_parity(torch, ops, report) -> None:
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    tk, hq, hkv, d = SHAPES["attention_tk"], 8, 2, 64
    cases = [(tk, None, 0), (tk, 128, 0), (tk, 128, 4), (1, 128, 4), (16, None, 0)]
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).split(".")[-1]
        # On CPU only sdpa has a backward; flex and flash are GPU paths.
        for backend in ("sdpa", "flex", "flash") if DEVICE == "cuda" else ("sdpa",):
            for tq, window, sinks in cases:
                ok, reason = ops.backend_available("attention", backend, device=DEVICE, dtype=dtype, sinks=sinks,
                                                   requires_grad=True)
                if not ok:
                    miss = f"attention:{backend} ({reason})"
                    if backend != "flash" or (dtype == torch.bfloat16 and not sinks):
                        if miss not in report["missing"]:
                            report["missing"].append(miss)
                    continue
                check = {"op": "attention", "backend": backend, "vs": "naive", "dtype": name,
                         "Tq": tq, "Tk": tk, "window": window, "sinks": sinks}
                try:
                    q = torch.randn(2, tq, hq, d, generator=gen, device=DEVICE).to(dtype)
                    k = torch.randn(2, tk, hkv, d, generator=gen, device=DEVICE).to(dtype)
                    v = torch.randn(2, tk, hkv, d, generator=gen, device=DEVICE).to(dtype)
                    w = torch.randn(2, tq, hq, d, generator=gen, device=DEVICE)
                    res = {}
                    for bk, cast in (("naive", torch.float32), (backend, dtype)):
                        leaves = [x.detach().to(cast).requires_grad_(True) for x in (q, k, v)]
                        o = ops.attention(*leaves, window=window, sinks=sinks, backend=bk)
                        grads = torch.autograd.grad((o.float() * w).sum(), leaves)
                        res[bk] = {"o": o.float(), "dq": grads[0].float(), "dk": grads[1].float(),
                                   "dv": grads[2].float()}
                    _record(report, check, {kk: rel(res[backend][kk], res["naive"][kk]) for kk in res["naive"]},
                            *TOL[name])
                except Exception as e:  # noqa: BLE001
                    report["errors"].append({"section": f"attention/{backend}/{name}/{tq}/{window}/{sinks}",
                                             "error": f"{type(e).__name__}: {e}",
                                             "traceback": traceback.format_exc(limit=6)})


def _model_parity(torch, ops, report) -> None:
    """Whole hybrid models (laptop size s1, fp32): logits and parameter gradients with every linear op
    on the kernel path vs on the chunked path, so the mixers' glue around the ops is covered too."""
    from lmrepro.config import load_config
    from lmrepro.models import DecoderLM
    from lmrepro.papers.hybrid_attention.runs import arch_spec

    if not ops.backend_available("gated_delta_rule", KERNEL, device=DEVICE)[0]:
        return  # already listed as missing by the op checks
    cfg = load_config(ROOT / "params.yaml", profile="laptop")
    t = 100 if DEVICE == "cpu" else 1000
    for arch in ("lightning", "mamba2", "gdn"):
        try:
            torch.manual_seed(0)
            model = DecoderLM(arch_spec(cfg, arch, "s1")).to(DEVICE)
            x = torch.randint(0, model.spec.vocab_size, (2, t), device=DEVICE)
            res = {}
            for backend in ("chunked", KERNEL):
                model.zero_grad(set_to_none=True)
                with ops.force_backend(backend):
                    logits = model(x)
                logits.float().square().mean().backward()
                res[backend] = {"logits": logits.detach().float(),
                                "grads": torch.cat([p.grad.flatten() for p in model.parameters()
                                                    if p.grad is not None])}
            _record(report, {"op": f"model:{arch}", "backend": KERNEL, "vs": "chunked", "dtype": "float32", "T": t},
                    {"logits": rel(res[KERNEL]["logits"], res["chunked"]["logits"]),
                     "dparams": rel(res[KERNEL]["grads"], res["chunked"]["grads"])}, *TOL["float32"])
        except Exception as e:  # noqa: BLE001
            report["errors"].append({"section": f"model/{arch}", "error": f"{type(e).__name__}: {e}",
                                     "traceback": traceback.format_exc(limit=6)})


# ---------------------------------------------------------------------------------------------------
# timing


def _time(torch, fn, warmup: int = 2, iters: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _timing(torch, ops, report, t: int) -> None:
    b, h, d = 1, 8, 128
    for op in ("lightning_attention", "mamba2_ssd", "gated_delta_rule"):
        acts, params, pos, s0 = _linear_inputs(torch, op, b, t, h, d, torch.bfloat16, seed=3)
        for backend in dict.fromkeys((KERNEL, "chunked")):
            if not ops.backend_available(op, backend, device=DEVICE)[0]:
                continue
            entry = {"op": op, "backend": backend, "T": t, "B": b, "H": h, "K": d, "V": d, "dtype": "bfloat16"}
            try:
                entry["fwd_s"] = round(_time(torch, lambda: _run_linear(ops, op, acts, params, pos, s0, backend,
                                                                        grad=False)), 5)
                entry["fwd_bwd_s"] = round(_time(torch, lambda: _run_linear(ops, op, acts, params, pos, s0,
                                                                            backend, grad=True)), 5)
                entry["tokens_per_s_fwd_bwd"] = round(b * t / entry["fwd_bwd_s"])
            except Exception as e:  # noqa: BLE001 - e.g. out of memory for the chunked path
                entry["error"] = f"{type(e).__name__}: {e}"
            report["timing"].append(entry)

    hq, hkv = 16, 4
    q = torch.randn(b, t, hq, d, device=DEVICE, dtype=torch.bfloat16)
    k = torch.randn(b, t, hkv, d, device=DEVICE, dtype=torch.bfloat16)
    v = torch.randn(b, t, hkv, d, device=DEVICE, dtype=torch.bfloat16)
    for window, sinks in ((None, 0), (128, 0), (128, 4), (2048, 0)):
        for backend in ("flash", "flex", "sdpa"):
            if backend == "flex" and window is None:
                continue  # full causal: flash/sdpa are the paths used; spare a flex compilation
            if not ops.backend_available("attention", backend, device=DEVICE, dtype=q.dtype, sinks=sinks,
                                         requires_grad=True)[0]:
                continue
            entry = {"op": "attention", "backend": backend, "T": t, "Hq": hq, "Hkv": hkv, "D": d,
                     "window": window, "sinks": sinks, "dtype": "bfloat16"}

            def fwd(grad=False, backend=backend, window=window, sinks=sinks):
                leaves = [x.detach().requires_grad_(grad) for x in (q, k, v)]
                o = ops.attention(*leaves, window=window, sinks=sinks, backend=backend)
                if grad:
                    o.sum().backward()

            try:
                entry["fwd_s"] = round(_time(torch, fwd), 5)
                entry["fwd_bwd_s"] = round(_time(torch, lambda: fwd(True)), 5)
            except Exception as e:  # noqa: BLE001 - e.g. the dense sdpa mask at long context
                entry["error"] = f"{type(e).__name__}: {e}"
            report["timing"].append(entry)


if __name__ == "__main__":
    sys.exit(main())
