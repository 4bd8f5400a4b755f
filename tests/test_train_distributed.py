"""The real CLI on 2 CPU processes (gloo DDP) against 1 process: same data, same weights, same log.

``accelerate launch --cpu --num_processes 2`` starts a single process unless an mpirun hostfile is
given (accelerate's multi-CPU path is MPI), so the 2-process launch uses accelerate's torchrun path
(``--multi_gpu``, which on a machine without CUDA gives gloo processes on CPU through our
``Accelerator(cpu=True)``). The test checks that there really were two processes.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lmrepro import yaml12

from lmrepro.data import load_index
from lmrepro.train import load_model
from lmrepro.train.__main__ import main as train_main

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240  # a hung collective (one rank dead, the other waiting) must not block the suite


def shrink_params(src: Path, dst: Path, vocab_size: int) -> None:
    """Copy params.yaml and the three profile files, with a tiny smoke profile: 6 steps of 8 × 16 tokens."""
    raw = yaml12.loads(src.read_text())
    raw["profile"] = "smoke"
    dst.write_text(yaml12.dumps(raw))
    (dst.parent / "profiles").mkdir(exist_ok=True)
    for name in ("laptop", "mid", "paper"):
        shutil.copy(src.parent / "profiles" / f"{name}.yaml", dst.parent / "profiles" / f"{name}.yaml")
    smoke = yaml12.loads((src.parent / "profiles" / "smoke.yaml").read_text())
    smoke["tokenizer"]["vocab_size"] = vocab_size
    # max_seq_len covers the smoke hybrid_attention documents (the LongPPL evaluator check); training uses 16.
    smoke["model"] = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_seq_len": 160}
    smoke["train"] = {"seq_len": 16, "batch_size": 8, "micro_batch_size": 4, "max_tokens": 6 * 8 * 16, "lr": 3e-3,
                      "warmup_fraction": 0.2, "checkpoint_tokens": [256], "save_every_steps": 3,
                      "eval_every_steps": 3, "eval_windows": 2, "precision": "fp32", "trackers": ["dvclive"]}
    smoke["eval"] = {"seq_len": 16, "batch_size": 4, "max_windows": 4}
    (dst.parent / "profiles" / "smoke.yaml").write_text(yaml12.dumps(smoke))


@pytest.fixture(scope="module")
def project(tmp_path_factory, token_dirs) -> Path:
    root = tmp_path_factory.mktemp("project")
    shrink_params(REPO / "params.yaml", root / "params.yaml", load_index(token_dirs[0])["vocab_size"])
    for split, src in zip(("train", "validation"), token_dirs):
        shutil.copytree(src, root / "data" / "tokens" / split)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "MASTER_", "LOCAL_RANK", "RANK", "WORLD_SIZE", "TORCHELASTIC"))}
    env.update(OMP_NUM_THREADS="1", HF_HOME=str(tmp / "hf"), PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    return env


def launch_2proc(root: Path, run: str, *extra: str, config: str = "node_ddp") -> str:
    """``accelerate launch --config_file cloud/accelerate/node_ddp.yaml --num_processes 2 ... -m lmrepro.train`` in
    ``root``; returns the output."""
    for attempt in range(2):  # a free port can be taken between free_port() and the launch: retry once
        returncode, out = _launch(root, run, *extra, config=config)
        if returncode == 0 or "address already in use" not in out.lower():
            break
    assert returncode == 0, f"2-process run failed ({returncode}):\n{out[-4000:]}"
    return out


def _launch(root: Path, run: str, *extra: str, config: str = "node_ddp") -> tuple[int, str]:
    # A shipped 8-GPU node config (cloud/accelerate/<config>.yaml) with 2 processes: gloo on this CPU.
    config = REPO / "cloud" / "accelerate" / f"{config}.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "--num_processes", "2", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "--monitor_interval", "0.5",
           "-m", "lmrepro.train", "--profile", "smoke", "--run", run, "--log", str(root / f"{run}.csv"), *extra]
    # Own process group: on timeout the launcher *and* its workers are killed.
    proc = subprocess.Popen(cmd, cwd=root, env=launch_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"2-process run did not finish in {TIMEOUT_S}s:\n{out[-4000:]}")
    return proc.returncode, out


def read_log(path: Path) -> list[dict[str, float]]:
    with path.open() as fh:
        return [{k: float(v) for k, v in row.items() if v != "" and k != "elapsed_s"} for row in csv.DictReader(fh)]


def assert_same_weights(a_dir: Path, b_dir: Path, rel: float = 1e-4) -> None:
    a, b = load_model(a_dir).state_dict(), load_model(b_dir).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        scale = a[name].abs().max().item()
        diff = (a[name] - b[name]).abs().max().item()
        assert diff <= rel * scale, f"{name}: max diff {diff:.3g} > {rel} × scale {scale:.3g}"


def test_two_processes_match_one_process_including_resume(project, tmp_path, monkeypatch):
    # Reference: the same CLI in this process (1 process: 2 micro-batches of 4), run from another
    # folder with --params, so the project root must come from params.yaml's folder.
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): tiny matmuls, shared cores
    try:
        _compare_runs(project)
    finally:
        torch.set_num_threads(threads)


def _compare_runs(project: Path) -> None:
    train_main(["--params", str(project / "params.yaml"), "--profile", "smoke", "--run", "single",
                "--log", str(project / "single.csv")])
    single = project / "data" / "models" / "single"
    assert (single / "final" / "model.safetensors").is_file()

    # 2 processes × 1 micro-batch of 4, preempted after 4 steps (not a save step), then resumed.
    out = launch_2proc(project, "ddp", "--until-step", "4")
    assert "stopped after step 4 of 6" in out and "on 2 processes" in out, out[-4000:]
    ckpts = list((project / "data" / "checkpoints" / "ddp").glob("*/step-*"))
    assert sorted(p.name for p in ckpts) == ["step-0000003", "step-0000004"]
    assert not (project / "data" / "models" / "ddp" / "final").exists()
    out = launch_2proc(project, "ddp")
    assert "trained 6 steps" in out and "training steps 5..6 of 6 on 2 processes" in out, out[-4000:]

    ddp = project / "data" / "models" / "ddp"
    assert_same_weights(single / "final", ddp / "final")
    assert_same_weights(single / "budget-256", ddp / "budget-256")
    rows_1, rows_2 = read_log(project / "single.csv"), read_log(project / "ddp.csv")
    assert [r["step"] for r in rows_1] == [r["step"] for r in rows_2] == [1, 2, 3, 4, 5, 6]
    for r1, r2 in zip(rows_1, rows_2):
        assert r1.keys() == r2.keys()
        for key in r1:  # loss is reduced across processes; grad_norm shows DDP's averaging was undone
            assert r2[key] == pytest.approx(r1[key], rel=1e-5, abs=1e-7), (r1["step"], key)
    # Live metrics (train.trackers [dvclive]) from the first process only, across the preemption: each step once,
    # the values of the run's CSV.
    with (project / "live" / "foundation" / "ddp" / "plots" / "metrics" / "loss.tsv").open() as fh:
        live = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(fh, delimiter="\t")]
    assert live == [(int(r["step"]), r["loss"]) for r in rows_2]


def test_the_shipped_fsdp_config_trains_sharded_to_the_same_run(project, tmp_path, monkeypatch):
    """cloud/accelerate/node_fsdp.yaml with 2 processes: accelerate says FSDP, the Trainer shards every block
    (lmrepro.train.fsdp), and the run ends where the 1-process run ends (weights, budget snapshot, log)."""
    monkeypatch.chdir(tmp_path)
    single = project / "data" / "models" / "single"
    if not (single / "final").is_dir():  # run alone: the 1-process reference first
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            train_main(["--params", str(project / "params.yaml"), "--profile", "smoke", "--run", "single",
                        "--log", str(project / "single.csv")])
        finally:
            torch.set_num_threads(threads)
    out = launch_2proc(project, "fsdp", config="node_fsdp")
    assert "on 2 processes" in out and "sharded: FSDP" in out, out[-4000:]
    sharded = project / "data" / "models" / "fsdp"
    assert_same_weights(single / "final", sharded / "final")
    assert_same_weights(single / "budget-256", sharded / "budget-256")
    rows_1, rows_2 = read_log(project / "single.csv"), read_log(project / "fsdp.csv")
    assert [r["step"] for r in rows_1] == [r["step"] for r in rows_2]
    for r1, r2 in zip(rows_1, rows_2):
        for key in r1:
            assert r2[key] == pytest.approx(r1[key], rel=1e-5, abs=1e-7), (r1["step"], key)
