"""Each run of a training stage on several processes: the notebook stays the stage, the run goes to a child.

``run_jobs(…, launch=cfg.launch)`` (:mod:`lmrepro.pool`) hands every run here when the profile's ``launch``
block asks for more than one process (``processes: null`` = every visible CUDA GPU). The run's function and
arguments are pickled to a file, ``accelerate launch --multi_gpu --num_processes N -m lmrepro.launch JOB RESULT``
trains it — each process calls the same function, whose :class:`~lmrepro.train.Trainer` joins the process group
(NCCL on GPUs, gloo on CPU) and splits every global batch between the processes — and each machine's first
process writes the function's return value to RESULT. The child's output streams into the notebook's output line
by line. Ctrl-C in the notebook goes to the launcher and every process: each finishes its step, each machine's
first process saves a resumable checkpoint (torchrun's agent allows 900 s for it before SIGKILL:
``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``), and the stage stops; rerunning resumes on any process count.

Processes run the runs of a stage one after another (each run uses every GPU). What a run computes does not
depend on the count (same global batch, micro-batches split between processes, the loss normalized by the global
token count); the numbers agree to float rounding of the gradient all-reduce (tests/test_launch.py). The same holds
for LoRA-α's fine-tuning runs (LoRA and full fine-tuning: :mod:`lmrepro.lora.finetune` under DDP), resumable on any
count with ``lora_alpha.train.save_every_steps`` (:mod:`lmrepro.lora.checkpoints`; not mirrored). ``launch.strategy:
fsdp`` shards the Trainer's runs instead (:mod:`lmrepro.train.fsdp`, one machine).

Several machines (``launch.machines`` above 1, or a scheduler's node count): every machine runs the same stages
(the same ``dvc exp run``), and each run's processes on all machines join one group through the first machine's
address and port (:func:`machines`: ``LMREPRO_MACHINE_RANK`` / ``LMREPRO_MAIN_ADDRESS`` / ``LMREPRO_MAIN_PORT``,
or what SkyPilot, torchrun-style schedulers and Slurm set). Every machine's first process writes the run's
outputs and checkpoints to its own disk (the weights are the same on every process), so each machine's next stage
finds them; the first machine alone mirrors checkpoints and pushes results.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping


_GROUP_VARS = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK"}


def processes(launch) -> int:
    """Processes per run for a ``LaunchConfig``: its ``processes``, or every visible CUDA GPU (1 without CUDA)."""
    if launch is None:
        return 1
    if launch.processes is not None:
        return launch.processes
    import torch

    return max(1, torch.cuda.device_count())


@dataclass(frozen=True)
class Machines:
    """This machine's place among ``count`` machines that train each run together."""

    count: int
    rank: int  # 0 on the first machine, whose address and port every process connects to
    address: str
    port: int


# Where schedulers put a machine's rank, the first machine's address and the port, in the order they are read.
RANK_VARS = ("LMREPRO_MACHINE_RANK", "SKYPILOT_NODE_RANK", "NODE_RANK", "SLURM_NODEID")
ADDRESS_VARS = ("LMREPRO_MAIN_ADDRESS", "MASTER_ADDR", "SKYPILOT_NODE_IPS")  # SkyPilot: one IP per line, first = 0
PORT_VARS = ("LMREPRO_MAIN_PORT", "MASTER_PORT")
DEFAULT_PORT = 29500


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    return next(((n, env[n].strip()) for n in names if env.get(n, "").strip()), None)


