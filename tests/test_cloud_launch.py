"""The cloud launch (cloud/sky/node.yaml and nodes.yaml, cloud/setup.sh, cloud/run.sh, cloud/accelerate/) without
a cloud account: SkyPilot's own loader parses the tasks (SkyPilot in a venv of its own, as requirements/skypilot.txt
says), and the task's setup and run commands run here in dry-run mode, printing the commands a node would run,
which are then checked against the real tools (the DVC targets exist, the make targets exist)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tool_env

from lmrepro import yaml12

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "cloud/sky/node.yaml"


@pytest.fixture(scope="module")
def sky_python(tmp_path_factory) -> Path:
    """A venv with the pinned SkyPilot (about 45 s from the package index)."""
    venv = tmp_path_factory.mktemp("sky") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "-r",
                    str(ROOT / "requirements/skypilot.txt")], check=True, capture_output=True)
    return venv / "bin/python"


LOAD = """
import json, sys
import sky
from sky.utils import yaml_utils
config = yaml_utils.read_yaml(sys.argv[1])
try:  # the loader checks the task schema: a misspelled key is refused
    sky.Task.from_yaml_config({**config, "resorces": config["resources"]})
    sys.exit("a misspelled key was accepted")
except ValueError:
    pass
task = sky.Task.from_yaml_config(config, env_overrides=[("DVC_REMOTE", "s3://bucket/lmrepro")],
                                 secrets_overrides=[("HF_TOKEN", "hf_test")])
print(json.dumps({"nodes": task.num_nodes, "setup": task.setup, "run": task.run, "envs": task.envs,
                  "secrets": sorted(task.secrets), "workdir": task.workdir,
                  "accelerators": [r.accelerators for r in task.resources],
                  "disk": [r.disk_size for r in task.resources]}))
