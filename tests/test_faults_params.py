"""Fault injection, parameters: invalid params never delete or change an output, never reach a shell.

Each case edits the parameters of a real project copy the way a careless (or hostile) user would, runs the real
``dvc repro`` / ``dvc exp run`` / ``make repro``, and asserts the exact failure, that outputs produced earlier
are untouched and that no injected command ran.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import pipeline_copy, tool_env

from lmrepro.config import load_config
from lmrepro.config.check import SNAPSHOT, STAMP, STAMP_TEXT

# Outputs of stages that a bad parameter used to make DVC delete (foundation data, a paper's model).
PRODUCED = ("data/corpus/manifest.json", "data/tokens/train/shard-00000.bin", "data/tokenizer/tokenizer.json",
            "results/foundation/data_summary.json", "data/xformer/models/x/s1/model.safetensors")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The project copy after one valid check (which remembers the valid parameter files)."""
    root = pipeline_copy(tmp_path_factory.mktemp("faults") / "project")
    assert run(root, "python", "-m", "lmrepro.config.check").returncode == 0
    return root


@pytest.fixture
def project(template, tmp_path) -> Path:
    """A private copy of the template with earlier outputs in place."""
    dest = tmp_path / "project"
    shutil.copytree(template, dest, symlinks=True)
    for rel in PRODUCED:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(f"produced earlier: {rel}\n")
    return dest


def run(project: Path, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=project, env=tool_env(), capture_output=True, text=True, timeout=300)


def digest(project: Path) -> dict[str, str]:
    """Hash of every produced output and parameter file (what must not change)."""
    files = [*PRODUCED, "params.yaml", *(f"profiles/{p}.yaml" for p in ("smoke", "laptop", "mid", "paper"))]
    return {f: hashlib.sha256((project / f).read_bytes()).hexdigest() if (project / f).exists() else "missing"
            for f in files}


def edit_text(project: Path, name: str, old: str, new: str) -> None:
    path = project / name
    text = path.read_text()
    assert old in text, f"{old!r} not in {name}"
    path.write_text(text.replace(old, new, 1))


# (case id, file, old text, new text, expected message fragment)
BAD_EDITS = [
    ("profile-typo", "params.yaml", "profile: laptop", "profile: smokey", "profile: 'smokey' is not allowed"),
    ("profile-injection", "params.yaml", "profile: laptop", 'profile: "$(touch PWNED)"', "must be a plain name"),
    ("profile-quote-injection", "params.yaml", "profile: laptop", "profile: \"x'; touch PWNED; echo '\"",
     "must be a plain name"),
    ("foreach-injection", "params.yaml", "  - full\n", '  - "full; touch PWNED"\n',
     "must be a plain name"),
    ("duplicate-key", "profiles/smoke.yaml", "data:", "tokenizer: {vocab_size: 512}\ndata:", "duplicate key"),
    ("unknown-section", "params.yaml", "profile: laptop", "profile: laptop\nhybrid_atention: {seed: 1}",
     "hybrid_atention: unknown top-level key"),
    ("wrong-type-in-profile", "profiles/laptop.yaml", "lr: ", "lr: fast #", "profiles/laptop.yaml: train.lr"),
    ("not-yaml", "profiles/paper.yaml", "\n", "\n  : [\n", "not valid YAML"),
    ("unknown-architecture", "params.yaml", "  - full\n", "  - fulll\n",
     "'fulll' is not allowed"),
]


# Most cases run a bare `dvc repro`; two also run one paper's pipeline, which reaches the check upstream.
TARGETED = [(case, None) for case in BAD_EDITS] + [(BAD_EDITS[i], "pipelines/xformer/dvc.yaml") for i in (0, 3)]


@pytest.mark.parametrize("case,target", TARGETED, ids=[c[0] + ("" if t is None else "@xformer") for c, t in TARGETED])
def test_invalid_params_stop_dvc_before_any_output_is_touched(template, project, case, target):
    _, name, old, new, message = case
    edit_text(project, name, old, new)
    rejected = (project / name).read_bytes()
    before = {k: v for k, v in digest(project).items() if k != name}
    out = run(project, "dvc", "repro", *([target] if target else []))
    assert out.returncode != 0
    assert message in out.stderr + out.stdout, out.stderr[-3000:]
    assert "Running stage 'params-check'" in out.stdout and "foundation-data" not in out.stdout
    assert not (project / "PWNED").exists()
    after = digest(project)
    assert {k: v for k, v in after.items() if k != name} == before
    # The last valid parameter file is back; the rejected edit is kept beside it.
    assert (project / f"{name}.rejected").read_bytes() == rejected
    assert (project / name).read_bytes() == (template / name).read_bytes()
    assert load_config(project / "params.yaml").profile == "laptop"


def test_a_params_yaml_dvc_cannot_read_stops_dvc_itself(project):
    """DVC reads params.yaml (the pipelines' vars) before any stage; a duplicate key stops it there, so the
    check never runs: nothing is removed or written and the file stays as the user wrote it."""
    edit_text(project, "params.yaml", "profile: laptop", "profile: laptop\nprofile: paper")
    edited = (project / "params.yaml").read_bytes()
    before = digest(project)
    out = run(project, "dvc", "repro")
    assert out.returncode != 0 and "duplicate key" in out.stderr.lower() and "Running stage" not in out.stdout
    assert digest(project) == before and (project / "params.yaml").read_bytes() == edited


def test_deleted_profile_file_is_refused_and_put_back(project):
    saved = (project / "profiles/paper.yaml").read_bytes()
    (project / "profiles/paper.yaml").unlink()
    before = digest(project)
    out = run(project, "dvc", "repro")
    assert out.returncode != 0 and "profiles/paper.yaml: file not found" in out.stderr
    assert (project / "profiles/paper.yaml").read_bytes() == saved
    assert {k: v for k, v in digest(project).items() if not k.startswith("profiles/")} == \
        {k: v for k, v in before.items() if not k.startswith("profiles/")}


