"""Committed notebooks are clean (no outputs, stable metadata, one parameters cell) and thin."""

from pathlib import Path

import nbformat
import pytest

from lmrepro import notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_notebook_is_clean(path):
    assert notebooks.problems(path) == []


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
