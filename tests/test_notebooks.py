"""Committed notebooks are clean (no outputs, stable metadata, one parameters cell) and thin; the git filter keeps
them clean when JupyterLab saves outputs into them."""

import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from lmrepro import notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4


def _git(*args, cwd=ROOT, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=check,
                          capture_output=True, text=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_notebook_is_clean(path):
    """What git holds at HEAD, not the working file (which a Lab session may have saved outputs into)."""
    blob = _git("show", f"HEAD:{path.relative_to(ROOT)}", check=False)
    if blob.returncode:
        pytest.skip(f"not committed yet or not a git checkout: {blob.stderr.strip()}")
    assert notebooks.problems(path, blob.stdout) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_as_git_would_store_it_is_clean(path):
    """The working file through the clean filter: what the next commit stores (catches e.g. a lost parameters tag)."""
    assert notebooks.problems(path, notebooks.cleaned(path.read_text())) == []


def test_notebooks_carry_the_clean_filter_attribute():
    out = _git("check-attr", "filter", "--", *[str(p.relative_to(ROOT)) for p in NOTEBOOKS]).stdout
    assert out.count(f"filter: {notebooks.GIT_FILTER}") == len(NOTEBOOKS), out


def test_git_filter_keeps_status_clean_after_outputs_are_saved(tmp_path):
    """The real git with the filter ``make setup`` installs: a notebook saved with outputs by a frontend that does not
    go through the project's Jupyter server (e.g. VS Code) shows no diff, and adding it stages nothing; an edit to its
    source still shows. (Before ``git add`` git's status may list it, because the file's size changed: git compares
    sizes before content; JupyterLab on the project's server saves the clean form itself, tests/test_browser.py.)"""
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / ".gitattributes", repo)
    nb_path = repo / "notebooks" / "report.ipynb"
    shutil.copy(ROOT / "notebooks" / "foundation" / "04_report.ipynb", nb_path)
    _git("init", "-q", cwd=repo)
    notebooks.install_filter(repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-qm", "clean", cwd=repo)

    nb = nbformat.read(str(nb_path), as_version=4)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = i + 1
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"out {i}\n")]
        cell.metadata["execution"] = {"iopub.status.idle": "2026-12-06T00:00:00Z"}
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.2", "mimetype": "text/x-python"}
    nbformat.write(nb, str(nb_path))
    assert _git("diff", "--exit-code", cwd=repo, check=False).returncode == 0
    _git("add", "-A", cwd=repo)
    assert _git("status", "--porcelain", cwd=repo).stdout == ""
    assert _git("show", "HEAD:notebooks/report.ipynb", cwd=repo).stdout == notebooks.cleaned(nb_path.read_text())

    nb.cells[1].source += "\n# an edit"
    nbformat.write(nb, str(nb_path))
    assert _git("status", "--porcelain", cwd=repo).stdout.strip() == "M notebooks/report.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_parameters_cell_declares_profile(path):
    nb = nbformat.read(str(path), as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert "profile = None" in cell.source


def test_clean_strips_outputs_and_is_idempotent(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"state": {}}
    params = nbformat.v4.new_code_cell("profile = None")
    params.metadata["tags"] = ["parameters"]
    code = nbformat.v4.new_code_cell("1 + 1", execution_count=3,
                                     outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "2"})])
    code.metadata["collapsed"] = True
    nb.cells = [params, code]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, str(path))
    assert notebooks.problems(path)  # dirty before
    assert notebooks.clean(path) is True
    assert notebooks.problems(path) == []
    assert notebooks.clean(path) is False  # nothing left to change