def test_without_a_valid_copy_from_this_commit_nothing_is_restored(project):
    """No remembered copy (fresh clone) → the error, and the user's file left exactly as they wrote it."""
    shutil.rmtree(project / SNAPSHOT)
    edit_text(project, "params.yaml", "profile: laptop", "profile: smokey")
    edited = (project / "params.yaml").read_bytes()
    out = run(project, "dvc", "repro")
    assert out.returncode != 0 and "'smokey' is not allowed" in out.stderr
    assert (project / "params.yaml").read_bytes() == edited and not (project / "params.yaml.rejected").exists()


def test_exp_run_with_a_bad_profile_leaves_params_yaml_as_it_was(project):
    """`dvc exp run` first checks out the outputs dvc.lock records (this copy has no lock, so it clears the
    fake ones: DVC's own behaviour, restorable from its cache in a real project); what matters here is that
    the parameter files come back byte-identical after DVC rewrote params.yaml with the bad value."""
    before = {k: v for k, v in digest(project).items() if k.endswith(".yaml")}
    out = run(project, "dvc", "exp", "run", "-S", "profile=smokey")
    assert out.returncode != 0 and "'smokey' is not allowed" in out.stderr
    assert {k: v for k, v in digest(project).items() if k.endswith(".yaml")} == before
    assert not (project / "PWNED").exists() and "Running stage 'foundation-data'" not in out.stdout
    assert "profile: smokey" in (project / "params.yaml.rejected").read_text()


@pytest.mark.parametrize("profile", ["paperr", "$(touch PWNED)", "x'; touch PWNED; echo '", "`touch PWNED`"])
def test_make_repro_refuses_a_bad_profile_before_anything_runs(project, profile):
    before = digest(project)
    out = run(project, "make", "-o", ".venv/.setup-done", "-o", "setup", "repro", f"PROFILE={profile}")
    assert out.returncode == 2 and "PROFILE must be one of smoke, laptop, mid, paper" in out.stderr
    assert digest(project) == before and not (project / "PWNED").exists()


def test_yaml_1_2_numbers_are_numbers_for_dvc_and_the_project(project):
    """An unquoted 3e-3 is a float to DVC (YAML 1.2); the project reads it the same way, so the check passes
    and the stage parameters DVC records equal the values the notebooks use."""
    from dvc.utils.serialize import load_yaml

    edit_text(project, "profiles/laptop.yaml", "lr: ", "lr: 3e-3 #")
    assert load_config(project / "params.yaml").train.lr == 0.003
    assert load_yaml(str(project / "profiles/laptop.yaml"))["train"]["lr"] == 0.003
    assert run(project, "dvc", "repro", "params-check").returncode == 0


def test_a_valid_edit_leaves_the_check_output_unchanged(project):
    """The check's output is constant text, so a valid edit reruns only the stages that read the edited key."""
    assert run(project, "dvc", "repro", "params-check").returncode == 0
    assert (project / STAMP).read_text() == STAMP_TEXT
    edit_text(project, "profiles/laptop.yaml", "lr: ", "lr: 0.00123 #")
    out = run(project, "dvc", "repro", "params-check")
    assert out.returncode == 0 and "Running stage 'params-check'" in out.stdout
    assert (project / STAMP).read_text() == STAMP_TEXT


def test_every_stage_runs_after_the_params_check(template, monkeypatch):
    """The check is an ancestor of every other stage in DVC's own graph (whichever dvc.yaml it is in)."""
    import networkx as nx
    from dvc.repo import Repo

    monkeypatch.chdir(template)  # stage addresses are relative to the working directory
    with Repo(str(template)) as repo:
        graph = repo.index.graph
        stages = {s.addressing: s for s in graph.nodes}
        check = stages["params-check"]
        # DVC's edges point from a stage to the stages it depends on.
        missing = [name for name, s in stages.items() if s is not check and not nx.has_path(graph, s, check)]
    assert len(stages) > 30 and not missing
    # ... and it reruns whenever a parameter or the code that reads parameters changes.
    deps = {str(d.def_path) for d in check.deps}
    assert {"params.yaml", "profiles", "src/lmrepro/config", "src/lmrepro/papers"} <= deps


def test_switching_profile_with_dvc_rewrites_only_the_profile_line():
    """`dvc exp run -S profile=paper` round-trips params.yaml through DVC's YAML writer: the file is written so
    that nothing but the profile line changes (comments, flow style and line breaks kept)."""
    import shutil
    import tempfile

    from dvc.utils.serialize import modify_yaml

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copy2(root / "params.yaml", copy)
        with modify_yaml(str(copy)) as data:
            data["profile"] = "paper"
        old, new = (root / "params.yaml").read_text().splitlines(), copy.read_text().splitlines()
    assert len(old) == len(new)
    assert [(a, b) for a, b in zip(old, new) if a != b] == [("profile: laptop", "profile: paper")]


def test_a_launch_this_machine_cannot_run_stops_dvc_before_any_output_is_touched(project):
    """Two machines asked for (the scheduler's count) without this machine's rank: params-check stops `dvc repro`
    (exit status 3) naming the variable, before any stage removes or writes an output; the parameters stay."""
    before = digest(project)
    env = {**tool_env(), "SKYPILOT_NUM_NODES": "2"}
    out = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "this machine's launch cannot train them" in out.stderr + out.stdout
    assert "export LMREPRO_MACHINE_RANK" in out.stderr + out.stdout
    assert digest(project) == before
