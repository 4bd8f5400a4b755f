"""environment.yml (conda, GPU machines) must list the packages of pyproject.toml at the locked versions."""

import re
import tomllib
from pathlib import Path

from lmrepro import yaml12

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("pipeline", "lora", "gpu", "dev"):
        reqs += project["optional-dependencies"][extra]
    return {_name(r): r.replace(" ", "") for r in reqs}


def _conda_pip() -> dict[str, str]:
    env = yaml12.loads((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {_name(r): r.replace(" ", "") for r in pip}


def _lock() -> dict[str, str]:
    lines = (ROOT / "requirements" / "lock.txt").read_text().splitlines()
    return {_name(line): line.split(";")[0].strip() for line in lines if "==" in line and not line.startswith("#")}


# Not installable by pip inside `conda env create` (a source distribution whose build imports torch); optional,
# the attention op falls back to FlexAttention / SDPA and logs it. environment.yml says how to add it.
OPTIONAL_GPU = {"flash-attn"}


def test_environment_lists_the_pyproject_packages():
    assert _conda_pip().keys() == _pyproject().keys() - OPTIONAL_GPU


def test_environment_pins_the_locked_versions():
    # The GPU machines get exactly the versions the CPU suite was tested with.
    lock = _lock()
    pins = {name: re.sub(r"\[[^\]]*\]", "", req) for name, req in _conda_pip().items()}  # moto[server] → moto
    assert pins == {name: lock[name] for name in pins}


def test_torch_is_pinned_exactly_everywhere():
    # An unpinned torch pulls a multi-GB CUDA build on the CPU machines.
    assert _pyproject()["torch"] == "torch==2.13.0"
    lock = (ROOT / "requirements" / "lock.txt").read_text().splitlines()
    assert "torch==2.13.0" in lock
