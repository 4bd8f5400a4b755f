"""Checkpoints that are safe to load: safetensors weights, tensors-only torch files, JSON state.

Two kinds:
- *model folders* (``model.safetensors`` + ``spec.json``): weights for evaluation and downstream stages;
- *resumable checkpoints* (a model folder + ``optimizer.pt``, ``scheduler.json``, ``rng.pt``, ``state.json``):
  everything needed to continue a run exactly. Written to a temporary folder and renamed, so a crash
  while saving never leaves a half-written checkpoint that looks complete. A fine-tuning run's checkpoint holds
  ``trainable.safetensors`` (its trainable parameters by name: the frozen base is the run's input) instead of a
  model folder (:func:`save_trainable_checkpoint`).

Both carry their own integrity: ``spec.json`` holds the SHA-256 of the weights and of the spec, and a
checkpoint's ``state.json`` the SHA-256 of each of its other files; loading checks them, so zeroed bytes or a
hand-edited spec fail with :class:`DamagedFileError` naming the file instead of loading wrong weights.
Model folders written before hashes were added load with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..models import DecoderLM, LMSpec

STEP_PREFIX = "step-"
CHECKPOINT_FILES = ("optimizer.pt", "scheduler.json", "rng.pt")
TRAINABLE = "trainable.safetensors"
log = logging.getLogger(__name__)


class DamagedFileError(ValueError):
    """A model or checkpoint file whose content does not match the hash written with it (or cannot be read)."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _spec_sha256(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _verify(path: Path, expected: str | None) -> None:
    if expected is not None and file_sha256(path) != expected:
        raise DamagedFileError(f"{path}: content does not match the SHA-256 written with it (damaged or replaced)")


def spec_to_dict(spec: LMSpec) -> dict[str, Any]:
    return spec.to_dict()


def spec_from_dict(data: dict[str, Any]) -> LMSpec:
    return LMSpec.from_dict(data)


