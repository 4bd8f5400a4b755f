"""Fault injection, runs and files: kills during training and during checkpoint writes, Ctrl-C, a killed
launcher, a second trainer on the same run, damaged or foreign model and checkpoint files. Every case checks
the exact error (or the exact recovery) and that nothing already produced was lost or changed.

Trainers run as real subprocesses (``train_job.py`` below); the interrupted ones are rerun to the end and must
give the same weights as an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_spec, tiny_train_config, tool_env

from lmrepro.models import DecoderLM
from lmrepro.train import Trainer, load_model, save_model
from lmrepro.train import checkpoint as ckpt
from lmrepro.train.guard import RunLock, RunLockedError
from lmrepro.train.trainer import ForeignCheckpointError

STEPS = 300  # long enough (~2 s) to be interrupted mid-run; every 20 steps a checkpoint

JOB = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {tests!r})
    from conftest import tiny_spec, tiny_train_config
    from lmrepro.train import Trainer
    from lmrepro.train.guard import RunInterrupted

    root = sys.argv[1]
    cfg = tiny_train_config(max_tokens={steps} * 4 * 16, save_every_steps=20, keep_checkpoints=3)
    trainer = Trainer(tiny_spec(), cfg, {train!r}, root + "/out", root + "/ckpt", progress=False)
    print("started", flush=True)
    try:
        result = trainer.fit()
    except RunInterrupted as err:
        print(f"STOPPED: {{err}}", flush=True)
        sys.exit(3)
    print(json.dumps({{"step": result.step, "resumed_from": result.resumed_from_step}}), flush=True)
''')


@pytest.fixture(scope="module")
def job(token_dirs, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("job") / "train_job.py"
    path.write_text(JOB.format(tests=str(Path(__file__).parent), steps=STEPS, train=str(token_dirs[0])))
    return path


def start(job: Path, root: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(job), str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=tool_env(), **popen)


def finish(job: Path, root: Path) -> dict:
    out = subprocess.run([sys.executable, str(job), str(root)], capture_output=True, text=True, env=tool_env(),
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.005)


def run_folder(root: Path) -> Path:
    (folder,) = [p for p in (root / "ckpt").iterdir() if p.is_dir()]
    return folder


def checkpoints_at_least(root: Path, n: int):
    return lambda: (root / "ckpt").is_dir() and any(
        len(ckpt.list_checkpoints(p)) >= n for p in (root / "ckpt").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory) -> DecoderLM:
    root = tmp_path_factory.mktemp("reference")
    assert finish(job, root) == {"step": STEPS, "resumed_from": None}
    return load_model(root / "out" / "final")


def assert_same_weights(a: DecoderLM, b: DecoderLM) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_sigkill_during_training_resumes_bit_identical(job, reference, tmp_path):
    proc = start(job, tmp_path)
    wait_for(checkpoints_at_least(tmp_path, 2), what="two checkpoints")
    proc.kill()
    proc.wait()
    result = finish(job, tmp_path)
    assert result["step"] == STEPS and result["resumed_from"] >= 40
    assert_same_weights(reference, load_model(tmp_path / "out" / "final"))


def test_sigkill_during_a_checkpoint_write_resumes_bit_identical(job, reference, tmp_path):
    """Killed while a checkpoint is half written (its .tmp folder exists): the rerun ignores it."""
    proc = start(job, tmp_path)
    wait_for(lambda: any(p.name.endswith(".tmp") for p in (tmp_path / "ckpt").rglob("step-*")),
             what="a checkpoint being written")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = finish(job, tmp_path)
    assert result["step"] == STEPS
    assert_same_weights(reference, load_model(tmp_path / "out" / "final"))


INTERRUPTED, TERMINATED = "interrupted (Ctrl-C)", "terminated (SIGTERM: preempted or stopped)"


@pytest.mark.parametrize("signals, reason", [
    ([signal.SIGINT], (INTERRUPTED,)),
    ([signal.SIGTERM], (TERMINATED,)),
    # a preemption: SIGTERM to every process and the SIGINT a launcher forwards, at once (whichever handler runs
    # first names the reason): still one clean stop with a checkpoint
    ([signal.SIGTERM, signal.SIGINT, signal.SIGTERM], (INTERRUPTED, TERMINATED)),
])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_at_the_step_boundary_and_says_so(job, reference, tmp_path, signals,
                                                                              reason):
    """SIGTERM is a preemption's notice (cloud spot machines, schedulers): handled like Ctrl-C, also when it comes
    with other signals."""
    proc = start(job, tmp_path)
    wait_for(checkpoints_at_least(tmp_path, 1), what="a checkpoint")
    for sig in signals:
        proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr[-2000:]
    (line,) = [x for x in stdout.splitlines() if x.startswith("STOPPED")]
    assert any(r in line for r in reason) and "rerun to continue" in line
    stopped_at = int(line.split("after step ")[1].split()[0])
    assert ckpt.list_checkpoints(run_folder(tmp_path))[-1].name == f"step-{stopped_at:07d}"
    result = finish(job, tmp_path)
    assert result["resumed_from"] == stopped_at
    assert_same_weights(reference, load_model(tmp_path / "out" / "final"))


def test_killing_the_dvc_launcher_stops_the_orphaned_trainer(job, tmp_path):
    """`dvc repro` killed while its stage trains: the trainer notices, saves and stops (no orphan training on)."""
    (tmp_path / "dvc.yaml").write_text(f"stages:\n  train:\n    cmd: {sys.executable} {job} {tmp_path}\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, env=tool_env())
    dvc = subprocess.Popen(["dvc", "repro"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=tool_env())
    wait_for(checkpoints_at_least(tmp_path, 1), what="a checkpoint")
    holder = json.loads((tmp_path / "ckpt" / ".lock").read_text())["pid"]
    dvc.kill()
    dvc.wait()
    wait_for(lambda: not _alive(holder), timeout=30, what="the orphaned trainer to stop")
    last = ckpt.list_checkpoints(run_folder(tmp_path))[-1]
    assert int(last.name.split("-")[1]) < STEPS  # stopped early, with a resumable checkpoint
    assert RunLock(tmp_path / "ckpt").acquire()  # and released its lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie (exited, not yet reaped) counts as stopped
        return fh.read().split(") ")[1][0] != "Z"


def test_a_second_trainer_on_the_same_run_is_refused_naming_the_holder(job, token_dirs, tmp_path):
    proc = start(job, tmp_path)
    try:
        wait_for(lambda: (tmp_path / "ckpt" / ".lock").is_file() and (tmp_path / "ckpt" / ".lock").read_text(),
                 what="the lock")
        second = Trainer(tiny_spec(), tiny_train_config(), token_dirs[0], tmp_path / "out2", tmp_path / "ckpt",
                         progress=False)
        with pytest.raises(RunLockedError, match=f"another trainer holds this run .*\"pid\": {proc.pid}"):
            second.fit()
    finally:
        proc.kill()
        proc.wait()
    # The holder was killed: the kernel dropped its lock, and the run resumes.
    assert finish(job, tmp_path)["step"] == STEPS


@pytest.fixture
def trained(tmp_path, token_dirs):
    """A finished short run: (trainer, its checkpoint folders)."""
    cfg = tiny_train_config(save_every_steps=4, keep_checkpoints=3)
    t = Trainer(tiny_spec(), cfg, token_dirs[0], tmp_path / "out", tmp_path / "ckpt", progress=False)
    t.fit(until_step=8)
    return t, ckpt.list_checkpoints(t.ckpt_dir)


@pytest.mark.parametrize("damage", ["zeroed-weights", "truncated-optimizer", "garbled-state", "edited-rng"])
def test_a_damaged_latest_checkpoint_is_named_kept_and_the_previous_one_used(trained, token_dirs, tmp_path,
                                                                             damage, caplog):
    t, (older, latest) = trained
    target = {"zeroed-weights": "model.safetensors", "truncated-optimizer": "optimizer.pt",
              "garbled-state": "state.json", "edited-rng": "rng.pt"}[damage]
    path = latest / target
    data = path.read_bytes()
    path.write_bytes({"zeroed-weights": bytes(len(data)), "truncated-optimizer": data[: len(data) // 2],
                      "garbled-state": b"{not json", "edited-rng": data[:-8] + bytes(8)}[damage])
    damaged_bytes = path.read_bytes()
    rerun = Trainer(tiny_spec(), t.cfg, token_dirs[0], tmp_path / "out", tmp_path / "ckpt", progress=False)
    with caplog.at_level("WARNING"):
        result = rerun.fit()
    assert result.resumed_from_step == int(older.name.split("-")[1])
    assert f"checkpoint {latest} is damaged" in caplog.text
    kept = latest.with_name(latest.name + ".damaged")
    assert (kept / target).read_bytes() == damaged_bytes  # nothing deleted


def test_a_checkpoint_of_another_run_is_refused_naming_both_fingerprints(trained, token_dirs, tmp_path):
    t, (_, latest) = trained
    other = Trainer(tiny_spec(), tiny_train_config(lr=1e-3), token_dirs[0], tmp_path / "o", tmp_path / "ckpt",
                    progress=False)
    foreign = other.ckpt_dir / latest.name
    foreign.parent.mkdir(parents=True)
    os.rename(latest, foreign)  # same shapes, another config: copied into the wrong run
    with pytest.raises(ForeignCheckpointError, match=f"checkpoint of run {t.fingerprint}.*is {other.fingerprint}"):
        other.fit()
    assert (foreign / "state.json").is_file()  # refused, not renamed or deleted


@pytest.mark.parametrize("edit", ["zeroed-weights", "spec-of-another-architecture", "flipped-byte"])
def test_damaged_or_edited_model_folders_do_not_load(tmp_path, edit):
    folder = save_model(DecoderLM(tiny_spec()), tmp_path / "m")
    weights, spec = folder / "model.safetensors", folder / "spec.json"
    if edit == "zeroed-weights":
        weights.write_bytes(bytes(weights.stat().st_size))
    elif edit == "flipped-byte":
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0x01  # one weight's last byte: still a valid file, a different number
        weights.write_bytes(bytes(data))
    else:
        meta = json.loads(spec.read_text())
        meta["spec"]["layers"][0] = {"mixer": "attention", "window": 4, "rope": True}  # full → swa-4
        spec.write_text(json.dumps(meta))
    name = "spec.json" if edit.startswith("spec") else "model.safetensors"
    with pytest.raises(ckpt.DamagedFileError, match=name):
        load_model(folder)


def test_ctrl_c_in_a_stage_stops_the_kernel_after_a_checkpoint_with_one_line(token_dirs, tmp_path):
    """A DVC stage command (lmrepro.run_notebook) gets Ctrl-C while its notebook trains: the kernel finishes the
    step, saves, stops; the executed notebook is written; one line says where; exit status 130."""
    import nbformat

    from lmrepro.notebooks import KERNELSPEC

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})
    train = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from conftest import tiny_spec, tiny_train_config
        from lmrepro.train import Trainer
        cfg = tiny_train_config(max_tokens={100 * STEPS} * 4 * 16, save_every_steps=20)
        Trainer(tiny_spec(), cfg, {str(token_dirs[0])!r}, root + "/out", root + "/ckpt", progress=False).fit()
    """)
    nb.cells = [nbformat.v4.new_code_cell('root = ""', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(train)]
    source, executed = tmp_path / "train.ipynb", tmp_path / "executed.ipynb"
    nbformat.write(nb, str(source))
    proc = subprocess.Popen([sys.executable, "-m", "lmrepro.run_notebook", str(source), str(executed),
                             "-p", "root", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=tool_env())
    wait_for(checkpoints_at_least(tmp_path, 1), timeout=120, what="a checkpoint")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    (line,) = [x for x in stderr.splitlines() if "interrupted —" in x]
    assert "training stopped after step" in line and "interrupted (Ctrl-C)" in line
    assert "Traceback" not in stdout + stderr and "ZMQError" not in stdout + stderr
    stopped_at = int(line.split("after step ")[1].split()[0])
    assert ckpt.list_checkpoints(run_folder(tmp_path))[-1].name == f"step-{stopped_at:07d}"
    assert executed.is_file()
    assert RunLock(tmp_path / "ckpt").acquire()  # the kernel has exited and released the run
