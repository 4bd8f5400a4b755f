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


def _run(cmd: list[str], cwd: Path, timeout: int = 2400, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd / "src"),
           "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
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


@pytest.mark.parametrize("store", ["folder", "s3"])
def test_results_travel_through_a_dvc_remote(repo, store, tmp_path, request):
    """`make remote`'s command, `dvc push` from this clone, `git clone` + `dvc pull` into a second: its
    `dvc status` is clean, and an evaluation and its report rerun there from the pulled model, with no training.
    ``s3``: an S3-compatible server on 127.0.0.1 through DVC's own S3 plugin."""
    from conftest import S3_CREDENTIALS, make_bucket

    env = {**S3_CREDENTIALS}
    if store == "s3":
        endpoint = request.getfixturevalue("s3_server")
        make_bucket(endpoint, "lmrepro-remote")
        url, extra = "s3://lmrepro-remote/dvc", ["--endpoint", endpoint]
    else:
        url, extra = str(tmp_path / "remote"), []
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    assert _run([*git, "add", "-A"], repo).returncode == 0
    _run([*git, "commit", "-qm", "results"], repo)  # nothing to commit after the first parametrization
    config = (repo / ".dvc/config").read_text()
    try:
        added = _run([sys.executable, "-m", "lmrepro.remote", url, *extra], repo)
        assert added.returncode == 0 and "default DVC remote 'storage'" in added.stdout, added.stderr
        assert _run([*git, "commit", "-qam", "remote"], repo).returncode == 0
        pushed = _run(["dvc", "push"], repo, env=env)
        assert pushed.returncode == 0 and "pushed" in pushed.stdout, pushed.stdout[-2000:] + pushed.stderr[-2000:]

        clone = tmp_path / "clone"
        assert _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path).returncode == 0
        assert not (clone / "data").exists()
        pulled = _run(["dvc", "pull"], clone, env=env)
        assert pulled.returncode == 0, pulled.stdout[-2000:] + pulled.stderr[-2000:]
        status = _run(["dvc", "status", "--json"], clone, env=env)
        assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout[-3000:]

        rerun = _run(["dvc", "repro", "--force", "--single-item", "foundation-evaluate", "foundation-report"], clone,
                     env=env)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        ran = [line for line in rerun.stdout.splitlines() if line.startswith("Running stage")]
        assert ran == ["Running stage 'foundation-evaluate':", "Running stage 'foundation-report':"]
        assert not (clone / "data/checkpoints").exists()  # nothing trained
        for name in ("results/foundation/metrics.json", "results/foundation/loss_by_position.csv"):
            assert (clone / name).read_bytes() == (repo / name).read_bytes(), name
        # only the summary is behind now: it renders the stage timings of the notebooks just rerun
        assert json.loads(_run(["dvc", "status", "--json"], clone, env=env).stdout) == {
            "summary": [{"changed deps": {"results/foundation/notebooks": "modified"}}]}
    finally:
        (repo / ".dvc/config").write_text(config)
        _run([*git, "commit", "-qam", "no remote"], repo)


def test_another_profile_runs_as_an_experiment_outside_the_workspace(repo):
    """`make repro PROFILE=…` is `dvc exp run --temp`: the profile's results land in the experiment (a git ref that
    `dvc exp show` lists and `dvc exp apply` would promote), never in the workspace's committed results."""
    plan = _run(["make", "-n", "-o", "setup", "repro", "PROFILE=laptop", f"VENV={sys.prefix}"], repo)
    assert plan.returncode == 0 and 'dvc exp run --temp --name "$PROFILE-' in plan.stdout, plan.stdout
    # the temporary copy is deleted when the run stops: its checkpoints are kept in this checkout
    assert f'LMREPRO_CHECKPOINT_ROOT="{repo}/data/checkpoints"' in plan.stdout
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run([*git, "add", "-A"], repo)
    _run([*git, "commit", "-qm", "results"], repo)
    tracked = ["params.yaml", "dvc.lock", *(str(p.relative_to(repo)) for p in (repo / "results").rglob("*")
                                            if p.is_file())]
    before = {name: (repo / name).read_bytes() for name in tracked}

    out = _run(["dvc", "exp", "run", "--temp", "--name", "laptop-check", "-S", "profile=laptop", "params-check"], repo)
    assert out.returncode == 0 and "Running stage 'params-check'" in out.stdout, out.stdout[-3000:] + out.stderr
    assert {name: (repo / name).read_bytes() for name in tracked} == before
    assert _run(["git", "status", "--porcelain"], repo).stdout == ""
    refs = _run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout.split()
    [ref] = [r for r in refs if r.endswith("/laptop-check")]
    assert "profile: laptop" in _run(["git", "show", f"{ref}:params.yaml"], repo).stdout
    # the experiment commit holds the switched profile and the lock of the stage that ran with it
    assert _run(["git", "diff", "--name-only", "HEAD", ref], repo).stdout.split() == ["dvc.lock", "params.yaml"]
    shown = _run(["dvc", "exp", "show", "--json"], repo)
    assert shown.returncode == 0 and "laptop-check" in shown.stdout


def test_a_stage_mirrors_its_checkpoints_to_the_projects_remote(repo, tmp_path):
    """With a default DVC remote, a training stage uploads its resumable checkpoints there as it trains (here every
    one: LMREPRO_MIRROR_MINUTES=0), and the retrained model is the recorded one (`dvc status` clean)."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    config = (repo / ".dvc/config").read_text()
    remote = tmp_path / "remote"
    try:
        assert _run([sys.executable, "-m", "lmrepro.remote", str(remote)], repo).returncode == 0
        shutil.rmtree(repo / "data/checkpoints/baseline")
        out = _run(["dvc", "repro", "--force", "--single-item", "foundation-pretrain"], repo,
                   env={"LMREPRO_MIRROR_MINUTES": "0", "LMREPRO_CHECKPOINT_MIRROR": ""})
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "resumable checkpoints are mirrored to storage" in out.stdout
        [run] = [p for p in (repo / "data/checkpoints/baseline").iterdir() if p.is_dir()]  # and the run lock
        local = sorted(p.name for p in run.glob("step-*"))
        assert local and all((remote / "checkpoints" / run.name / s / "state.json").is_file() for s in local)
        assert json.loads(_run(["dvc", "status", "--json", "foundation-pretrain"], repo).stdout) == {}
    finally:
        (repo / ".dvc/config").write_text(config)
        _run([*git, "commit", "-qam", "no remote"], repo)