def machines(launch, environ: Mapping[str, str] | None = None) -> Machines | None:
    """None for one machine; for several, this machine's rank and the first machine's address and port, read from
    the environment (``RANK_VARS``, ``ADDRESS_VARS``, ``PORT_VARS``). The count is ``launch.machines``, or with
    null ``LMREPRO_MACHINES`` / ``SKYPILOT_NUM_NODES`` (1 without). Raises ValueError naming what is missing."""
    if launch is None:  # a function that does not train through the Trainer: here, on one machine
        return None
    env = os.environ if environ is None else environ
    count = launch.machines
    if count is None:
        found = _first(env, ("LMREPRO_MACHINES", "SKYPILOT_NUM_NODES"))
        try:
            count = int(found[1]) if found else 1
        except ValueError:
            raise ValueError(f"{found[0]}={found[1]!r} is not a machine count (a whole number >= 1)") from None
    if count < 1:
        raise ValueError(f"launch.machines must be >= 1, got {count}")
    if count == 1:
        return None
    rank = _first(env, RANK_VARS)
    if rank is None:
        raise ValueError(f"{count} machines, but this machine's rank is not set: export LMREPRO_MACHINE_RANK (0 on "
                         f"the machine whose address the others reach, 1..{count - 1} on the others); read from "
                         f"{', '.join(RANK_VARS)}")
    if not rank[1].isdigit() or not 0 <= int(rank[1]) < count:
        raise ValueError(f"{rank[0]}={rank[1]!r}: a machine rank must be 0..{count - 1} for {count} machines")
    address = _first(env, ADDRESS_VARS)
    if address is None:
        raise ValueError(f"{count} machines, but not where machine 0 is: export LMREPRO_MAIN_ADDRESS (its IP or host "
                         f"name, the same on every machine); read from {', '.join(ADDRESS_VARS)}")
    port = _first(env, PORT_VARS)
    if port is not None and not (port[1].isdigit() and 0 < int(port[1]) < 65536):
        raise ValueError(f"{port[0]}={port[1]!r} is not a TCP port (1..65535)")
    return Machines(count, int(rank[1]), address[1].split()[0], int(port[1]) if port else DEFAULT_PORT)


def problems(cfg, environ: Mapping[str, str] | None = None) -> list[str]:
    """What would stop a training stage of ``cfg`` on this machine's launch, found before any stage runs (the
    params-check stage): the machines' environment (:func:`machines`), trackers (``train.trackers``) not installed
    here, and every Trainer-based or fine-tuning run whose ``batch_size`` is not a multiple of ``micro_batch_size``
    × processes × machines. Empty when all is well."""
    from .probe import entries, entry_model
    from .train.trackers import missing_trackers

    try:
        group = machines(cfg.launch, environ)
    except ValueError as err:
        return [f"launch: {err}"]
    world = processes(cfg.launch) * (group.count if group else 1)
    found, trackers = [], set()
    if cfg.launch.strategy == "fsdp" and group is not None:
        found.append(f"launch.strategy fsdp runs on one machine, but {group.count} machines are asked for: use ddp "
                     "across machines")
    for entry, size in entries(cfg):
        t = entry_model(cfg, entry, size)[1]
        trackers.update(t.trackers)
        if t.batch_size % (t.micro_batch_size * world):
            found.append(_indivisible(f"{entry} {size}: batch_size", t.batch_size, t.micro_batch_size, world))
    la = cfg.papers.get("lora_alpha")
    if la is not None:  # its fine-tuning runs split every batch the same way (lmrepro.lora.finetune)
        micro = la.train.micro_batch_size or 1
        if la.train.batch_size % (micro * world):
            found.append(_indivisible("lora_alpha: train.batch_size", la.train.batch_size, micro, world))
    missing = missing_trackers(sorted(trackers))
    if missing:
        found.append(f"train.trackers: {missing} not installed on this machine (pip install {' '.join(missing)})")
    return found


def _indivisible(what: str, batch: int, micro: int, world: int) -> str:
    return (f"{what} {batch} is not a multiple of micro_batch_size {micro} × {world} processes (launch.processes, "
            "launch.machines): use fewer processes or change the batch")


def call(fn: Callable, shared: tuple, job: Any, launch, threads: int = 1) -> Any:
    """``fn(*shared, job)``: here when ``launch`` means one process on one machine (torch threads as they are),
    else through :func:`run` on that many processes (per machine) and machines."""
    n, group = processes(launch), machines(launch)
    if n == 1 and group is None:
        return fn(*shared, job)
    return run(fn, shared, job, n, threads, group, launch.strategy)


