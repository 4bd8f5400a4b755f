"""environment.yml (conda, GPU machines) must list the same packages as pyproject.toml."""

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
    for extra in ("gpu", "dev"):
        reqs += project["optional-dependencies"][extra]
    return {_name(r): r.replace(" ", "") for r in reqs}


def _conda_pip() -> dict[str, str]:
    env = yaml12.loads((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {_name(r): r.replace(" ", "") for r in pip}


def test_environment_lists_the_pyproject_packages():
    assert _conda_pip().keys() == _pyproject().keys()


def test_environment_uses_the_pyproject_version_specifiers():
    conda, pyproject = _conda_pip(), _pyproject()
    assert {k: conda[k] for k in conda} == {k: pyproject[k] for k in conda}


def test_torch_is_pinned_exactly_everywhere():
    # An unpinned torch pulls a multi-GB CUDA build on the CPU machines.
    assert _pyproject()["torch"] == "torch==2.13.0"
    lock = (ROOT / "requirements" / "lock.txt").read_text().splitlines()
    assert "torch==2.13.0" in lock
