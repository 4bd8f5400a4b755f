"""Preemption on one machine, resume on another: resumable checkpoints mirrored to the project's DVC remote
(an S3-compatible server on 127.0.0.1, through DVC's own S3 plugin) bring a run whose local checkpoint folder
is gone back to the same final weights as an uninterrupted run."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import make_bucket, tool_env

from lmrepro.train import Trainer
from lmrepro.train import checkpoint as ckpt
from lmrepro.train.mirror import ENV, MINUTES_ENV, CheckpointMirror, activate_for_project

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cfg(make_train_config):
    return make_train_config(checkpoint_tokens=[128, 704], keep_checkpoints=2)


def trainer(spec, cfg, token_dirs, root, **kw) -> Trainer:
    return Trainer(spec, cfg, token_dirs[0], root / "out", root / "ckpt", progress=False, **kw)


@pytest.fixture
def project(tmp_path, s3_server, monkeypatch):
    """A DVC project whose default remote is a new bucket on the local S3 server, as the current folder, set up as
    a pipeline stage's setup does (mirroring on)."""
    bucket = f"mirror-{uuid.uuid4().hex[:12]}"
    make_bucket(s3_server, bucket)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=tool_env())
    subprocess.run([sys.executable, "-m", "lmrepro.remote", f"s3://{bucket}/store", "--endpoint", s3_server],
                   cwd=tmp_path, check=True, env=tool_env(), capture_output=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV, "")  # unset as far as the mirror goes; restored after the test
    monkeypatch.setenv(MINUTES_ENV, "0")  # every checkpoint is uploaded (the default waits 10 minutes)
    assert activate_for_project(tmp_path) == "storage"
    return tmp_path


def test_a_preempted_run_resumes_on_another_machine_from_the_mirror(project, make_spec, cfg, token_dirs,
                                                                    tmp_path_factory):
    spec = make_spec()
    reference = tmp_path_factory.mktemp("uninterrupted")
    trainer(spec, cfg, token_dirs, reference, mirror=None).fit()

    machine_a = project / "a"
    first = trainer(spec, cfg, token_dirs, machine_a)
    first.fit(until_step=7)  # preempted after step 7: its last checkpoint is uploaded
    shutil.rmtree(machine_a)  # ... and machine A, with every local checkpoint, is gone

    machine_b = project / "b"
    second = trainer(spec, cfg, token_dirs, machine_b)
    result = second.fit()
    assert result.completed and result.resumed_from_step == 7
    for name in ("final", "budget-128", "budget-704"):  # budget-128 was written on machine A only
        a = ckpt.load_model(reference / "out" / name).state_dict()
        b = ckpt.load_model(machine_b / "out" / name).state_dict()
        assert all((a[k] == b[k]).all() for k in a), name


def test_an_upload_cut_short_is_never_restored(project, make_spec, cfg, token_dirs):
    spec = make_spec()
    first = trainer(spec, cfg, token_dirs, project / "a")
    first.fit(until_step=7)
    mirror = CheckpointMirror.from_env()
    run = f"{mirror.root}/{first.fingerprint}"
    assert [p.rsplit("/", 1)[-1] for p in sorted(mirror.fs.ls(run, detail=False))] == [
        "budgets", "step-0000005", "step-0000007"]  # keep_checkpoints=2
    mirror.fs.rm(f"{run}/step-0000007/state.json")  # state.json goes last: step 7's upload did not finish

    result = trainer(spec, cfg, token_dirs, project / "b").fit(until_step=8)
    assert result.resumed_from_step == 5


def test_no_remote_no_mirror_and_off_wins(tmp_path, monkeypatch):
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=tool_env())
    monkeypatch.delenv(ENV, raising=False)
    assert activate_for_project(tmp_path) is None and CheckpointMirror.from_env() is None
    subprocess.run(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "remote")], cwd=tmp_path, check=True,
                   env=tool_env())
    monkeypatch.setenv(ENV, "off")
    assert activate_for_project(tmp_path) is None and CheckpointMirror.from_env() is None


def test_a_temporary_copy_keeps_its_checkpoints_in_the_main_checkout(tmp_path, monkeypatch):
    """`make repro PROFILE=…` sets LMREPRO_CHECKPOINT_ROOT: every checkpoint folder of the copy points there."""
    from lmrepro.papers.hybrid_attention import artifacts as hybrid
    from lmrepro.papers.xformer import artifacts as xformer
    from lmrepro.paths import Paths

    copy = Paths(tmp_path / "copy")
    assert copy.checkpoints("baseline") == tmp_path / "copy/data/checkpoints/baseline"
    monkeypatch.setenv("LMREPRO_CHECKPOINT_ROOT", str(tmp_path / "main/data/checkpoints"))
    main = tmp_path / "main/data/checkpoints"
    assert copy.checkpoints("baseline") == main / "baseline"
    assert hybrid.run_dirs(copy, "gdn", "s1", 0)["ckpt"].is_relative_to(main / "hybrid_attention")
    assert xformer.run_dirs(copy, "x", "s1")["ckpt"].is_relative_to(main / "xformer")
    assert hybrid.run_dirs(copy, "gdn", "s1", 0)["out"].is_relative_to(tmp_path / "copy")  # outputs stay in the copy


JOB = """
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_spec, tiny_train_config
from lmrepro.train import Trainer
from lmrepro.train.guard import RunInterrupted

cfg = tiny_train_config(max_tokens=400 * 4 * 16, save_every_steps=20, keep_checkpoints=5)
trainer = Trainer(tiny_spec(), cfg, {train!r}, sys.argv[1] + "/out", sys.argv[1] + "/ckpt", progress=False)
try:
    trainer.fit()
except RunInterrupted as err:
    print("STOPPED:", err, flush=True)
"""


def test_a_stopped_run_uploads_its_last_checkpoint_at_once(tmp_path, token_dirs):
    """Ctrl-C (or a preemption's SIGTERM): the checkpoint saved on the way out is uploaded whatever the period; the
    periodic ones, due only every LMREPRO_MIRROR_MINUTES (here 60), are not."""
    import signal
    import time

    from lmrepro.train import checkpoint as ckpt

    job = tmp_path / "job.py"
    job.write_text(JOB.format(tests=str(Path(__file__).parent), train=str(token_dirs[0])))
    store = tmp_path / "store"
    env = tool_env(LMREPRO_CHECKPOINT_MIRROR=str(store), LMREPRO_MIRROR_MINUTES="60")
    proc = subprocess.Popen([sys.executable, str(job), str(tmp_path / "run")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(len(ckpt.list_checkpoints(p)) >= 2 for p in (tmp_path / "run/ckpt").glob("*") if p.is_dir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    stopped = int(out.split("after step ")[1].split()[0])
    [run] = [p.name for p in (tmp_path / "run/ckpt").iterdir() if p.is_dir()]
    assert sorted(p.name for p in (store / "checkpoints" / run).glob("step-*")) == [f"step-{stopped:07d}"], err
    assert (store / "checkpoints" / run / f"step-{stopped:07d}" / "state.json").is_file()
