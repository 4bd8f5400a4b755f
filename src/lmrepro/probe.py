"""The pipelines' real training path at a profile's sizes, two steps and a resume: the GPU check's part 3
(``scripts/gpu_check.py``) and its CPU test.

:func:`probe` trains one entry's model (the foundation baseline, a ><former X model or a hybrid-attention
``full`` model, with that entry's own spec and :class:`TrainConfig` from the profile) through the
:class:`~lmrepro.train.Trainer` — accelerate, bf16 autocast on CUDA, the configured micro-batch and loss chunking —
on synthetic tokens of the model's vocabulary: one micro-batch per process per step, ``fit(until_step=1)`` (a
resumable checkpoint), then a second trainer resumes at step 1 and finishes step 2. It returns the peak GPU memory
of the process (what a paper-profile run of that size needs per GPU, optimizer state and checkpoint writes
included), the wall time of each phase and the resume. :func:`entries` lists a profile's entries, smallest first.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, TrainConfig
from .models import DecoderLM, LMSpec

ENTRIES = ("foundation", "xformer", "hybrid_attention")


def entries(cfg: Config) -> list[tuple[str, str]]:
    """(entry, size) of every training entry of ``cfg``'s profile, each entry's sizes smallest first."""
    out = [("foundation", "baseline")]
    out += [("xformer", size) for size in cfg.xformer.sizes]
    out += [("hybrid_attention", size) for size in cfg.hybrid_attention.sizes]
    return out


def entry_model(cfg: Config, entry: str, size: str) -> tuple[LMSpec, TrainConfig]:
    """The spec and training config a pipeline stage would use for ``entry`` at ``size`` (seed 0)."""
    if entry == "foundation":
        return LMSpec.from_config(cfg.model, vocab_size=cfg.tokenizer.vocab_size), cfg.train
    if entry == "xformer":
        from .papers.xformer import runs

        return runs.run_spec(cfg, "x", size), runs.train_config(cfg, size)
    if entry == "hybrid_attention":
        from .papers.hybrid_attention import runs

        return runs.arch_spec(cfg, "full", size), runs.train_config(cfg, size, 0)
    raise ValueError(f"entry {entry!r} is not one of {ENTRIES}")


def _write_tokens(folder: Path, vocab_size: int, tokens: int) -> Path:
    from .data import write_shards

    rng = np.random.default_rng(0)
    docs = [rng.integers(1, vocab_size, size=4096).tolist() for _ in range(-(-tokens // 4096))]
    write_shards(docs, folder, eos_id=0, vocab_size=vocab_size, shard_tokens=1 << 22)
    return folder


def probe(cfg: Config, job: tuple[str, str]) -> dict[str, Any]:
    """Two steps and a resume of ``job`` = (entry, size) on this process group (one process, or every process of
    a launch); the numbers of this process. Module-level so :func:`lmrepro.launch.run` can start it on N
    processes."""
    from accelerate.utils import broadcast_object_list

    from .train.trainer import Trainer, make_accelerator

    entry, size = job
    spec, tcfg = entry_model(cfg, entry, size)
    accelerator = make_accelerator(tcfg.precision)  # the stage's own (it joins the launch's process group)
    world = accelerator.num_processes
    batch = tcfg.micro_batch_size * world
    tcfg = dataclasses.replace(tcfg, batch_size=batch, max_tokens=2 * batch * tcfg.seq_len, checkpoint_tokens=[],
                               save_every_steps=1000, eval_every_steps=None, warmup_fraction=0.0,
                               progress_every_steps=0)
    cuda = torch.cuda.is_available()
    # One folder name for every process (each machine's own copy, on its own disk: the checkpoint the second
    # trainer resumes from is there).
    name = [f"lmrepro-probe-{os.getpid()}-{time.time_ns()}" if accelerator.is_main_process else None]
    if world > 1:
        broadcast_object_list(name)
    root = Path(tempfile.gettempdir()) / name[0]
    if accelerator.is_local_main_process:
        root.mkdir()
    try:
        if accelerator.is_local_main_process:
            _write_tokens(root / "tokens", spec.vocab_size, 4 * batch * (tcfg.seq_len + 1))
        accelerator.wait_for_everyone()
        tokens = root / "tokens"
        phases, peaks = {}, []
        result = None
        for phase, until in (("first_step_s", 1), ("resume_s", None)):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            trainer = Trainer(spec, tcfg, tokens, root / "out", root / "ckpt", accelerator=accelerator,
                              progress=False, mirror=None)
            result = trainer.fit(until_step=until)
            phases[phase] = round(time.perf_counter() - start, 2)
            # The shared accelerator keeps every prepared model and optimizer: release this phase's, as a stage's
            # own Trainer would go out of scope, so the next phase's peak is a run's alone.
            precision = trainer.accelerator.mixed_precision
            del trainer
            accelerator.free_memory()
            gc.collect()
            if cuda:
                peaks.append(torch.cuda.max_memory_allocated())
                torch.cuda.empty_cache()
        with torch.device("meta"):  # counted without a second copy of the weights
            parameters = DecoderLM(spec).num_parameters()
        out = {"entry": entry, "size": size, "parameters": parameters,
               "seq_len": tcfg.seq_len, "micro_batch_size": tcfg.micro_batch_size, "processes": world,
               "precision": precision, "loss_chunk_tokens": tcfg.loss_chunk_tokens,
               "activation_checkpointing": tcfg.activation_checkpointing, **phases,
               "resumed_from_step": result.resumed_from_step, "steps": result.step, "completed": result.completed,
               "final_loss": result.rows[-1]["loss"] if result.rows else None}
        if cuda:  # the larger of the two phases (the resume also loads the checkpoint)
            out["peak_memory_gib"] = round(max(peaks) / 2**30, 2)
            out["device"] = torch.cuda.get_device_name()
    except BaseException:  # no barrier here: another process may be gone
        if accelerator.is_local_main_process:
            shutil.rmtree(root, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()  # every process is done with the folder
    if accelerator.is_local_main_process:
        shutil.rmtree(root, ignore_errors=True)
    return out
