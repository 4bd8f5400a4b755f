"""Sharded training (``launch.strategy: fsdp``): torch's FSDP2 (``fully_shard``) over every block and the model.

Each process keeps 1/N of every parameter, gradient and AdamW moment; a block's weights are gathered for its forward
and backward only. The Trainer shards the model itself instead of accelerate's FSDP plugin, which runs on CUDA only:
the same code then runs on gloo CPU processes in the test suite (tests/test_launch.py) and on NCCL GPUs. What a run
computes is unchanged (same global batch, micro-batches, loss normalization; gradients reduce-scattered instead of
all-reduced): the curves agree with one process to float rounding.

Checkpoints keep the one format of every run (full weights, a plain ``optimizer.state_dict()`` keyed by parameter
index): :func:`full_states` gathers them on the first process, :func:`shard` loads them into a sharded model, so a
run may stop under FSDP and resume under DDP or on one process, and the reverse.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

ENV = "LMREPRO_STRATEGY"  # "fsdp" in every process of a launch whose profile asks for it (lmrepro.launch)


def accelerate_says_fsdp() -> bool:
    """True in the processes of ``accelerate launch`` with an FSDP config (it sets ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true", "yes")


def _names(model: torch.nn.Module, optimizer) -> list[str]:
    """The parameter name of each index of ``optimizer.state_dict()`` (its groups' order)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _keyed(state: dict[str, Any], names: list[str], to_names: bool) -> dict[str, Any]:
    """An optimizer state dict keyed by index ↔ by parameter name."""
    index = {n: i for i, n in enumerate(names)}
    key = (lambda i: names[i]) if to_names else (lambda n: index[n])
    return {"state": {key(k): v for k, v in state["state"].items()},
            "param_groups": [{**g, "params": [key(k) for k in g["params"]]} for g in state["param_groups"]]}


def shard(model: torch.nn.Module, optimizer, scheduler, acc, build_optimizer: Callable[[torch.nn.Module], Any],
          make_scheduler: Callable[[Any], Any]):
    """(model, optimizer, scheduler) sharded over ``acc``'s processes: ``model`` (full, on the CPU, with any restored
    weights) ``fully_shard``-ed block by block, each block's shard moved to the device as it is sharded (so no process
    holds the whole model there); a new optimizer over the sharded parameters and a new scheduler, carrying over the
    restored optimizer and scheduler state."""
    names, restored = _names(model, optimizer), optimizer.state_dict()
    mesh = torch.distributed.device_mesh.init_device_mesh(acc.device.type, (acc.num_processes,))
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded = build_optimizer(model)
    sched = make_scheduler(sharded)  # before the state: creating it resets every group's lr to the schedule's start
    if restored["state"]:
        set_optimizer_state_dict(model, sharded, _keyed(restored, names, to_names=True),
                                 options=StateDictOptions(full_state_dict=True))
    sched.load_state_dict(scheduler.state_dict())
    return model, sharded, sched


def full_states(model: torch.nn.Module, optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(full model state dict, index-keyed optimizer state dict) on the first process, on the CPU; empty on the
    others. Every process must call it (it gathers)."""
    weights = full_weights(model)
    state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not state:
        return weights, {}
    return weights, _keyed(state, _names(model, optimizer), to_names=False)


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full model state dict on the first process (CPU), empty on the others; every process must call it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


@contextlib.contextmanager
def no_sync(model: torch.nn.Module):
    """Gradients accumulate locally (no reduce-scatter) inside: every micro-batch of a step but the last."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def local(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (e.g. a gradient norm), any other tensor as it is."""
    return value.full_tensor() if isinstance(value, DTensor) else value
