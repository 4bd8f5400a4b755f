"""Each run of a training stage on several processes: the notebook stays the stage, the run goes to a child.

``run_jobs(…, launch=cfg.launch)`` (:mod:`lmrepro.pool`) hands every run here when the profile's ``launch``
block asks for more than one process (``processes: null`` = every visible CUDA GPU). The run's function and
arguments are pickled to a file, ``accelerate launch --multi_gpu --num_processes N -m lmrepro.launch JOB RESULT``
trains it — each process calls the same function, whose :class:`~lmrepro.train.Trainer` joins the process group
(NCCL on GPUs, gloo on CPU) and splits every global batch between the processes — and the first process writes
the function's return value to RESULT. The child's output streams into the notebook's output line by line.
Ctrl-C in the notebook goes to the launcher and every process: each finishes its step, the first saves a
resumable checkpoint (torchrun's agent allows 900 s for it before SIGKILL: ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``),
and the stage stops; rerunning resumes on any process count.

Processes run the runs of a stage one after another (each run uses every GPU). What a run computes does not
depend on the count (same global batch, micro-batches split between processes, the loss normalized by the global
token count); the numbers agree to float rounding of the gradient all-reduce (tests/test_launch.py).
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable


_GROUP_VARS = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK"}


def processes(launch) -> int:
    """Processes per run for a ``LaunchConfig``: its ``processes``, or every visible CUDA GPU (1 without CUDA)."""
    if launch is None:
        return 1
    if launch.processes is not None:
        return launch.processes
    import torch

    return max(1, torch.cuda.device_count())


def call(fn: Callable, shared: tuple, job: Any, launch, threads: int = 1) -> Any:
    """``fn(*shared, job)``: here when ``launch`` means one process (torch threads as they are), else through
    :func:`run` on that many processes."""
    n = processes(launch)
    return fn(*shared, job) if n == 1 else run(fn, shared, job, n, threads)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(fn: Callable, shared: tuple, job: Any, n: int, folder: str | Path,
          threads: int = 1) -> tuple[subprocess.Popen, Path]:
    """Start ``fn(*shared, job)`` on ``n`` processes; (the launcher process, in its own process group, with stdout
    and stderr merged into a pipe; the file its result will be in)."""
    folder = Path(folder)
    job_file, result, config = folder / "job.pkl", folder / "result.pkl", folder / "accelerate.yaml"
    with job_file.open("wb") as fh:
        pickle.dump((fn, shared, job, threads), fh)
    # A config file of our own, so the user's default accelerate config (FSDP, gpu_ids, ...) cannot leak in.
    # MULTI_GPU: accelerate's torchrun path, which gives gloo processes on a machine without CUDA (its CPU path is
    # MPI's and starts one process); accelerate refuses it for a single process.
    config.write_text("\n".join([
        "compute_environment: LOCAL_MACHINE", f"distributed_type: {'MULTI_GPU' if n > 1 else 'NO'}",
        f"num_processes: {n}", "num_machines: 1", "machine_rank: 0", "mixed_precision: 'no'", "use_cpu: false",
        "gpu_ids: all", "rdzv_backend: static", "same_network: true", "main_training_function: main", ""]))
    group = ["--multi_gpu", "--main_process_port", str(_free_port())] if n > 1 else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *group,
           "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "lmrepro.launch", str(job_file), str(result)]
    # The run's own precision (train.precision) decides autocast: the Trainer's Accelerator says so explicitly,
    # which overrides the launcher's --mixed_precision. One thread per process on CPU unless the caller says.
    # The launcher sets the process-group variables; stale ones (a notebook started from another launch) go.
    env = {k: v for k, v in os.environ.items() if k not in _GROUP_VARS and not k.startswith(("ACCELERATE_",
                                                                                          "TORCHELASTIC_"))}
    # torchrun's agent gives the workers this long after a Ctrl-C / SIGTERM before it kills them (default 30 s):
    # time to finish the step, save the checkpoint and upload it to the mirror.
    env.update(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(threads)), PYTHONUNBUFFERED="1",
               TORCH_ELASTIC_SHUTDOWN_TIMEOUT=os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "900"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env,
                            start_new_session=True)
    return proc, result


def run(fn: Callable, shared: tuple, job: Any, n: int, threads: int = 1) -> Any:
    """``fn(*shared, job)`` on ``n`` processes; its return value (from the first process). Raises RuntimeError
    naming the exit status when the launch fails; on Ctrl-C, forwards it and waits for the checkpoint."""
    with tempfile.TemporaryDirectory(prefix="lmrepro-launch-") as tmp:
        proc, result = start(fn, shared, job, n, tmp, threads)
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
            raise RuntimeError(f"the {n}-process launch of {job!r} failed (exit status {code}); its output is above")
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
    if int(os.environ.get("RANK", "0")) == 0:
        with open(result, "wb") as fh:
            pickle.dump(out, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
