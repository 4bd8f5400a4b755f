"""The prepared GPU check, run on CPU: fla's real Triton kernels executed by Triton's interpreter
(``--interpret``) must match our naive recurrences and chunked paths, op by op and as whole models.

The scripts run in subprocesses because ``TRITON_INTERPRET`` only takes effect for kernels defined
after it is set, and this test process has already imported fla (its naive ops are test oracles).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmrepro.ops import backend_available, select_backend
from lmrepro.ops import triton_interpreter

ROOT = Path(__file__).resolve().parents[1]
LINEAR_OPS = ("lightning_attention", "mamba2_ssd", "gated_delta_rule")


def run_script(name: str, *args: str) -> tuple[int, dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=ROOT)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def interpret_report():
    pytest.importorskip("fla")
    return run_script("gpu_check_ops.py", "--interpret")


def test_fla_kernels_in_interpreter_match_references(interpret_report):
    code, report = interpret_report
    failed = [p for p in report["parity"] if not p["pass"]]
    assert code == 0 and report["ok"] and not failed and not report["errors"], (failed, report["errors"])
    assert report["interpret"] and report["device"].startswith("cpu")
    for op in LINEAR_OPS:
        checks = {(p["vs"], p["dtype"]) for p in report["parity"] if p["op"] == op and p["backend"] == "fla"}
        assert checks == {("naive", "float32"), ("chunked", "float32")}, op
        assert "fla" in report["backends_used"][op].split(",")  # the kernel really ran, not a fallback
    grads = next(p for p in report["parity"] if p["op"] == "gated_delta_rule" and p["vs"] == "chunked")
    assert {"dq", "dk", "dv", "dg", "dbeta", "dinitial_state"} <= set(grads["rel_err"])
    # fp32 in the interpreter is exact arithmetic: the 1e-5 target, not the GPU's tf32 tolerance.
    assert all(p["tol"][0] <= 1e-5 for p in report["parity"] if p["backend"] == "fla")


def test_whole_models_on_the_kernel_path_match_the_chunked_path(interpret_report):
    _, report = interpret_report
    models = {p["op"]: p for p in report["parity"] if p["op"].startswith("model:")}
    assert set(models) == {"model:lightning", "model:mamba2", "model:gdn"}
    for check in models.values():
        assert check["pass"] and set(check["rel_err"]) == {"logits", "dparams"}
        assert check["rel_err"]["logits"] <= 1e-5 and check["rel_err"]["dparams"] <= 5e-5


def test_gpu_check_interpret_runs_ops_and_throughput_plumbing():
    pytest.importorskip("fla")
    code, report = run_script("gpu_check.py", "--interpret")
    assert code == 0 and report["ops_exit"] == 0 and report["ops"]["ok"], json.dumps(report)[-3000:]
    assert [t["arch"] for t in report["throughput"]] == ["full", "gdn"]
    for entry in report["throughput"]:
        assert entry["tokens_per_s"] > 0 and entry["parameters"] > 1e6 and "mfu" not in entry  # no GPU, no MFU
    # part 3: every training entry at every smoke size through the Trainer, fewest parameters first, resumed
    probes = report["trainer"]
    assert {(t["entry"], t["size"]) for t in probes} == {("foundation", "baseline"), ("xformer", "s1"),
                                                          ("xformer", "s2"), ("xformer", "s3"),
                                                          ("hybrid_attention", "s1"), ("hybrid_attention", "s2")}
    assert [t["parameters"] for t in probes] == sorted(t["parameters"] for t in probes)
    for t in probes:
        assert (t["resumed_from_step"], t["steps"], t["completed"], t["processes"]) == (1, 2, True, 1), t
        assert "peak_memory_gib" not in t  # no GPU, no GPU memory
    assert report["launch_pickle"] == {"device": "cpu", "all_on_cpu": True, "parameters_stay_parameters": True,
                                       "tie_kept": True, "values_equal": True, "ok": True}


def test_gpu_check_without_cuda_says_so():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would run the real check")
    code, report = run_script("gpu_check.py")
    assert code == 2 and "no CUDA device" in report["error"]


def test_fla_on_cpu_needs_the_interpreter(monkeypatch):
    pytest.importorskip("fla")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, reason = backend_available("gated_delta_rule", "fla", device="cpu")
    assert not ok and "TRITON_INTERPRET=1" in reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ok, reason = backend_available("gated_delta_rule", "fla", device="cpu")
    assert ok and "interpreter" in reason
    # Never automatic: the chunked path stays the CPU default even with the interpreter on.
    assert select_backend("gated_delta_rule", device="cpu") == "chunked"


def test_enable_refuses_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(triton_interpreter, "_enabled", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        triton_interpreter.enable()


def test_ops_check_past_its_time_limit_reports_instead_of_crashing():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    report, code = gpu_check.run_ops_check(["--interpret"], timeout_s=2)
    assert code == 1 and report["status"].startswith("timed out after 2 s")
