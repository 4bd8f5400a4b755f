"""The real pipeline: `dvc repro` + papermill on the smoke profile, in a temporary copy of the repo."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lmrepro import yaml12

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: int = 2400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd / "src"),
           "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _set_params(repo: Path, edit, name: str = "params.yaml") -> None:
    """Edit params.yaml, or a profile file (``name="profiles/smoke.yaml"``), as data."""
    params = yaml12.loads((repo / name).read_text())
    edit(params)
    (repo / name).write_text(yaml12.dumps(params))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """Tracked (and untracked, not ignored) files of this checkout, as a fresh git repo on the smoke profile."""
    dest = tmp_path_factory.mktemp("e2e") / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    _set_params(dest, lambda p: p.update(profile="smoke"))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    out = _run(["dvc", "repro"], dest)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    return dest


def test_repro_produces_metrics_figures_and_notebooks(repo):
    metrics = json.loads((repo / "results/foundation/metrics.json").read_text())
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values())
    # A trained model beats the uniform distribution over the vocabulary by a clear margin.
    vocab = yaml12.loads((repo / "profiles/smoke.yaml").read_text())["tokenizer"]["vocab_size"]
    assert metrics["val_loss"] < math.log(vocab) - 0.3
    for fig in ("training_curve", "loss_by_position", "budget_losses"):
        assert (repo / f"results/foundation/figures/{fig}.png").stat().st_size > 1000
    for nb in ("01_prepare_data", "02_pretrain", "03_evaluate", "04_report"):
        executed = json.loads((repo / f"results/foundation/notebooks/{nb}.ipynb").read_text())
        assert executed["metadata"]["papermill"]["parameters"]["profile"] == "smoke"
    # Executed notebooks are committed: they print paths relative to the project, never this machine's folders.
    printed = [nb.relative_to(repo) for nb in repo.glob("results/**/*.ipynb") if str(repo) in nb.read_text()]
    assert printed == []
    # Committed notebooks are never executed in place.
    assert _run([sys.executable, "-m", "lmrepro.notebooks", "check", "notebooks"], repo).returncode == 0
    provenance = json.loads((repo / "results/foundation/provenance/pretrain_baseline.json").read_text())
    assert provenance["config"]["profile"] == "smoke" and provenance["libraries"]["torch"]
    # The SIMD path the stage's kernels took (what decides bit-identity across machines).
    assert provenance["device"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert (repo / "dvc.lock").is_file()


def test_dvc_metrics_and_plots_are_declared(repo):
    shown = _run(["dvc", "metrics", "show", "--json"], repo)
    assert shown.returncode == 0 and "val_loss" in shown.stdout


def test_repro_with_nothing_changed_is_a_no_op(repo):
    start = time.perf_counter()
    out = _run(["dvc", "repro"], repo)
    took = time.perf_counter() - start
    print(f"no-op dvc repro took {took:.1f}s")
    assert out.returncode == 0
    assert "Running stage" not in out.stdout
    assert "up to date" in out.stdout


def test_invalid_parameter_stops_before_any_stage_and_nothing_is_lost(repo):
    """The params-check stage refuses the bad value before a training stage starts (so DVC deletes none of its
    outputs); fixed again, nothing needs to rerun. (Kills and resumes mid-stage: tests/test_faults_runs.py.)"""
    original = (repo / "profiles/smoke.yaml").read_text()
    model = repo / "data/models/baseline"
    before = {p: p.read_bytes() for p in model.rglob("*") if p.is_file()}
    try:
        _set_params(repo, lambda p: p["train"].update(lr=-1.0), "profiles/smoke.yaml")
        out = _run(["dvc", "repro"], repo)
        assert out.returncode != 0
        text = out.stdout + out.stderr
        assert "profiles/smoke.yaml: train.lr" in text and "below the minimum" in text
        assert "Running stage 'foundation-pretrain'" not in text
        assert {p: p.read_bytes() for p in model.rglob("*") if p.is_file()} == before and before
        assert any((repo / "data/checkpoints/baseline").rglob("state.json"))
    finally:
        (repo / "profiles/smoke.yaml").write_text(original)
    out = _run(["dvc", "repro"], repo)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Stage 'foundation-pretrain' didn't change, skipping" in out.stdout


def test_every_paper_writes_a_claims_ledger_with_computed_verdicts(repo):
    from lmrepro.analysis.claims import VERDICTS, load_criteria
    from lmrepro.config import paper_schemas

    summary = json.loads((repo / "results/summary.json").read_text())
    for paper in paper_schemas():
        criteria = load_criteria(repo / f"pipelines/{paper}/claims.yaml")
        ledger = json.loads((repo / f"results/{paper}/claims.json").read_text())
        assert ledger["profile"] == "smoke"
        assert [c["id"] for c in ledger["claims"]] == list(criteria)
        for row in ledger["claims"]:
            assert row["verdict"] in VERDICTS
            assert row["value"] is None or math.isfinite(row["value"])
            assert {"precondition", "noise", "revisions", "by_construction"} <= set(row)
        # one publish path: every paper has the same three files, and flat finite metrics
        metrics = json.loads((repo / f"results/{paper}/metrics.json").read_text())
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values())
        assert {f"{cid}_reproduced" for cid in criteria} <= set(metrics)
        assert (repo / f"results/{paper}/claims.md").read_text().startswith("_smoke profile_")
        figures = list((repo / f"results/{paper}/figures").glob("*.png"))
        assert figures, f"{paper}: no figures"
        assert summary["papers"][paper]["claims"] == len(criteria)
    # every stage of every pipeline file ran and is recorded: nothing left to do
    status = _run(["dvc", "status", "--json"], repo)
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == {}, status.stdout[-3000:]


def test_xformer_runs_are_trained_at_matched_parameters(repo):
    import numpy as np
    import pandas as pd

    from lmrepro.config import load_config

    results = repo / "results/xformer"
    runs = pd.read_csv(results / "runs.csv")
    cfg = load_config(repo / "params.yaml", profile="smoke")
    assert sorted(zip(runs.variant, runs.run)) == sorted((r.variant, r.name) for r in cfg.xformer.runs())
    assert runs["main"].sum() == len({(r.variant, r.size) for r in cfg.xformer.runs() if r.variant != "bottleneck"})
    assert np.isfinite(runs.val_loss).all() and (runs.val_loss < math.log(cfg.tokenizer.vocab_size)).all()
    assert (runs.num_parameters_model == runs.parameters).all()
    for name in ("entropy", "density", "participation", "utilization", "logit_lens"):
        assert len(pd.read_csv(results / f"analysis/{name}.csv"))
    # the residual entropy covers every full-budget run of baseline and X (every seed: the valley claims' noise)
    entropy = pd.read_csv(results / "analysis/entropy.csv")
    analyzed = {(r.variant, r.name) for r in cfg.xformer.runs()
                if r.variant in ("baseline", "x") and r.token_fraction == 1.0}
    assert set(zip(entropy.variant, entropy.run)) == analyzed and len(set(entropy.seed)) == len(cfg.xformer.seeds)


def test_lora_methods_and_sweeps_are_evaluated(repo):
    import pandas as pd

    results = repo / "results/lora_alpha"
    summary = pd.read_csv(results / "methods" / "reasoning" / "summary.csv")
    assert summary.accuracy.notna().any() and len(set(summary.method)) >= 6
    executed = json.loads((results / "notebooks" / "03_sweep-domain.ipynb").read_text())
    assert executed["metadata"]["papermill"]["parameters"] == {"profile": "smoke", "task": "domain"}


def test_lora_sweep_runs_at_the_learning_rate_the_full_ft_stage_pre_registered(repo):
    """sweep.base_lr is null in the smoke profile: the sweep and the LoRA-α methods read the full fine-tuning
    optimum (selection half) from full_ft@<task>'s base_lr.json."""
    import pandas as pd

    results = repo / "results/lora_alpha"
    for task in ("domain", "reasoning"):
        ft = pd.read_csv(results / "full_ft" / task / "runs.csv")
        chosen = json.loads((results / "full_ft" / task / "base_lr.json").read_text())
        assert chosen["base_lr"] == ft.lr[ft.select_loss.idxmin()]
        sweep = pd.read_csv(results / "sweep" / task / "runs.csv")
        assert set(sweep[sweep.lr_multiplier == 1.0].lr) == {chosen["base_lr"]}
        methods = pd.read_csv(results / "methods" / task / "runs.csv")
        assert set(methods[methods.method == "lora_alpha_rank"].lr) == {chosen["base_lr"]}
