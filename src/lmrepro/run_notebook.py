"""``python -m lmrepro.run_notebook IN OUT [-p NAME VALUE]…``: papermill for a DVC stage, safe to interrupt.

Every stage command runs its notebook through this (papermill's own options ``--log-output --no-progress-bar``
added). Papermill alone turns Ctrl-C into a ZMQError trace and kills the kernel mid-step. Here papermill runs in
its own session, so Ctrl-C reaches only this process, which forwards it to the kernel as an interrupt: the trainer
(:class:`lmrepro.train.guard.Watch`) finishes its step, saves a resumable checkpoint and stops; papermill writes the
executed notebook; this process prints one line and exits with 130. A second Ctrl-C stops everything at once.
If DVC itself is killed the kernel's watch sees it and stops the same way (no orphan keeps training).

The executed notebook's metadata gets ``lmrepro.resources``: wall time, the CPU time of papermill and its kernel
(``cpu_s``, user + system, every core) and the cores of the machine, so ``python -m lmrepro.stage_times`` can say
how busy a stage kept the machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

INTERRUPTED = 130  # the shell's code for "ended by SIGINT"


def _kernels(papermill: psutil.Process) -> list[psutil.Process]:
    try:
        return [p for p in papermill.children(recursive=True) if "ipykernel" in " ".join(p.cmdline())]
    except psutil.Error:
        return []


def _children_cpu() -> float:
    """User + system CPU seconds of every terminated child this process waited for (papermill, and through it
    the kernel it reaped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def record_resources(path: Path, wall_s: float, cpu_s: float) -> None:
    """Add wall time, CPU time and core count to the executed notebook ``path`` (if papermill wrote one)."""
    import nbformat

    if not path.is_file():
        return
    nb = nbformat.read(str(path), as_version=4)
    nb.metadata["lmrepro"] = {"resources": {"wall_s": round(wall_s, 2), "cpu_s": round(cpu_s, 2),
                                            "cores": os.cpu_count()}}
    nbformat.write(nb, str(path))


def workspace_env() -> dict[str, str]:
    """This process's environment, with the project's ``src`` first on the kernel's path: a stage runs the package
    of the workspace it runs in (the code DVC hashed as its deps), also in the copy that ``dvc exp run --temp`` or
    a queued experiment runs in, where the installed (editable) package still points at the main checkout."""
    from .paths import find_params

    env = dict(os.environ)
    src = find_params().parent / "src"
    if (src / "lmrepro").is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmrepro.run_notebook", description=__doc__.split("\n")[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = parser.parse_args(argv)
    cmd = [sys.executable, "-m", "papermill", args.input, args.output, "--log-output", "--no-progress-bar"]
    t0, cpu0 = time.perf_counter(), _children_cpu()
    for name, value in args.parameter:
        cmd += ["-p", name, value]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, env=workspace_env())
    papermill = psutil.Process(proc.pid)
    state = {"interrupts": 0, "stopped": None}

    def on_signal(signum, frame):
        state["interrupts"] += 1
        if state["interrupts"] == 1:
            kernels = _kernels(papermill)
            for kernel in kernels:
                kernel.send_signal(signal.SIGINT)
            if not kernels:  # between cells or before the kernel started: papermill stops by itself
                proc.send_signal(signal.SIGINT)
            print(f"\n{args.output}: interrupt sent to the notebook; it stops after the current step "
                  "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
        else:
            os.killpg(proc.pid, signal.SIGKILL)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def pump():
        """Pass papermill's output through until the interrupt; then keep only the trainer's one-line reason."""
        for line in proc.stdout:
            if "RunInterrupted: " in line and state["stopped"] is None:
                state["stopped"] = line.split("RunInterrupted: ", 1)[1].strip()
            if not state["interrupts"]:
                sys.stdout.write(line)
                sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # pragma: no cover - the handler above replaces SIGINT
        code = proc.wait()
    reader.join(timeout=5)
    record_resources(Path(args.output), time.perf_counter() - t0, _children_cpu() - cpu0)
    if state["interrupts"]:
        reason = state["stopped"] or "stopped outside a training loop (nothing to checkpoint)"
        print(f"{args.output}: interrupted — {reason}", file=sys.stderr, flush=True)
        return INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
