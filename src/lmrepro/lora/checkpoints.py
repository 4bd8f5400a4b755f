"""Resumable fine-tuning runs (:func:`lmrepro.lora.finetune.finetune` with ``checkpoints=``).

A run's folder holds ``step-<N>`` checkpoints (:func:`lmrepro.train.checkpoint.save_trainable_checkpoint`: the
trainable parameters by name, optimizer, scheduler, RNG, the logged rows), each tagged with the run's fingerprint;
a checkpoint of another run is refused, a damaged one is kept as ``<name>.damaged`` and the previous one tried, the
newest ``keep`` are kept; a finished run keeps one slim checkpoint (weights and rows, no optimizer moments: nothing
is left to train). The data position is the step (batches are a pure function of it), so a run resumed at step N
continues exactly as if it had not stopped, on any process count. With several processes each machine's first
process writes (every process holds the same state) and all resume from the newest step every process holds
(:mod:`lmrepro.train.agree`), as the Trainer's runs do; unlike theirs, these checkpoints are not mirrored to a remote
(a preempted machine's fine-tuning run starts again elsewhere).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..train import checkpoint as ckpt
from ..train.agree import agree, common_steps, same_start

log = logging.getLogger(__name__)


class ForeignRunError(ValueError):
    """A checkpoint in this run's folder was written by a run with another fingerprint."""


@dataclass(frozen=True)
class FinetuneCheckpoints:
    """Where and how often one fine-tuning run saves. folder: the run's own (one run per folder); every: a
    checkpoint every this many optimizer steps (and where the run stops or ends); fingerprint: the run's identity
    (base weights, data, settings), checked on resume."""

    folder: Path
    every: int
    fingerprint: str
    keep: int = 2

    def resume(self, model: torch.nn.Module, optimizer, scheduler, acc=None) -> tuple[int, list[dict[str, Any]]]:
        """(step, logged rows) of the newest checkpoint that loads into ``model``, ``optimizer`` and ``scheduler``
        (in place, with the RNG state); (0, []) when there is none."""
        local = {ckpt.step_of(f): f for f in ckpt.list_checkpoints(self.folder)}
        several = acc is not None and acc.num_processes > 1
        steps = set(local)
        if several:
            steps, problem = common_steps(acc, list(local), self.folder)
            agree(acc, problem, "resume")
        found, problem = None, None
        # A candidate that fails after loading some of its state must leave the run as it was (weights are copied
        # last, see load_trainable_checkpoint): the optimizer, scheduler and RNG as they are now.
        before = (optimizer.state_dict(), scheduler.state_dict(), torch.get_rng_state())
        for step in sorted(steps, reverse=True):
            folder = local[step]
            try:
                why = ckpt.foreign(folder, self.fingerprint, "fine-tuning run", "base weights, data and settings")
                if why:
                    raise ForeignRunError(why)
                state = ckpt.load_trainable_checkpoint(folder, model, optimizer, scheduler)
            except ForeignRunError as err:
                problem = err
                break
            except Exception as err:  # damaged: hash mismatch, truncated file, unreadable JSON, other parameters
                optimizer.load_state_dict(before[0])
                scheduler.load_state_dict(before[1])
                torch.set_rng_state(before[2])
                ckpt.set_aside(folder, err, acc is None or acc.is_local_main_process)
                continue
            found = state
            break
        if several:
            agree(acc, problem, "resume")
            agree(acc, same_start(acc, found["step"] if found else 0, self.fingerprint, self.folder), "resume")
        elif problem is not None:
            raise problem
        if found is None:
            return 0, []
        log.info("resuming fine-tuning from %s (step %d)", folder, found["step"])
        return found["step"], found["rows"]

    def save(self, model: torch.nn.Module, optimizer, scheduler, step: int, rows: list[dict[str, Any]],
             acc=None, final: bool = False) -> None:
        """Checkpoint ``step`` (on each machine's first process; every process waits for it). ``final``: the run's
        last step — only this checkpoint is kept, without the optimizer's moments (a full fine-tuning run of a 1B
        model would otherwise keep two 15 GB checkpoints after it ended)."""
        if acc is None or acc.is_local_main_process:
            ckpt.save_trainable_checkpoint(self.folder / f"{ckpt.STEP_PREFIX}{step:07d}", model, optimizer,
                                           scheduler, {"step": step, "rows": rows, "fingerprint": self.fingerprint},
                                           slim=final)
            ckpt.prune_checkpoints(self.folder, 1 if final else self.keep)
        if acc is not None:
            acc.wait_for_everyone()
