"""What keeps one training run safe from the processes around it.

- :class:`RunLock`: an exclusive ``flock`` on ``<checkpoint folder>/.lock``. A second trainer on the same folder
  (a rerun while an orphaned one still trains, two notebooks) is refused with :class:`RunLockedError` naming the
  holder. The kernel releases an ``flock`` when the process ends in any way (even SIGKILL), so a stale lock
  never blocks a rerun.
- :class:`Watch`: stops a run, at a step boundary, when Ctrl-C arrives (SIGINT) or when a process that started it
  has died (``dvc`` killed while papermill and its kernel train on: the orphan case). The trainer then saves a
  resumable checkpoint and raises :class:`RunInterrupted` with a one-line message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import psutil


class RunLockedError(RuntimeError):
    """Another process is training into the same checkpoint folder."""


class RunInterrupted(KeyboardInterrupt):
    """The run stopped early (Ctrl-C or its launcher died) after saving a resumable checkpoint."""


class RunLock:
    """Exclusive lock on one run's checkpoint folder (a context manager; re-entrant per object only)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / ".lock"
        self._fh = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown process"
            fh.close()
            raise RunLockedError(f"{self.path.parent}: another trainer holds this run ({holder}); stop it or wait "
                                 "for it to finish, then rerun (it resumes from the last checkpoint)") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": " ".join(psutil.Process().cmdline())[:300]}))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the flock
            self._fh = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def launchers(limit: int = 8) -> list[psutil.Process]:
    """The processes that started this one, nearest first, up to and including the nearest ``dvc`` process
    (nothing above it: a run under ``nohup`` must outlive the shell that started it). Without a ``dvc``
    ancestor only the direct parent counts (papermill or Jupyter, whose kernel this process is)."""
    chain = []
    proc = psutil.Process()
    for _ in range(limit):
        proc = proc.parent()
        if proc is None or proc.pid == 1:
            break
        chain.append(proc)
        try:
            if any(Path(part).name == "dvc" or part.endswith("/dvc") for part in proc.cmdline()[:2]):
                return chain
        except psutil.Error:
            break
    return chain[:1]


class Watch:
    """``stop_reason()`` is None while the run may go on. Install with ``with Watch():`` around the loop: Ctrl-C
    (SIGINT) and SIGTERM — what a preemptible machine or a scheduler sends to every process of a job before
    killing it — then set a flag instead of raising mid-step (an optimizer step cut in half cannot be
    checkpointed). Only a Ctrl-C pressed again, at least ``AGAIN_S`` after the first signal, stops at once: a
    preemption's SIGTERM arrives together with the SIGINT a launcher forwards (run_notebook, torchrun's agent),
    and must not cancel the checkpoint."""

    REASONS = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM: preempted or stopped)"}
    AGAIN_S = 2.0

    def __init__(self, poll_every_s: float = 2.0):
        self.poll_every_s = poll_every_s
        self._launchers = [(proc, proc.name()) for proc in launchers()]
        self._stopped: str | None = None
        self._stopped_at = 0.0
        self._last_poll = 0.0
        self._previous: dict = {}

    def _on_signal(self, signum, frame) -> None:
        if self._stopped is None:
            self._stopped, self._stopped_at = self.REASONS[signum], time.monotonic()
        elif signum == signal.SIGINT and time.monotonic() - self._stopped_at >= self.AGAIN_S:
            raise KeyboardInterrupt  # Ctrl-C pressed again: stop now

    def __enter__(self) -> "Watch":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.REASONS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def stop_reason(self) -> str | None:
        if self._stopped:
            return self._stopped
        now = time.monotonic()
        if now - self._last_poll >= self.poll_every_s:
            self._last_poll = now
            for proc, name in self._launchers:
                try:
                    gone = not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
                except psutil.NoSuchProcess:
                    gone = True
                if gone:
                    return f"its launcher {name} (pid {proc.pid}) has exited"
        return None


def agreed_stop_reason(watch: Watch, acc) -> str | None:
    """``watch``'s reason to stop, agreed by every process of accelerator ``acc`` (None: one process), so that
    each stops after the same step."""
    reason = watch.stop_reason()
    if acc is None or acc.num_processes == 1:
        return reason
    import torch

    flag = torch.tensor(float(reason is not None), device=acc.device)
    return (reason or "another process was stopped") if acc.reduce(flag, reduction="sum").item() > 0 else None


@contextlib.contextmanager
def held_run(acc, lock_folder: Path, checkpoint_folder: Path):
    """What a run holds while it trains, on every process of accelerator ``acc`` (None: one process): with several
    machines a checkpoint folder of each machine's own (:func:`~lmrepro.train.agree.private_folder`), the run's
    :class:`RunLock` on ``lock_folder`` (each machine's first process) and a :class:`Watch`; a failure on one
    process stops all together (:func:`~lmrepro.train.agree.agree`). Yields the watch."""
    from .agree import agree, private_folder

    if acc is not None:  # before the lock: on a folder shared between machines it would only say "held by another"
        agree(acc, private_folder(acc, checkpoint_folder), "checkpoint folder")
    lock, problem = None, None
    if acc is None or acc.is_local_main_process:
        try:
            lock = RunLock(lock_folder).acquire()
        except RunLockedError as err:
            problem = err
    try:
        if acc is not None:
            agree(acc, problem, "run lock")
        elif problem is not None:
            raise problem
        with Watch() as watch:
            yield watch
    finally:
        if lock is not None:
            lock.release()