class HostPickler(pickle.Pickler):
    """Pickles tensors on an accelerator as CPU copies (a parameter stays a parameter; an object met twice, e.g. tied
    weights, is still pickled once). Every process of a launch unpickles the job: a base model pickled from GPU 0
    would otherwise land on GPU 0 in all of them before each run moves its own copy to its own device."""

    def reducer_override(self, obj):
        import torch

        if not isinstance(obj, torch.Tensor) or obj.device.type == "cpu":
            return NotImplemented
        host = obj.detach().cpu()
        if isinstance(obj, torch.nn.Parameter):
            host = torch.nn.Parameter(host, requires_grad=obj.requires_grad)
        return host.__reduce_ex__(pickle.DEFAULT_PROTOCOL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(fn: Callable, shared: tuple, job: Any, n: int, folder: str | Path, threads: int = 1,
          group: Machines | None = None, strategy: str = "ddp") -> tuple[subprocess.Popen, Path]:
    """Start ``fn(*shared, job)`` on ``n`` processes of this machine (joined by those of the other machines of
    ``group``); (the launcher process, in its own process group, with stdout and stderr merged into a pipe; the
    file its result will be in)."""
    folder = Path(folder)
    job_file, result, config = folder / "job.pkl", folder / "result.pkl", folder / "accelerate.yaml"
    with job_file.open("wb") as fh:
        HostPickler(fh).dump((fn, shared, job, threads))
    # A config file of our own, so the user's default accelerate config (FSDP, gpu_ids, ...) cannot leak in.
    # MULTI_GPU: accelerate's torchrun path, which gives gloo processes on a machine without CUDA (its CPU path is
    # MPI's and starts one process); accelerate refuses it for a single process.
    # accelerate counts processes over all machines; torchrun starts total ÷ machines on each.
    count, rank = (group.count, group.rank) if group else (1, 0)
    total = n * count
    config.write_text("\n".join([
        # 'NO' quoted: YAML 1.1 (accelerate's loader) reads a bare NO as False
        "compute_environment: LOCAL_MACHINE", f"distributed_type: {'MULTI_GPU' if total > 1 else repr('NO')}",
        f"num_processes: {total}", f"num_machines: {count}", f"machine_rank: {rank}", "mixed_precision: 'no'",
        "use_cpu: false", "gpu_ids: all", "rdzv_backend: static", "same_network: true",
        "main_training_function: main", ""]))
    if group:  # every machine names the first one's address and the same port
        where = ["--main_process_ip", group.address, "--main_process_port", str(group.port)]
    else:
        where = ["--main_process_port", str(_free_port())]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           *(["--multi_gpu", *where] if total > 1 else []),
           "--num_processes", str(total), "--num_machines", str(count), "--machine_rank", str(rank),
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmrepro.launch", str(job_file), str(result)]
    # The run's own precision (train.precision) decides autocast: the Trainer's Accelerator says so explicitly,
    # which overrides the launcher's --mixed_precision. One thread per process on CPU unless the caller says.
    # The launcher sets the process-group variables; stale ones (a notebook started from another launch) go.
    env = {k: v for k, v in os.environ.items() if k not in _GROUP_VARS and not k.startswith(("ACCELERATE_",
                                                                                          "TORCHELASTIC_"))}
    # torchrun's agent gives the workers this long after a Ctrl-C / SIGTERM before it kills them (default 30 s):
    # time to finish the step, save the checkpoint and upload it to the mirror.
    env.update(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(threads)), PYTHONUNBUFFERED="1",
               LMREPRO_STRATEGY=strategy,  # the Trainer's (lmrepro.train.fsdp.ENV)
               TORCH_ELASTIC_SHUTDOWN_TIMEOUT=os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "900"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env,
                            start_new_session=True)
    return proc, result


def run(fn: Callable, shared: tuple, job: Any, n: int, threads: int = 1, group: Machines | None = None,
        strategy: str = "ddp") -> Any:
    """``fn(*shared, job)`` on ``n`` processes (of each machine of ``group``); its return value (from this machine's
    first process). Raises RuntimeError naming the exit status when the launch fails; on Ctrl-C, forwards it and
    waits for the checkpoint."""
    with tempfile.TemporaryDirectory(prefix="lmrepro-launch-") as tmp:
        proc, result = start(fn, shared, job, n, tmp, threads, group, strategy)
        try:
            for line in proc.stdout:
                print(line, end="", flush=True)
            code = proc.wait()
        except KeyboardInterrupt:  # the notebook's Ctrl-C / interrupt: every process saves and stops
            try:
                os.killpg(proc.pid, signal.SIGINT)
            except ProcessLookupError:  # the launch had ended already
                pass
            for line in proc.stdout:
                print(line, end="", flush=True)
            proc.wait()
            raise
        if code != 0 or not result.is_file():
            where = f" on machine {group.rank} of {group.count}" if group else ""
            raise RuntimeError(f"the {n}-process launch of {job!r}{where} failed (exit status {code}); its output is "
                               "above")
        with result.open("rb") as fh:
            return pickle.load(fh)


def main(argv: list[str] | None = None) -> int:
    """Child entry (every process): ``python -m lmrepro.launch JOB RESULT``."""
    import logging

    import torch

    job_file, result = (argv if argv is not None else sys.argv[1:])
    with open(job_file, "rb") as fh:
        fn, shared, job, threads = pickle.load(fh)
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    out = fn(*shared, job)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # every machine's notebook reads its own result
        with open(result, "wb") as fh:
            pickle.dump(out, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