def save_model(model: DecoderLM, folder: str | Path, extra: dict[str, Any] | None = None,
               weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model.safetensors`` and ``spec.json`` (plus ``extra`` metadata) into ``folder``. ``weights``: the
    model's full state dict where the model itself holds only a shard (FSDP, :func:`lmrepro.train.fsdp.full_states`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in (model.state_dict() if weights is None else weights).items()}
    if model.spec.tie_embeddings:
        state.pop("lm_head.weight", None)  # safetensors refuses shared storage; re-tied on load
    save_file(state, str(folder / "model.safetensors"))
    spec = spec_to_dict(model.spec)
    meta = {"spec": spec, **(extra or {}),
            "sha256": {"model.safetensors": file_sha256(folder / "model.safetensors"), "spec": _spec_sha256(spec)}}
    (folder / "spec.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder


def load_model(folder: str | Path, map_location: str = "cpu") -> DecoderLM:
    """Rebuild a :class:`DecoderLM` from a model folder written by :func:`save_model`."""
    folder = Path(folder)
    for name in ("model.safetensors", "spec.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: missing; is {folder} a model folder written by save_model?")
    try:
        meta = json.loads((folder / "spec.json").read_text())
        spec = spec_from_dict(meta["spec"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise DamagedFileError(f"{folder / 'spec.json'}: not a model spec written by save_model ({err!r})") from None
    hashes = meta.get("sha256")
    if hashes is None:
        log.warning("%s: written without content hashes (before they were added); loaded unchecked", folder)
    else:
        if _spec_sha256(meta["spec"]) != hashes.get("spec"):
            raise DamagedFileError(f"{folder / 'spec.json'}: the spec does not match the SHA-256 written with it "
                                   "(edited by hand?)")
        _verify(folder / "model.safetensors", hashes.get("model.safetensors"))
    model = DecoderLM(spec)
    try:
        state = load_file(str(folder / "model.safetensors"), device=map_location)
    except Exception as err:  # safetensors raises its own SafetensorError on a damaged header
        raise DamagedFileError(f"{folder / 'model.safetensors'}: cannot be read ({err})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed_missing = {"lm_head.weight"} if spec.tie_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise ValueError(f"{folder}: weights do not match spec (missing {missing}, unexpected {unexpected})")
    return model


def save_checkpoint(folder: str | Path, model: DecoderLM, optimizer, scheduler, state: dict[str, Any],
                    full: tuple[dict, dict] | None = None) -> Path:
    """Atomically write a resumable checkpoint into ``folder`` (e.g. ``.../step-000050``). ``full``: (model,
    optimizer) state dicts gathered from a sharded run, in place of ``model``'s and ``optimizer``'s own."""
    weights, optimizer_state = full if full is not None else (None, optimizer.state_dict())
    return _save_resumable(folder, lambda tmp: save_model(model, tmp, weights=weights), optimizer_state, scheduler,
                           state, CHECKPOINT_FILES)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name: parameter} of the parameters that require grad (a parameter shared by two names, once)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_trainable_checkpoint(folder: str | Path, model: torch.nn.Module, optimizer, scheduler,
                              state: dict[str, Any], slim: bool = False) -> Path:
    """Atomically write a fine-tuning run's resumable checkpoint: ``model``'s trainable parameters (any module:
    a PEFT wrapper, an HF model), optimizer, scheduler, RNG and ``state``. ``slim``: the optimizer's groups without
    its per-parameter state (a finished run's: loading it restores the weights, nothing is left to step)."""
    def weights(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_file({n: p.detach().contiguous().cpu() for n, p in trainable_state(model).items()}, str(tmp / TRAINABLE))

    optimizer_state = optimizer.state_dict()
    if slim:
        optimizer_state = {**optimizer_state, "state": {}}
    return _save_resumable(folder, weights, optimizer_state, scheduler, state, CHECKPOINT_FILES + (TRAINABLE,))


def _save_resumable(folder: str | Path, write_weights, optimizer_state: dict, scheduler, state: dict[str, Any],
                    files: tuple[str, ...]) -> Path:
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_weights(tmp)
    torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    torch.save(rng, tmp / "rng.pt")
    state = {**state, "sha256": {name: file_sha256(tmp / name) for name in files}}
    (tmp / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def read_state(folder: str | Path) -> dict[str, Any]:
    """A checkpoint's ``state.json`` (DamagedFileError if it cannot be read)."""
    path = Path(folder) / "state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFileError(f"{path}: cannot be read ({err})") from None


def load_checkpoint(folder: str | Path, model: DecoderLM, optimizer, scheduler) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG in place; return the trainer state dict. Every file is
    checked against its hash first, so a damaged checkpoint raises DamagedFileError before anything changes."""
    folder = Path(folder)
    state = _verified_state(folder, CHECKPOINT_FILES)
    loaded = load_model(folder)
    model.load_state_dict(loaded.state_dict())
    return _restore(folder, optimizer, scheduler, state)


def load_trainable_checkpoint(folder: str | Path, model: torch.nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore a :func:`save_trainable_checkpoint` into ``model`` (its trainable parameters, which must be exactly
    the saved names and shapes), optimizer, scheduler and RNG; return the saved state. When it raises, the model's
    weights are untouched (they are copied last, after everything that can fail) and so, with ``optimizer`` and
    ``scheduler`` reloaded from their state before the call, is the run."""
    folder = Path(folder)
    state = _verified_state(folder, CHECKPOINT_FILES + (TRAINABLE,))
    saved = load_file(str(folder / TRAINABLE))
    params = trainable_state(model)
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    if {n: tuple(t.shape) for n, t in saved.items()} != shapes:
        raise ValueError(f"{folder / TRAINABLE}: holds other trainable parameters than this run's "
                         f"({sorted(set(saved) ^ set(shapes))[:5] or 'same names, other shapes'})")
    state = _restore(folder, optimizer, scheduler, state)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    return state


def _verified_state(folder: Path, files: tuple[str, ...]) -> dict[str, Any]:
    # Every file against its hash first: a damaged checkpoint raises DamagedFileError before anything changes.
    state = read_state(folder)
    for name in files:
        _verify(folder / name, state.get("sha256", {}).get(name))
    return state


def _restore(folder: Path, optimizer, scheduler, state: dict[str, Any]) -> dict[str, Any]:
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text()))
    rng = torch.load(folder / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        # Saved by a process that saw every GPU of its machine; this one may see fewer (another launch shape).
        for device, generator in enumerate(list(rng["cuda"])[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(generator, device)
    return state


def foreign(folder: Path, fingerprint: str, kind: str, covers: str) -> str | None:
    """Why checkpoint ``folder`` is not this ``kind`` of run's (its fingerprint, which ``covers`` what it says,
    differs), or None when it is."""
    owner = read_state(folder).get("fingerprint")
    if owner == fingerprint:
        return None
    return (f"{folder}: checkpoint of {kind} {owner}, but this run's fingerprint is {fingerprint} ({covers}); it was "
            "copied or moved here — remove it to train afresh")


def set_aside(folder: Path, err: Exception, first: bool) -> None:
    """Keep a checkpoint that does not load as ``<name>.damaged`` (never deleted) so the previous one is tried next.
    Every process of a machine finds the same damage; only the ``first`` renames (another may then find the folder
    gone: it moves on too)."""
    damaged = folder.with_name(folder.name + ".damaged")
    if first:
        shutil.rmtree(damaged, ignore_errors=True)
        folder.rename(damaged)
    log.warning("checkpoint %s is damaged (%s); kept as %s, trying the previous one", folder, err, damaged.name)


def step_of(checkpoint: str | Path) -> int:
    """The optimizer step of a checkpoint folder ``step-<N>``."""
    return int(Path(checkpoint).name[len(STEP_PREFIX):])


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (half-written ``.tmp`` folders are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    # Only step-<digits>: half-written step-N.tmp and stray names (step-N.old, ...) are not checkpoints
    # (and must not crash the sort below).
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
             and p.name[len(STEP_PREFIX):].isdigit() and (p / "state.json").is_file()]
    return sorted(found, key=step_of)


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old)
