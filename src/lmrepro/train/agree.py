"""What every process of a run must agree on before it trains, so that no process is left waiting in a collective
while another has failed, and no two machines train replicas that start from different points.

With several processes a failure on one of them (a locked run folder, a checkpoint of another run) must stop all
of them together: on NCCL a process that raised leaves the others blocked in their next collective until its
timeout (tens of minutes). Each check below therefore runs on every process and ends in one exchange
(:func:`agree`), after which every process raises or none does. With several machines, each machine's first
process writes the run's checkpoints to that machine's own disk (:mod:`lmrepro.launch`); the checkpoint folder
must then be private to the machine (:func:`private_folder`), and the processes resume from the newest step every
one of them holds (:func:`common_steps`), at the same step of the same run (:func:`same_start`).
"""

from __future__ import annotations

import os
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import gather_object


def _several_machines(acc: Accelerator) -> bool:
    return acc.num_processes > int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))


def agree(acc: Accelerator, problem: BaseException | None, what: str) -> None:
    """Raise on every process if ``problem`` is set on any: the process's own exception where it has one, else a
    RuntimeError naming the processes that failed and why."""
    if acc.num_processes == 1:
        if problem is not None:
            raise problem
        return
    reports = gather_object([None if problem is None else f"{type(problem).__name__}: {problem}"])
    failed = {i: r for i, r in enumerate(reports) if r is not None}
    if problem is not None:
        raise problem
    if failed:
        raise RuntimeError(f"{what}: another process of this run failed, so this one stops too: "
                           + "; ".join(f"process {i}: {r}" for i, r in failed.items()))


def private_folder(acc: Accelerator, folder: Path) -> BaseException | None:
    """With several machines: a problem if ``folder`` is shared between machines (a network folder): their first
    processes would write the same checkpoint files at once. Each machine's first process leaves a marker and looks
    for the others'. None on one machine."""
    if not _several_machines(acc):
        return None
    marker = folder / f".machine-{acc.process_index}"
    if acc.is_local_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        marker.touch()
    acc.wait_for_everyone()
    others = sorted(p.name for p in folder.glob(".machine-*") if p != marker) if acc.is_local_main_process else []
    acc.wait_for_everyone()
    if acc.is_local_main_process:
        marker.unlink(missing_ok=True)
    if others:
        return RuntimeError(f"{folder} is shared with other machines ({', '.join(others)}): each machine writes its "
                            "own copy of the run's checkpoints, so give each one a folder on its own disk "
                            "(LMREPRO_CHECKPOINT_ROOT, or a checkout per machine)")
    return None


def common_steps(acc: Accelerator, steps: list[int], folder: Path) -> tuple[set[int], BaseException | None]:
    """(the checkpoint steps every process holds, a problem when some process holds checkpoints but none is held
    by all: starting afresh would discard that machine's progress, and its newer checkpoints would outrank the
    new ones at the next resume)."""
    if acc.num_processes == 1:
        return set(steps), None
    held = gather_object([sorted(steps)])
    shared = set.intersection(*(set(s) for s in held))
    if shared or not any(held):
        return shared, None
    return shared, RuntimeError(
        f"no checkpoint of {folder} is held by every process (steps by process: {held}): configure the checkpoint "
        "mirror (LMREPRO_CHECKPOINT_MIRROR, a DVC remote) so every machine restores the newest, or remove the "
        "checkpoints to train afresh")


def same_start(acc: Accelerator, step: int, fingerprint: str, folder: Path) -> BaseException | None:
    """A problem unless every process starts at the same step of the same run (a job order that differs between
    machines would otherwise join two runs in one group; a checkpoint damaged on one machine only leaves it a
    step behind)."""
    if acc.num_processes == 1:
        return None
    starts = gather_object([(step, fingerprint)])
    if len({f for _, f in starts}) > 1:
        return RuntimeError(f"the processes are training different runs (fingerprint by process: "
                            f"{[f for _, f in starts]}); every machine must run the same stages in the same order")
    if len({s for s, _ in starts}) > 1:
        return RuntimeError(f"the processes found different checkpoints to resume from (step by process: "
                            f"{[s for s, _ in starts]}); a machine lacks a checkpoint the others hold in {folder}: "
                            "configure the checkpoint mirror (LMREPRO_CHECKPOINT_MIRROR, a DVC remote) so every "
                            "machine restores the newest, or remove the newer checkpoints to resume from an older one")
    return None
