"""Independent runs of one stage in worker processes, so both laptop cores work.

The laptop models are too small for two torch threads to help much (``make bench`` prints the measurement:
``benchmarks/pool_cpu.py``), so on CPU a stage runs its independent runs (sizes, seeds, LoRA
fine-tunes) one per process, each with one torch thread. Every run computes with one thread however many
workers there are, so the results do not depend on the worker count: parallel equals serial, bit for bit
(``tests/test_pool.py``). With CUDA the runs stay in this process, in order (one GPU, one process).

``LMREPRO_WORKERS`` sets the worker count (``1``: serial, in this process); the default is the number of
cores this process may use.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any

ENV = "LMREPRO_WORKERS"
_shared: tuple = ()


def worker_count(jobs: int) -> int:
    """Workers for ``jobs`` independent runs: ``LMREPRO_WORKERS`` or the usable cores, at most ``jobs``;
    1 when CUDA is available."""
    import torch

    raw = os.environ.get(ENV)
    if raw is not None:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"{ENV}={raw!r}: give a whole number >= 1 (1 runs everything in this process)")
        n = int(raw)
    elif torch.cuda.is_available():
        n = 1
    else:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n, jobs))


def _init(shared: tuple, threads: int) -> None:
    import torch

    global _shared
    torch.set_num_threads(threads)
    _shared = shared


def _call(fn: Callable, job: Any) -> Any:
    return fn(*_shared, job)


def run_jobs(fn: Callable, jobs: Sequence[Any], shared: tuple = (), *, threads: int = 1,
             workers: int | None = None, on_result: Callable[[int, Any], None] | None = None,
             launch=None) -> list:
    """``[fn(*shared, job) for job in jobs]``, in the order of ``jobs``.

    fn: a module-level function (workers import it by name). shared: arguments common to every job (a config,
    a base model, data), sent once to each worker. threads: torch threads of every run — also in the serial
    case, so results are the same for any worker count. workers: None → :func:`worker_count`.
    on_result(index, result): called here as each job finishes (progress logs), in completion order.
    launch: the profile's ``LaunchConfig`` for functions that train through the Trainer or the fine-tuning loop
    (:func:`lmrepro.lora.finetune.launched_accelerator`); when it means more than one process or machine, every
    job runs on them, one job after another (:mod:`lmrepro.launch`).
    A failing job stops the pool and re-raises its exception, naming the job.
    """
    import torch

    from .launch import call, machines, processes

    jobs = list(jobs)
    n = worker_count(len(jobs)) if workers is None else max(1, min(workers, len(jobs)))
    out: list = [None] * len(jobs)
    launched = launch is not None and (processes(launch) > 1 or machines(launch) is not None)  # raises early
    if n == 1 or launched:  # here, one job after another (each launched on N processes if asked)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for i, job in enumerate(jobs):
                try:
                    out[i] = call(fn, shared, job, launch, threads)
                except Exception as e:
                    raise RuntimeError(f"job {i} ({job!r}) failed: {e}") from e
                if on_result:
                    on_result(i, out[i])
        finally:
            torch.set_num_threads(before)
        return out
    # spawn, not fork: a forked child of a process that has run OpenMP regions can deadlock.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_init, initargs=(shared, threads)) as pool:
        futures = {pool.submit(_call, fn, job): i for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in done:
                i = futures[f]
                if f.exception() is not None:
                    for p in pending:
                        p.cancel()
                    raise RuntimeError(f"job {i} ({jobs[i]!r}) failed in a worker: {f.exception()}") \
                        from f.exception()
                out[i] = f.result()
                if on_result:
                    on_result(i, out[i])
    return out
