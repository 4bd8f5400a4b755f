"""Stage timing: run_notebook records wall and CPU time in the executed notebook; stage_times reads every stage's
executed notebook through the lock files (real papermill, real lock files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import tool_env

from lmrepro import stage_times, yaml12
from lmrepro.notebooks import KERNELSPEC

ROOT = Path(__file__).resolve().parents[1]
BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5:\n    sum(range(1000))"


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> Path:
    """A two-cell notebook (parameters, then 1.5 s of CPU on one core) run as a stage command runs it."""
    folder = tmp_path_factory.mktemp("stage")
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})
    nb.cells = [nbformat.v4.new_code_cell("profile = None", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("from lmrepro import paths  # stands in for setup(...)"),
                nbformat.v4.new_code_cell(BURN)]
    source, out = folder / "burn.ipynb", folder / "results" / "burn-executed.ipynb"
    out.parent.mkdir()
    nbformat.write(nb, str(source))
    done = subprocess.run([sys.executable, "-m", "lmrepro.run_notebook", str(source), str(out), "-p", "profile", "x"],
                          capture_output=True, text=True, env=tool_env(), timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out


def test_run_notebook_records_wall_and_cpu_time(executed):
    res = nbformat.read(str(executed), as_version=4).metadata["lmrepro"]["resources"]
    assert res["cores"] == os.cpu_count()
    assert res["cpu_s"] >= 1.4  # the kernel's busy loop is counted (papermill reaps the kernel)
    assert res["wall_s"] >= 1.5 and res["cpu_s"] <= res["wall_s"] * res["cores"] + 1


def test_stage_times_reads_stages_through_the_lock(executed):
    root = executed.parent.parent
    (root / "dvc.lock").write_text(yaml12.dumps({"schema": "2.0", "stages": {"burn": {"cmd": "x", "outs": [
        {"path": "results/burn-executed.ipynb", "hash": "md5", "md5": "0", "size": 1}]}}}))
    out = stage_times.collect(root)
    (row,) = out["stages"]
    nb = nbformat.read(str(executed), as_version=4)
    cells = [c.metadata["papermill"]["duration"] for c in nb.cells]
    assert row["stage"] == "burn" and row["lock"] == "dvc.lock"
    assert row["wall_s"] == pytest.approx(nb.metadata["papermill"]["duration"], abs=0.01)
    assert row["cells_s"] == pytest.approx(sum(cells), abs=0.01) and row["cells_s"] >= 1.5
    # Through the cell standing in for setup( (papermill inserted its injected-parameters cell before it).
    setup = next(i for i, c in enumerate(nb.cells) if "stands in for setup(" in c.source)
    assert setup == 2 and row["setup_s"] == pytest.approx(sum(cells[:setup + 1]), abs=0.01)
    res = nb.metadata["lmrepro"]["resources"]
    assert row["cpu_utilization"] == pytest.approx(res["cpu_s"] / res["wall_s"] / res["cores"], abs=1e-3)
    assert out["wall_s_by_lock"] == {"dvc.lock": row["wall_s"]} and out["stages_with_cpu"] == 1


def test_every_committed_stage_notebook_is_found():
    expected = {p for p in stage_times.notebook_stages(ROOT)}
    out = stage_times.collect(ROOT)
    assert len(out["stages"]) == len(expected) >= 30
    assert {r["stage"] for r in out["stages"]} >= {"foundation-pretrain", "pretrain@full", "report"}
    assert json.loads(json.dumps(out)) == out  # plain JSON
