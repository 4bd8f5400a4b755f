"""The GPU environments, validated offline (no registry or GPU here): the Docker image installs the lock's pins on
NVIDIA's PyTorch base without replacing its torch, and `make setup` inside it (or inside the environment.yml conda
environment) adds only the project — real `make --dry-run`, no CPU .venv, no torch install."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _dry_setup(**env) -> str:
    import os

    base = {k: v for k, v in os.environ.items() if k not in ("LMREPRO_ENV", "CONDA_DEFAULT_ENV", "CONDA_PREFIX")}
    out = subprocess.run(["make", "--dry-run", "--always-make", "setup"], cwd=ROOT, env={**base, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout


def test_image_is_built_on_nvidia_pytorch_with_the_locked_pins_but_its_own_torch():
    assert re.search(r"^ARG BASE=nvcr\.io/nvidia/pytorch:[\d.]+-py3$", DOCKERFILE, re.M)
    assert "FROM ${BASE}" in DOCKERFILE
    pattern = re.search(r"grep -v -E '(.+?)' requirements/lock.txt", DOCKERFILE).group(1)
    lock = [ln for ln in (ROOT / "requirements/lock.txt").read_text().splitlines() if "==" in ln]
    dropped = [ln.split("==")[0] for ln in lock if re.match(pattern, ln)]
    assert dropped == ["torch", "triton"]  # everything else, fla included, at the locked version
    assert any(ln.startswith("flash-linear-attention==") for ln in lock)
    assert "venv --system-site-packages ${LMREPRO_ENV}" in DOCKERFILE  # the base image's torch stays visible
    assert re.search(r"^ENV LMREPRO_ENV=", DOCKERFILE, re.M) and "RUN make setup" in DOCKERFILE


def test_dockerignore_keeps_local_environments_and_data_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "data", "dvc_plots"} <= set(ignored)


def test_setup_in_a_prepared_environment_installs_only_the_project():
    for env in ({"LMREPRO_ENV": "/opt/env"}, {"CONDA_DEFAULT_ENV": "lmrepro", "CONDA_PREFIX": "/opt/env"}):
        plan = _dry_setup(**env)
        assert "/opt/env/bin/python -m pip install --quiet --no-deps -e ." in plan
        assert "venv" not in plan.replace(".venv", "") and "torch==" not in plan
        assert "/opt/env/bin/python -m lmrepro.jupyter install" in plan


def test_setup_elsewhere_builds_the_cpu_venv():
    for env in ({}, {"CONDA_DEFAULT_ENV": "base", "CONDA_PREFIX": "/opt/conda"}):  # conda's base is not ours
        plan = _dry_setup(**env)
        assert f"-m venv {ROOT}/.venv" in plan and "pip install --quiet torch==2.13.0" in plan
