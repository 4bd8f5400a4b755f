"""Every Trainer-based training entry on 1 and 2 processes (gloo on CPU, through the real `accelerate launch` of
lmrepro.launch): the same loss curve and final weights with the same global batch, and a run interrupted on one
count resumes on the other to the weights of an uninterrupted run.

Tolerance. One process accumulates its micro-batches' gradients in one buffer, ((g1 + g2) + g3) + g4; two processes
each sum half of them and the all-reduce adds the halves, (g1 + g2) + (g3 + g4). Float addition is commutative but
not associative: with two micro-batches per step (one per process) both orders are the same sum and the runs are
bit-identical (the ×world and ÷world scalings are powers of two, exact); with four (the ><former case here) they
differ by float32 rounding, ~1e-7 relative per step, which Adam carries forward (it normalizes each coordinate's
update, so a rounding difference in a near-zero gradient moves that weight by up to lr). Measured over 120 steps
(2026-12-07, printed by the tests): the loss curves within 1.1e-6 relative, the weights within 7.8e-6 in relative
L2 norm (2.7e-4 of its scale in the worst tensor); 240 steps gave 6.4e-6 and 2.2e-5. Asserted: 1e-5 and 1e-4.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_lora_setup, tool_env
from test_train_distributed import shrink_params

from lmrepro import yaml12
from lmrepro.config import LaunchConfig, load_config
from lmrepro.data import load_index
from lmrepro.launch import Machines, _free_port, call, machines, start
from lmrepro.papers.hybrid_attention import artifacts as hy_artifacts
from lmrepro.papers.hybrid_attention import runs as hybrid_runs
from lmrepro.papers.xformer import artifacts as xf_artifacts
from lmrepro.papers.xformer import runs as xf_runs
from lmrepro.paths import project_paths
from lmrepro.pool import run_jobs
from lmrepro.train import load_model
from lmrepro.train import checkpoint as ckpt
from lmrepro.train.foundation import train_run as foundation_run

REPO = Path(__file__).resolve().parents[1]
LOSS_RTOL, WEIGHT_RTOL = 1e-5, 1e-4
ONE, TWO = LaunchConfig(processes=1), LaunchConfig(processes=2)
TWO_SHARDED = LaunchConfig(processes=2, strategy="fsdp")
STEPS = 120  # xformer and hybrid runs: 120 steps (a checkpoint every 30)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """What the child processes see: tool paths, one thread each, no process group of a launch around us."""
    for key, value in tool_env(OMP_NUM_THREADS="1").items():
        monkeypatch.setenv(key, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_project(root: Path, token_dirs) -> Path:
    """params.yaml + profiles with a tiny smoke profile; the ><former and hybrid runs of 240 steps with 2
    sequences per micro-batch (a global batch of 4 splits over 2 processes); no synthetic retrieval rows (no
    tokenizer here)."""
    root.mkdir(parents=True)
    shrink_params(REPO / "params.yaml", root / "params.yaml", load_index(token_dirs[0])["vocab_size"])
    smoke_file = root / "profiles" / "smoke.yaml"
    smoke = yaml12.loads(smoke_file.read_text())
    for section in ("xformer", "hybrid_attention"):
        smoke[section]["micro_batch_size"] = 2
    smoke["xformer"]["batch_size"] = 8  # 4 micro-batches on 1 process, 2 + 2 on 2: sums in another order
    smoke["xformer"]["sizes"]["s1"]["max_tokens"] = STEPS * 8 * 64
    smoke["hybrid_attention"]["sizes"]["s1"]["max_tokens"] = STEPS * 4 * 160
    smoke["hybrid_attention"]["retrieval"] = None
    smoke_file.write_text(yaml12.dumps(smoke))
    for split, src in zip(("train", "validation"), token_dirs):
        shutil.copytree(src, root / "data" / "tokens" / split)
    return root


@pytest.fixture
def projects(tmp_path, token_dirs, monkeypatch):
    """Two projects on the same data (a 1-process and a 2-process run of the same run name), as (cfg, paths)."""
    out = []
    for name in ("one", "two"):
        root = make_project(tmp_path / name, token_dirs)
        out.append((load_config(root / "params.yaml", profile="smoke"), project_paths(root)))
    monkeypatch.chdir(tmp_path)
    return out


def losses(path: Path) -> list[float]:
    with path.open() as fh:
        return [float(row["loss"]) for row in csv.DictReader(fh)]


def assert_close_runs(log_a: Path, log_b: Path, model_a: Path, model_b: Path) -> None:
    a, b = losses(log_a), losses(log_b)
    assert len(a) == len(b) and a
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    print(f"loss curves: max relative difference {worst:.2e} over {len(a)} rows")
    assert worst <= LOSS_RTOL
    sa, sb = load_model(model_a).state_dict(), load_model(model_b).state_dict()
    per_tensor = max((sa[k] - sb[k]).abs().max().item() / sa[k].abs().max().item() for k in sa)
    diff = torch.cat([(sa[k] - sb[k]).flatten() for k in sa]).norm() / torch.cat([sa[k].flatten() for k in sa]).norm()
    print(f"weights: relative L2 difference {diff:.2e}; largest in one tensor {per_tensor:.2e} of its scale")
    assert diff <= WEIGHT_RTOL


def xformer_job(cfg):
    return next(r for r in cfg.xformer.runs() if r.variant == "x" and r.size == "s1" and r.token_fraction == 1.0)


def test_xformer_entry_on_two_processes_matches_one(projects, capfd):
    (cfg1, paths1), (cfg2, paths2) = projects
    job = xformer_job(cfg1)
    [row1] = run_jobs(xf_runs.train_run, [job], (cfg1, paths1), launch=ONE)
    [row2] = run_jobs(xf_runs.train_run, [job], (cfg2, paths2), launch=TWO)
    assert "on 2 processes" in capfd.readouterr().out  # the child's log streamed through
    assert row1["steps"] == row2["steps"] == STEPS
    d1, d2 = (xf_artifacts.run_dirs(p, "x", job.name) for p in (paths1, paths2))
    assert_close_runs(d1["log"], d2["log"], d1["out"] / "final", d2["out"] / "final")


def test_hybrid_entry_on_two_processes_matches_one(projects):
    (cfg1, paths1), (cfg2, paths2) = projects
    job = ("s1", cfg1.hybrid_attention.seeds[0])
    run_jobs(hybrid_runs.train_run, [job], (cfg1, paths1, "swa-small"), launch=ONE)
    run_jobs(hybrid_runs.train_run, [job], (cfg2, paths2, "swa-small"), launch=TWO)
    d1, d2 = (hy_artifacts.run_dirs(p, "swa-small", *job) for p in (paths1, paths2))
    assert_close_runs(d1["log"], d2["log"], d1["out"] / "final", d2["out"] / "final")


@pytest.mark.parametrize("two_processes", [TWO, TWO_SHARDED], ids=["ddp", "fsdp"])
def test_foundation_entry_on_two_processes_matches_one(projects, two_processes, capfd):
    (cfg1, paths1), (cfg2, paths2) = projects
    one = call(foundation_run, (cfg1, paths1), "baseline", ONE)
    two = call(foundation_run, (cfg2, paths2), "baseline", two_processes)
    out = capfd.readouterr().out
    assert "on 2 processes" in out and ("sharded: FSDP" in out) == (two_processes.strategy == "fsdp")
    assert one.completed and two.completed and one.step == two.step
    assert_close_runs(paths1.results("foundation") / "train_log.csv", paths2.results("foundation") / "train_log.csv",
                      paths1.model("baseline") / "final", paths2.model("baseline") / "final")


@pytest.mark.parametrize("first, strategy, then", [(2, "ddp", ONE), (1, "ddp", TWO), (2, "fsdp", ONE),
                                                   (1, "ddp", TWO_SHARDED)],
                         ids=["ddp-then-1", "1-then-ddp", "fsdp-then-1", "1-then-fsdp"])
def test_a_run_interrupted_on_one_count_resumes_on_the_other(projects, tmp_path, first, strategy, then, capfd):
    """Ctrl-C of a launched run after its first checkpoint, sent to the launcher's process group as
    ``lmrepro.launch.run`` forwards a notebook's interrupt; rerun on the other count (and strategy: a sharded run's
    checkpoint is the same full checkpoint)."""
    (cfg_ref, paths_ref), (cfg, paths) = projects
    job = xformer_job(cfg)
    run_jobs(xf_runs.train_run, [job], (cfg_ref, paths_ref), launch=ONE)  # uninterrupted reference

    dirs = xf_artifacts.run_dirs(paths, "x", job.name)
    folder = tmp_path / f"launch-{first}"
    folder.mkdir()
    proc, _ = start(xf_runs.train_run, (cfg, paths), job, first, folder, strategy=strategy)
    deadline = time.monotonic() + 240
    while not any(ckpt.list_checkpoints(p) for p in dirs["ckpt"].glob("*") if p.is_dir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert "training stopped after step" in out, out[-3000:]
    assert ("sharded: FSDP" in out) == (strategy == "fsdp")
    [run_dir] = [p for p in dirs["ckpt"].iterdir() if p.is_dir()]
    stopped = int(ckpt.list_checkpoints(run_dir)[-1].name.split("-")[1])
    assert 0 < stopped < STEPS and not (dirs["out"] / "final").exists()

    capfd.readouterr()
    [row] = run_jobs(xf_runs.train_run, [job], (cfg, paths), launch=then)
    assert row["resumed_from"] == stopped and row["steps"] == STEPS
    assert ("sharded: FSDP" in capfd.readouterr().out) == (then.strategy == "fsdp")
    ref = xf_artifacts.run_dirs(paths_ref, "x", job.name)
    assert_close_runs(ref["log"], dirs["log"], ref["out"] / "final", dirs["out"] / "final")


# -- several machines ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("env, expected", [
    ({}, None),                                                       # no scheduler: one machine
    ({"SKYPILOT_NUM_NODES": "1"}, None),
    ({"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": "1", "SKYPILOT_NODE_IPS": "10.0.0.4\n10.0.0.5\n"},
     Machines(2, 1, "10.0.0.4", 29500)),                              # SkyPilot: the first IP is machine 0's
    ({"LMREPRO_MACHINES": "3", "NODE_RANK": "2", "MASTER_ADDR": "head", "MASTER_PORT": "6000"},
     Machines(3, 2, "head", 6000)),                                   # torchrun-style variables
    ({"LMREPRO_MACHINES": "2", "LMREPRO_MACHINE_RANK": "0", "SLURM_NODEID": "1", "LMREPRO_MAIN_ADDRESS": "a",
      "MASTER_ADDR": "b", "LMREPRO_MAIN_PORT": "7000"}, Machines(2, 0, "a", 7000)),  # ours first
])
def test_machines_from_the_schedulers_environment(env, expected):
    assert machines(LaunchConfig(), env) == expected


def test_machines_in_the_profile_win_over_the_environment():
    env = {"SKYPILOT_NUM_NODES": "4", "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "h"}
    assert machines(LaunchConfig(machines=1), env) is None
    assert machines(LaunchConfig(machines=2), env) == Machines(2, 0, "h", 29500)
    assert machines(None, env) is None  # no launch block: a function that trains here


@pytest.mark.parametrize("env, message", [
    ({"LMREPRO_MACHINES": "2", "LMREPRO_MAIN_ADDRESS": "h"}, "rank is not set: export LMREPRO_MACHINE_RANK"),
    ({"LMREPRO_MACHINES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h"}, r"NODE_RANK='2': a machine rank must be 0\.\.1"),
    ({"LMREPRO_MACHINES": "2", "NODE_RANK": "1"}, "not where machine 0 is: export LMREPRO_MAIN_ADDRESS"),
    ({"LMREPRO_MACHINES": "2", "NODE_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "x"}, "not a TCP port"),
    ({"SKYPILOT_NUM_NODES": "two"}, "is not a machine count"),
])
def test_machines_refuses_an_incomplete_environment(env, message):
    with pytest.raises(ValueError, match=message):
        machines(LaunchConfig(), env)


@pytest.fixture
def machine_projects(tmp_path, token_dirs, monkeypatch):
    """Three projects on the same data, each its own disk: a 1-process reference and machines 0 and 1."""
    out = {}
    for name in ("ref", "m0", "m1"):
        root = make_project(tmp_path / name, token_dirs)
        out[name] = (load_config(root / "params.yaml", profile="smoke"), project_paths(root))
    monkeypatch.chdir(tmp_path)
    return out


def launch_machines(fn, projects, job, folder: Path) -> list[tuple[int, str]]:
    """``fn`` on two "machines" of one process each (localhost, one port), each with its own project."""
    from concurrent.futures import ThreadPoolExecutor

    port = _free_port()
    procs = []
    for rank, (cfg, paths) in enumerate(projects):
        (folder / str(rank)).mkdir(parents=True)
        group = Machines(2, rank, "127.0.0.1", port)
        procs.append(start(fn, (cfg, paths), job, 1, folder / str(rank), group=group)[0])
    with ThreadPoolExecutor(2) as pool:  # drain both pipes at once: a full pipe would stall its machine's step
        outs = list(pool.map(lambda p: p.communicate(timeout=600)[0], procs))
    return [(p.returncode, out) for p, out in zip(procs, outs)]


def test_two_machines_train_the_run_of_one_and_each_keeps_its_outputs(machine_projects, tmp_path):
    (cfg, ref), m0, m1 = (machine_projects[k] for k in ("ref", "m0", "m1"))
    assert call(foundation_run, (cfg, ref), "baseline", ONE).completed
    ends = launch_machines(foundation_run, [m0, m1], "baseline", tmp_path / "launch")
    assert [code for code, _ in ends] == [0, 0], ends[0][1][-3000:] + ends[1][1][-3000:]
    assert "on 2 processes" in ends[0][1]
    for _, paths in (m0, m1):  # each machine has the run's weights, log and resumable checkpoint on its own disk
        assert_close_runs(ref.results("foundation") / "train_log.csv", paths.results("foundation") / "train_log.csv",
                          ref.model("baseline") / "final", paths.model("baseline") / "final")
        assert any(ckpt.list_checkpoints(p) for p in paths.checkpoints("baseline").iterdir() if p.is_dir())
    w0, w1 = (load_model(p.model("baseline") / "final").state_dict() for _, p in (m0, m1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # the replicas are the same to the bit


def test_machines_resume_from_the_newest_step_all_hold_or_refuse(machine_projects, tmp_path):
    """Machine 0 holds checkpoints machine 1 lacks (no mirror): both stop before training, naming each one's
    steps; once machine 1 holds the older of them too, both resume from it and finish as the reference did."""
    (cfg, ref), m0, m1 = (machine_projects[k] for k in ("ref", "m0", "m1"))
    call(foundation_run, (cfg, ref), "baseline", ONE)
    [run_dir] = [p for p in ref.checkpoints("baseline").iterdir() if p.is_dir()]
    older, newest = ckpt.list_checkpoints(run_dir)[-2:]
    shutil.copytree(ref.checkpoints("baseline"), m0[1].checkpoints("baseline"))
    ends = launch_machines(foundation_run, [m0, m1], "baseline", tmp_path / "refused")
    assert all(code != 0 for code, _ in ends)
    assert all("is held by every process" in out for _, out in ends), ends[0][1][-2000:]
    assert not (m1[1].model("baseline") / "final").exists()
    shutil.copytree(older, m1[1].checkpoints("baseline") / run_dir.name / older.name)
    ends = launch_machines(foundation_run, [m0, m1], "baseline", tmp_path / "resumed")
    assert [code for code, _ in ends] == [0, 0], ends[0][1][-3000:]
    assert f"(step {ckpt.step_of(older)})" in ends[0][1] and ckpt.step_of(older) < ckpt.step_of(newest)
    for _, paths in (m0, m1):
        assert_close_runs(ref.results("foundation") / "train_log.csv", paths.results("foundation") / "train_log.csv",
                          ref.model("baseline") / "final", paths.model("baseline") / "final")


def test_a_failure_on_one_machine_stops_both(machine_projects, tmp_path):
    """A run folder locked on machine 1 (another trainer holds it): machine 0 stops too instead of waiting in
    its next collective, and says why."""
    from lmrepro.train.guard import RunLock

    (cfg, _), m0, m1 = (machine_projects[k] for k in ("ref", "m0", "m1"))
    held = RunLock(m1[1].checkpoints("baseline")).acquire()
    try:
        ends = launch_machines(foundation_run, [m0, m1], "baseline", tmp_path / "launch")
    finally:
        held.release()
    assert all(code != 0 for code, _ in ends)
    assert "another process of this run failed" in ends[0][1] and "another trainer holds this run" in ends[1][1]


def test_machines_sharing_a_checkpoint_folder_refuse(machine_projects, tmp_path):
    """Both "machines" on one project folder (a network disk): each would write the same checkpoint files."""
    m0 = machine_projects["m0"]
    ends = launch_machines(foundation_run, [m0, m0], "baseline", tmp_path / "launch")
    assert all(code != 0 for code, _ in ends)
    assert "is shared with other machines" in ends[0][1] + ends[1][1]


@pytest.mark.parametrize("two", [TWO, TWO_SHARDED], ids=["ddp", "fsdp"])
def test_the_gpu_checks_trainer_probe_resumes_on_two_processes(two, capfd):
    """lmrepro.probe (part 3 of scripts/gpu_check.py) through a 2-process launch, as on a 2-GPU machine, also
    sharded (the check's FSDP probe of the largest size)."""
    from lmrepro.probe import probe

    cfg = load_config(REPO / "params.yaml", profile="smoke")
    out = call(probe, (cfg,), ("xformer", "s1"), two)
    assert ("sharded: FSDP" in capfd.readouterr().out) == (two.strategy == "fsdp")
    assert (out["processes"], out["resumed_from_step"], out["steps"], out["completed"]) == (2, 1, 2, True)
    assert out["micro_batch_size"] == cfg.xformer.micro_batch_size and out["final_loss"] > 0


def test_launch_problems_name_an_indivisible_batch_and_a_missing_rank():
    """lmrepro.launch.problems (the params-check's launch step) on the paper profile: 8 processes on 4 machines
    split the foundation batch of 128 = 8 × 16 and LoRA-α's 64 = 4 × 16 too finely, as 8 processes do LoRA-α's
    64 with micro-batches of 16; 2 SkyPilot nodes without a rank cannot start."""
    import dataclasses

    from lmrepro.launch import problems

    paper = load_config(REPO / "params.yaml", profile="paper")
    assert problems(paper, {}) == []
    wide = dataclasses.replace(paper, launch=LaunchConfig(processes=8, machines=4))
    found = problems(wide, {"LMREPRO_MACHINE_RANK": "0", "LMREPRO_MAIN_ADDRESS": "head"})
    assert found == ["foundation baseline: batch_size 128 is not a multiple of micro_batch_size 8 × 32 processes "
                     "(launch.processes, launch.machines): use fewer processes or change the batch",
                     "lora_alpha: train.batch_size 64 is not a multiple of micro_batch_size 4 × 32 processes "
                     "(launch.processes, launch.machines): use fewer processes or change the batch"]
    lora = dataclasses.replace(paper.lora_alpha, train=dataclasses.replace(paper.lora_alpha.train, micro_batch_size=16))
    odd = dataclasses.replace(paper, launch=LaunchConfig(processes=8), papers={**paper.papers, "lora_alpha": lora})
    assert problems(odd, {}) == ["lora_alpha: train.batch_size 64 is not a multiple of micro_batch_size 16 × 8 "
                                 "processes (launch.processes, launch.machines): use fewer processes or change the "
                                 "batch"]
    sharded = dataclasses.replace(paper, launch=LaunchConfig(processes=8, machines=2, strategy="fsdp"))
    assert problems(sharded, {"LMREPRO_MACHINE_RANK": "0", "LMREPRO_MAIN_ADDRESS": "head"}) == [
        "launch.strategy fsdp runs on one machine, but 2 machines are asked for: use ddp across machines"]
    (missing,) = problems(dataclasses.replace(paper, launch=LaunchConfig(processes=8)), {"SKYPILOT_NUM_NODES": "2"})
    assert missing.startswith("launch: 2 machines, but this machine's rank is not set")


def test_lora_and_full_finetuning_on_two_processes_match_one(capfd):
    """The fine-tuning entry (LoRA-α's method trials; LoRA and full fine-tuning): 2 gloo processes, each with its
    half of every batch, reach the 1-process curve, validation losses and weights."""
    from lmrepro.lora.alpha import alpha_for
    from lmrepro.lora.finetune import dataset_batches
    from lmrepro.papers.lora_alpha.evaluate import method_trial
    from lmrepro.papers.lora_alpha.runs import RunSpec

    cfg, base, data = tiny_lora_setup(load_config(REPO / "params.yaml", profile="smoke"))
    # The case DDP must not hang on: a process whose last micro-batch has no supervised token still all-reduces.
    batches = dataset_batches(data.train, 4, cfg.lora_alpha.seed)
    assert any((batches(s)["labels"][i, 1:] == -100).all() for s in range(6) for i in (1, 3))
    jobs = [("lora_2r", 4, "lr", 3e-3, RunSpec(3e-3, alpha_for("2r", 4)), 3, True),
            ("full", 0, "lr", 1e-3, RunSpec(1e-3, None), 3, True)]
    found = []
    for job in jobs:
        row1, curve1, w1 = call(method_trial, (cfg, base, data), job, ONE)
        row2, curve2, w2 = call(method_trial, (cfg, base, data), job, TWO)
        assert "fine-tuning 6 steps on 2 processes" in capfd.readouterr().out  # the child really split the batch
        assert [c["step"] for c in curve1] == [c["step"] for c in curve2] == list(range(1, 7))
        for a, b in zip(curve1, curve2):
            assert b["loss"] == pytest.approx(a["loss"], rel=LOSS_RTOL), (job[0], a["step"])
        for key in ("select_loss", "report_loss", "train_loss_end"):
            assert row2[key] == pytest.approx(row1[key], rel=LOSS_RTOL), (job[0], key)
        assert w1.keys() == w2.keys() and len(w1) > 0
        diff = (torch.cat([(w1[k] - w2[k]).flatten() for k in w1]).norm()
                / torch.cat([w1[k].flatten() for k in w1]).norm())
        worst = max(abs(b["loss"] / a["loss"] - 1) for a, b in zip(curve1, curve2))
        found.append(f"{job[0]}: loss curve {worst:.1e}, weights {diff:.1e} (relative L2)")
        assert diff <= WEIGHT_RTOL
        assert curve1[-1]["loss"] != curve1[0]["loss"]  # it trained
    print("1 vs 2 processes:", "; ".join(found))


def lora_run(cfg, base, data, job) -> tuple[int, int | None, list[dict], dict[str, torch.Tensor]]:
    """A LoRA-α fine-tuning run (``runs.train_run``) stopped after ``until`` steps (None: to the end), for a launch:
    (steps done, step it resumed from, logged rows, trainable weights)."""
    from lmrepro.papers.lora_alpha.runs import train_run

    spec, until = job
    model, result = train_run(cfg, base, data, spec, eval_split="report", eval_every=3, until_step=until)
    weights = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    return result.steps_done, result.resumed_from, result.rows, weights


@pytest.mark.parametrize("first, then", [(TWO, ONE), (ONE, TWO)], ids=["2-then-1", "1-then-2"])
def test_a_fine_tuning_run_stopped_on_one_count_resumes_on_the_other(first, then, tmp_path, monkeypatch):
    """LoRA-α's resumable runs (train.save_every_steps): stopped after 4 of 6 steps on one process count, resumed
    on the other, they end where an uninterrupted run without checkpoints ends."""
    from lmrepro.lora.alpha import alpha_for
    from lmrepro.papers.lora_alpha.runs import RunSpec

    monkeypatch.setenv("LMREPRO_CHECKPOINT_ROOT", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    smoke = load_config(REPO / "params.yaml", profile="smoke")
    cfg, base, data = tiny_lora_setup(smoke, save_every_steps=2)
    plain = tiny_lora_setup(smoke)[0]
    spec = RunSpec(3e-3, alpha_for("2r", 4))
    steps, _, rows, weights = lora_run(plain, base, data, (spec, None))
    assert call(lora_run, (cfg, base, data), (spec, 4), first)[:2] == (4, None)
    steps2, resumed, rows2, weights2 = call(lora_run, (cfg, base, data), (spec, None), then)
    assert steps == steps2 == 6 and resumed == 4 and [r["step"] for r in rows] == [r["step"] for r in rows2]
    for a, b in zip(rows, rows2):
        for key in ("loss", "eval_loss"):
            assert (key in a) == (key in b) and b.get(key, 0) == pytest.approx(a.get(key, 0), rel=LOSS_RTOL)
    diff = (torch.cat([(weights[k] - weights2[k]).flatten() for k in weights]).norm()
            / torch.cat([weights[k].flatten() for k in weights]).norm())
    assert diff <= WEIGHT_RTOL
