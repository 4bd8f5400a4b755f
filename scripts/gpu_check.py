#!/usr/bin/env python
"""The one prepared GPU check (≤ 8 minutes on one H200): op parity + op timing, then model throughput.

    PYTHONPATH=src:vendor python scripts/gpu_check.py [--quick] [--json-out gpu_check.json]

1. ``scripts/gpu_check_ops.py``: every op's kernel path (fla, flash-attn, FlexAttention) against the
   naive / chunked references, fp32 and bf16, outputs and gradients; op timing at 16K.
2. Training throughput (forward + backward, bf16 autocast) of every hybrid-attention architecture at
   the paper profile's sizes S1–S3 and 16K context, batch 1: tokens/s and MFU (model FLOPs per token
   6·N + attention 12·L_attn·T_eff·d, against the device's bf16 dense peak).
3. The pipelines' real training path (``lmrepro.probe``): every training entry at every paper-profile size
   (foundation, ><former X 200M–2B, hybrid ``full`` S1–S5; smallest first while ``TRAIN_BUDGET_S`` lasts) through
   the Trainer under accelerate with the configured micro-batch and loss chunking, two steps with a checkpoint
   and a resume: peak GPU memory per size (on every GPU: 2 processes through ``lmrepro.launch`` when 2 GPUs
   exist), and that the resume continued at step 1. An out-of-memory size is reported, not fatal. Then that the
   launch's job pickler brings a model on the GPU back on the CPU, tied weights tied (``launch_pickle``).
Prints one JSON object; exit status 1 when a parity check fails, an architecture fails to train or a trainer
probe fails otherwise than by running out of memory, 2 without CUDA. ``--interpret`` runs on CPU: part 1 with
fla's kernels in Triton's interpreter (fp32, small shapes, see ``gpu_check_ops.py``), parts 2 and 3 at the smoke
profile's sizes to exercise this script; it measures nothing GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPS_TIMEOUT_S = 360  # of the 8-minute budget; the throughput part and the trainer probes need the rest
TRAIN_BUDGET_S = 120  # part 3 starts no new size after this long (a 2B probe writes ~30 GB of checkpoint)
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def model_flops_per_token(model, seq_len: int) -> float:
    """6·N (dense matmuls, forward + backward) + 12·d·T_eff per attention layer (scores and values), where
    T_eff is the mean number of keys a query sees: T/2 causal, W with a window (linear mixers: not counted)."""
    n = model.num_parameters() - model.embed_tokens.weight.numel()
    attn = 0.0
    for block in model.layers:
        if block.layer.mixer == "attention":
            keys = seq_len / 2 if block.layer.window is None else min(block.layer.window, seq_len)
            attn += 12 * model.spec.hidden_size * keys
    return 6 * n + attn


def throughput(arch: str, size: str, seq_len: int, device: str, steps: int = 3) -> dict:
    import torch

    from lmrepro.config import load_config
    from lmrepro.models import DecoderLM
    from lmrepro.papers.hybrid_attention.runs import arch_spec

    cfg = load_config(ROOT / "params.yaml", profile="paper")
    torch.manual_seed(0)
    model = DecoderLM(arch_spec(cfg, arch, size)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    x = torch.randint(0, model.spec.vocab_size, (1, seq_len + 1), device=device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    times = []
    for i in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            logits = model(x[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    step = sorted(times)[len(times) // 2]
    tokens_per_s = seq_len / step
    out = {"arch": arch, "size": size, "seq_len": seq_len, "parameters": model.num_parameters(),
           "tokens_per_s": round(tokens_per_s, 1), "step_s": round(step, 4)}
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        out["mfu"] = round(model_flops_per_token(model, seq_len) * tokens_per_s / peak, 4) if peak else None
        out["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    return out


def trainer_probes(profile: str, quick: bool, budget_s: float) -> list[dict]:
    """Part 3: :func:`lmrepro.probe.probe` of every entry and size, fewest parameters first, on every
    GPU (one process per GPU; one process on CPU), then with 2 GPUs the largest size sharded (FSDP), until
    ``budget_s`` has passed."""
    import torch

    from lmrepro.config import LaunchConfig, load_config
    from lmrepro.launch import call
    from lmrepro.models import DecoderLM
    from lmrepro.probe import entries, entry_model, probe

    cfg = load_config(ROOT / "params.yaml", profile=profile)
    jobs = entries(cfg)
    if quick:  # the smallest size of each entry
        jobs = [j for i, j in enumerate(jobs) if all(j[0] != k[0] for k in jobs[:i])]
    with torch.device("meta"):
        size = {job: DecoderLM(entry_model(cfg, *job)[0]).num_parameters() for job in jobs}
    launch = LaunchConfig(processes=min(2, max(1, torch.cuda.device_count())), machines=1)
    order = sorted(jobs, key=size.get)
    # With 2 GPUs the largest size also runs sharded (launch.strategy fsdp): its memory per GPU beside DDP's.
    runs = [(job, launch) for job in order]
    if launch.processes == 2:
        runs.append((order[-1], LaunchConfig(processes=2, machines=1, strategy="fsdp")))
    out, start = [], time.perf_counter()
    for job, how in runs:
        if time.perf_counter() - start > budget_s:
            out.append({"entry": job[0], "size": job[1], "strategy": how.strategy,
                        "skipped": f"time budget of {budget_s:.0f} s spent"})
            continue
        try:
            out.append({**call(probe, (cfg,), job, how), "strategy": how.strategy})
        except Exception as err:  # noqa: BLE001 — report and go on: one size must not hide the others
            oom = "out of memory" in str(err).lower()
            out.append({"entry": job[0], "size": job[1], "parameters": size[job], "strategy": how.strategy,
                        "out_of_memory" if oom else "error": repr(err)[:500]})
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return out


def launch_pickle_check(device: str) -> dict:
    """A tied-embedding model on ``device`` through the launch's job pickler (lmrepro.launch.HostPickler): every
    tensor comes back on the CPU, parameters stay parameters, the tie survives, the values are equal."""
    import io
    import pickle

    import torch

    from lmrepro.launch import HostPickler
    from lmrepro.models import DecoderLM, LMSpec

    spec = LMSpec(vocab_size=512, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=128,
                  max_seq_len=64, tie_embeddings=True)
    model = DecoderLM(spec).to(device)
    buf = io.BytesIO()
    HostPickler(buf).dump(model)
    back = pickle.loads(buf.getvalue())
    params = dict(back.named_parameters(remove_duplicate=False))
    ok = {"all_on_cpu": all(t.device.type == "cpu" for t in back.state_dict().values()),
          "parameters_stay_parameters": all(isinstance(p, torch.nn.Parameter) for p in params.values()),
          "tie_kept": back.lm_head.weight is back.embed_tokens.weight,
          "values_equal": all(torch.equal(a.cpu(), b) for a, b in zip(model.state_dict().values(),
                                                                      back.state_dict().values()))}
    return {"device": device, **ok, "ok": all(ok.values())}


def run_ops_check(flags: list[str], timeout_s: float) -> tuple[dict, int]:
    """Run gpu_check_ops.py → (its JSON report, exit status). Past ``timeout_s`` the child is stopped and the
    sections it finished (it rewrites its --json-out file after each) are returned with exit status 1."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ops.json"
        cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check_ops.py"), *flags, "--json-out", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            partial = json.loads(out.read_text()) if out.is_file() else {}
            partial["status"] = f"timed out after {timeout_s:.0f} s; sections finished before that are kept"
            return partial, 1
        try:
            return json.loads(proc.stdout), proc.returncode
        except json.JSONDecodeError:
            return {"stdout": proc.stdout[-3000:], "stderr": proc.stderr[-3000:]}, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="parity only for the ops, S1 only for throughput")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--interpret", action="store_true",
                        help="no GPU: the op checks with fla's kernels in Triton's interpreter (fp32, small shapes), "
                             "and this script's throughput code on CPU at 64 tokens; no GPU numbers")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from lmrepro.papers.hybrid_attention.config import ARCHITECTURES

    if args.interpret:
        device, seq_len, sizes, archs, steps = "cpu", 64, ["s1"], ("full", "gdn"), 1
        ops_flags = ["--interpret"]
    elif not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device: nothing checked (use --interpret on CPU)"}))
        return 2
    else:
        device, seq_len, archs, steps = "cuda", 16384, ARCHITECTURES, 3
        sizes = ["s1"] if args.quick else ["s1", "s2", "s3"]
        ops_flags = ["--quick"] if args.quick else []
    report: dict = {"ops": None, "throughput": [], "trainer": []}
    report["ops"], report["ops_exit"] = run_ops_check(ops_flags, timeout_s=OPS_TIMEOUT_S)
    for size in sizes:
        for arch in archs:
            try:
                report["throughput"].append(throughput(arch, size, seq_len, device, steps=steps))
            except Exception as err:  # report and continue: one failing kernel must not hide the others
                report["throughput"].append({"arch": arch, "size": size, "error": repr(err)[:500]})
    report["trainer"] = trainer_probes("smoke" if args.interpret else "paper", args.quick, TRAIN_BUDGET_S)
    report["launch_pickle"] = launch_pickle_check(device)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    failed = any("error" in t for t in report["throughput"] + report["trainer"]) or not report["launch_pickle"]["ok"]
    return 1 if report["ops_exit"] == 1 or failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
