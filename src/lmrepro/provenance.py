"""What produced a result: resolved config, git commit, library versions, device, seed, op backends."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

LIBRARIES = (
    "torch", "triton", "accelerate", "transformers", "peft", "tokenizers", "datasets", "safetensors",
    "numpy", "scipy", "scikit-learn", "papermill", "dvc", "flash-linear-attention", "flash-attn",
)


def git_commit(cwd: str | Path | None = None) -> dict[str, Any]:
    def run(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)

    try:
        head = run("rev-parse", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    commit = head.stdout.strip() if head.returncode == 0 else None
    return {"commit": commit, "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def library_versions() -> dict[str, str | None]:
    out = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str | None:
    """The CPU's marketing name (Linux ``/proc/cpuinfo``), None elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def device_info() -> dict[str, Any]:
    """Where a run computed. ``cpu_capability`` is the SIMD path torch's CPU kernels take (e.g. AVX512, AVX2; the
    ``ATEN_CPU_CAPABILITY`` variable lowers it): runs agree bit for bit only on the same model and path."""
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def op_backends() -> dict[str, str]:
    """Backends chosen by ``lmrepro.ops`` dispatch so far in this process."""
    try:
        from .ops.dispatch import backends_used
    except ImportError:
        return {}
    return dict(backends_used())


def collect(config: Any = None, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "seed": seed,
        "git": git_commit(Path(__file__).resolve().parent),
        "libraries": library_versions(),
        "device": device_info(),
        "op_backends": op_backends(),
        **extra,
    }


def write(path: str | Path, record: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    return path