"""


def test_skypilot_loads_the_task(sky_python):
    out = subprocess.run([str(sky_python), "-c", LOAD, str(TASK)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    task = json.loads(out.stdout.splitlines()[-1])
    assert task["nodes"] == 1 and task["workdir"] == "."
    assert sorted(a for acc in task["accelerators"] for a in acc.items()) == [("A100-80GB", 8), ("H100", 8),
                                                                             ("H200", 8)]
    assert task["setup"] == "bash cloud/setup.sh" and task["run"] == "bash cloud/run.sh"
    assert task["envs"]["DVC_REMOTE"] == "s3://bucket/lmrepro" and task["envs"]["PROFILE"] == "paper"
    assert task["secrets"] == ["HF_TOKEN"]


def test_the_multinode_task_is_the_node_task_on_two_nodes(sky_python):
    tasks = []
    for path in (TASK, ROOT / "cloud/sky/nodes.yaml"):
        out = subprocess.run([str(sky_python), "-c", LOAD, str(path)], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-3000:]
        task = json.loads(out.stdout.splitlines()[-1])
        task["accelerators"] = sorted(json.dumps(a, sort_keys=True) for a in task["accelerators"])  # a set: any order
        tasks.append(task)
    one, several = tasks
    assert one.pop("nodes") == 1 and several.pop("nodes") == 2
    assert one == several


def dry_run(command: str, **envs: str) -> subprocess.CompletedProcess:
    """The task's ``setup`` or ``run`` command as SkyPilot runs it (bash, the task's envs), in dry-run mode."""
    task = yaml12.loads(TASK.read_text())
    env = tool_env(**{k: str(v) for k, v in task["envs"].items()}, LMREPRO_DRY_RUN="1")
    env.update(envs)
    return subprocess.run(["bash", "-c", task[command]], cwd=ROOT, env=env, capture_output=True, text=True)


def planned(out: subprocess.CompletedProcess) -> list[list[str]]:
    """The commands a dry run printed, each as its words (`conda run … -n lmrepro` stripped)."""
    assert out.returncode == 0, out.stderr
    words = [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith("+ ")]
    return [w[5:] if w[:5] == ["conda", "run", "--no-capture-output", "-n", "lmrepro"] else w for w in words]


def test_setup_installs_the_environment_configures_the_remote_and_pulls():
    plan = planned(dry_run("setup", DVC_REMOTE="s3://bucket/lmrepro", DVC_REMOTE_ENDPOINT="http://10.0.0.2:9000"))
    assert plan[0][:3] in (["conda", "env", "create"], ["conda", "env", "update"]) and plan[0][-1] == "environment.yml"
    assert plan[1:] == [["make", "setup"],
                        ["make", "remote", "URL=s3://bucket/lmrepro", "ENDPOINT=http://10.0.0.2:9000"],
                        ["dvc", "pull", "--allow-missing"]]
    make = subprocess.run(["make", "-n", "-o", "setup", "remote", "URL=s3://bucket/lmrepro"], cwd=ROOT,
                          env=tool_env(), capture_output=True, text=True)
    assert make.returncode == 0 and "lmrepro.remote --install" in make.stdout
    assert "--allow-missing" in subprocess.run(["dvc", "pull", "--help"], capture_output=True, text=True,
                                               env=tool_env()).stdout


@pytest.mark.parametrize("paper, target", [("xformer", ["pipelines/xformer/dvc.yaml"]),
                                           ("foundation", ["foundation-report"]), ("all", [])])
def test_run_starts_the_paper_as_an_experiment_and_pushes_it(paper, target):
    plan = planned(dry_run("run", DVC_REMOTE="s3://bucket/lmrepro", PAPER=paper))
    (exp_run, exp_push) = plan
    assert exp_run[:4] == ["dvc", "exp", "run", "--temp"] and exp_run[6:] == ["-S", "profile=paper", *target]
    name = exp_run[5]
    assert re.fullmatch(rf"paper-{paper}-\d{{8}}-\d{{6}}", name)
    assert exp_push == ["dvc", "exp", "push", "origin", name]
    # the targets are real stages and pipeline files of this project
    for t in target:
        listed = subprocess.run(["dvc", "stage", "list", t], cwd=ROOT, env=tool_env(), capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr


def test_on_several_nodes_only_node_0_pushes():
    for rank, pushes in (("0", True), ("1", False)):
        plan = planned(dry_run("run", DVC_REMOTE="s3://bucket/lmrepro", SKYPILOT_NODE_RANK=rank))
        assert plan[0][:4] == ["dvc", "exp", "run", "--temp"]
        assert (len(plan) == 2 and plan[1][:3] == ["dvc", "exp", "push"]) == pushes, plan


@pytest.mark.parametrize("envs, message", [
    ({"DVC_REMOTE": ""}, "set DVC_REMOTE"),
    ({"DVC_REMOTE": "s3://b/p", "PAPER": "xformers"}, "PAPER must be one of foundation, hybrid_attention"),
    ({"DVC_REMOTE": "s3://b/p", "PROFILE": "large"}, "PROFILE must be one of smoke, laptop, mid, paper"),
])
def test_a_wrong_setting_stops_before_anything_runs(envs, message):
    out = dry_run("run", **envs)
    assert out.returncode == 2 and message in out.stderr and "+ " not in out.stdout


def test_the_shipped_fsdp_config_loads_as_fsdp2():
    """cloud/accelerate/node_fsdp.yaml through accelerate's loader: FSDP (version 2) on 8 processes of one machine,
    which the Trainer reads as launch strategy fsdp (it trains for real in tests/test_train_distributed.py)."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "cloud/accelerate/node_fsdp.yaml"))
    assert (config.distributed_type.value, config.num_processes, config.num_machines) == ("FSDP", 8, 1)
    assert config.fsdp_config["fsdp_version"] == 2 and config.mixed_precision == "no" and not config.use_cpu


@pytest.mark.parametrize("name, kind, processes, machines", [("one_gpu", "NO", 1, 1), ("node_ddp", "MULTI_GPU", 8, 1),
                                                             ("nodes_ddp", "MULTI_GPU", 16, 2)])
def test_shipped_accelerate_configs_load_and_match_the_launcher(name, kind, processes, machines, tmp_path):
    """cloud/accelerate/*.yaml through accelerate's own loader (an unknown key or a bad value fails there), with the
    settings lmrepro.launch writes for its own launches (static rendezvous, no launcher-side mixed precision).
    node_ddp.yaml also trains for real in tests/test_train_distributed.py."""
    from accelerate.commands.config.config_args import load_config_from_file

    from lmrepro.launch import Machines, start

    config = load_config_from_file(str(ROOT / "cloud/accelerate" / f"{name}.yaml"))
    assert (config.distributed_type.value, config.num_processes, config.num_machines) == (kind, processes, machines)
    assert config.mixed_precision == "no" and not config.use_cpu
    # the config the launcher writes for the same shape (the launch is stopped before it trains)
    group = Machines(machines, 0, "127.0.0.1", 29500) if machines > 1 else None
    proc, _ = start(print, (), "x", processes // machines, tmp_path, group=group)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    ours = load_config_from_file(str(tmp_path / "accelerate.yaml"))
    group_keys = ("rdzv_backend", "same_network") if processes > 1 else ()  # how a process group meets
    for key in ("distributed_type", "num_processes", "num_machines", "mixed_precision", "use_cpu", "gpu_ids",
                *group_keys):
        assert getattr(ours, key) == getattr(config, key), key
