"""Pretraining loop on accelerate: AdamW, warmup + cosine/WSD, token-normalized accumulation,
bf16 autocast on CUDA (fp32 on CPU), clipping, token-budget snapshots and exact resume.

Data position is the optimizer step: ``ChunkSampler.batch(step, batch_size)`` is a pure function of
the step, every process draws the same global batch and keeps its own slice, so resume and
multi-process runs see exactly the data a single uninterrupted process would.

A caller may pass its own ``sampler`` (e.g. :class:`lmrepro.data.retrieval_mix.MixedSampler`): anything with
``seq_len``, ``batch(step, batch_size)``, ``describe()`` (part of the run fingerprint) and ``weights(step, batch_size)``
([batch_size, seq_len] per-label loss weights, or None for the plain token mean). With weights the loss is
Σ w·CE / Σ w over the global batch — a pure function of the step too, so resume and process count still do
not change it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from .. import provenance
from ..config import TrainConfig, fingerprint
from ..data import ChunkSampler, ShardedTokens, eval_windows
from ..eval.loss import evaluate_loss
from ..paths import shown
from ..models import DecoderLM, LMSpec
from ..ops.dispatch import reset_backends_used
from . import checkpoint as ckpt
from . import fsdp
from .device import autocast_dtype, default_device
from .agree import agree, common_steps, same_start
from .guard import RunInterrupted, Watch, agreed_stop_reason, held_run
from .mirror import CheckpointMirror
from .trackers import missing_trackers
from .schedule import lr_multiplier

log = logging.getLogger(__name__)

# Fields that do not change the trained weights (how a run is computed or logged, not what): editing them must not
# discard resumable checkpoints.
_NON_SEMANTIC = ("save_every_steps", "keep_checkpoints", "log_every_steps", "eval_every_steps", "eval_windows",
                 "loss_chunk_tokens", "activation_checkpointing", "progress_every_steps", "trackers")


STRATEGIES = ("ddp", "fsdp")


class ForeignCheckpointError(ValueError):
    """A checkpoint in this run's folder was written by a run with another fingerprint."""


@dataclass
class TrainResult:
    rows: list[dict[str, Any]]
    final_dir: Path
    budget_dirs: dict[int, Path] = field(default_factory=dict)
    resumed_from_step: int | None = None
    completed: bool = True
    step: int = 0  # optimizer steps done when fit returned (rows only hold the logged ones)


def make_accelerator(precision: str = "auto", trackers: Sequence[str] = (),
                     live_dir: str | Path | None = None) -> Accelerator:
    """bf16 autocast on CUDA, fp32 on CPU (``precision='auto'``); see :mod:`.device` (strict rule). ``trackers``:
    accelerate tracker names (``TrainConfig.trackers``), writing under ``live_dir`` where they write files."""
    dev = default_device()
    mixed = "bf16" if autocast_dtype(precision, dev, strict=True) is not None else "no"
    if trackers:
        missing = missing_trackers(trackers)
        if missing:
            raise ValueError(f"train.trackers {missing}: not installed here (pip install {' '.join(missing)}); "
                             "remove them from train.trackers or install them")
        if live_dir is None:
            raise ValueError(f"train.trackers {list(trackers)} need the run's live folder (Trainer(live_dir=...))")
    return Accelerator(cpu=dev.type != "cuda", mixed_precision=mixed, log_with=list(trackers) or None,
                       project_dir=None if live_dir is None else str(live_dir))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (norm gains are not decayed); per-parameter learning-rate factors
    from ``model.lr_multipliers()`` where the model has them (μP), one group per (decay, factor). AdamW's
    decoupled decay is lr·weight_decay per group, so under μP wider blocks also decay less per step."""
    factors = model.lr_multipliers() if hasattr(model, "lr_multipliers") else {}
    groups = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (p.dim() >= 2, factors.get(name, 1.0))
            groups.setdefault(key, []).append(p)
    # Standard parametrization: exactly the two groups (decay first) this optimizer always had, so its state
    # and every run's numbers are unchanged. Factor-1 groups first: the log's lr is group 0's, the base lr.
    order = sorted(groups, key=lambda k: (not k[0], k[1] != 1.0, k[1]))
    groups = [{"params": groups[k], "weight_decay": cfg.weight_decay if k[0] else 0.0, "lr": cfg.lr * k[1]}
              for k in order]
    # foreach=False: the single-tensor path gives bit-identical results across save/resume on CPU.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, foreach=False)


class Trainer:
    """Train ``DecoderLM(spec)`` on ``train_dir`` shards.

    out_dir:  final weights (``final/``) and token-budget snapshots (``budget-<tokens>/``).
    ckpt_dir: resumable checkpoints, keyed by a fingerprint of (spec, training config, data) so a
              changed configuration never resumes from incompatible state (old ones are kept).
    strategy: "ddp" (every process holds the whole model) or "fsdp" (each holds a shard: :mod:`.fsdp`); None:
              ``LMREPRO_STRATEGY`` as a launch sets it, else fsdp under an accelerate config of type FSDP
              (cloud/accelerate/node_fsdp.yaml), else ddp. Only matters on several processes.
    live_dir: where ``cfg.trackers`` receive every logged row while the run trains (DVCLive: ``metrics.json``
              with the latest row, which ``dvc exp show`` reads, and ``plots/metrics/*.tsv``). Rewritten from the
              restored rows on resume, so it holds exactly the steps of the run's CSV. Needed when
              ``cfg.trackers`` is not empty; an ``accelerator`` passed in brings its own trackers.
    """

    def __init__(self, spec: LMSpec, cfg: TrainConfig, train_dir: str | Path, out_dir: str | Path,
                 ckpt_dir: str | Path, val_dir: str | Path | None = None, log_path: str | Path | None = None,
                 provenance_path: str | Path | None = None, run_config: Any = None,
                 accelerator: Accelerator | None = None, progress: bool = True, sampler=None,
                 mirror: CheckpointMirror | None | str = "env", live_dir: str | Path | None = None,
                 strategy: str | None = None):
        self.spec, self.cfg = spec, cfg
        self.live_dir = Path(live_dir) if live_dir is not None else None
        self.accelerator = accelerator or make_accelerator(cfg.precision, cfg.trackers, self.live_dir)
        self.train_tokens = ShardedTokens(train_dir)
        self.val_tokens = ShardedTokens(val_dir) if val_dir is not None else None
        if self.train_tokens.vocab_size > spec.vocab_size:
            raise ValueError(f"shards in {train_dir} use vocab {self.train_tokens.vocab_size} "
                             f"> model vocab {spec.vocab_size}")
        if sampler is not None and sampler.seq_len != cfg.seq_len:
            raise ValueError(f"sampler yields rows of seq_len {sampler.seq_len}; the training config has {cfg.seq_len}")
        self.sampler = sampler if sampler is not None else ChunkSampler(self.train_tokens, cfg.seq_len, cfg.seed)
        self.out_dir, self.log_path = Path(out_dir), Path(log_path) if log_path else None
        self.provenance_path = Path(provenance_path) if provenance_path else None
        self.run_config, self.progress = run_config, progress
        semantic = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NON_SEMANTIC}
        data_id = sorted(s["sha256"] for s in self.train_tokens.index["shards"])
        identity = {"spec": spec.to_dict(), "train": semantic, "data": data_id}
        if sampler is not None:  # plain runs keep the fingerprint (and checkpoints) they always had
            identity["sampler"] = sampler.describe()
        self.fingerprint = fingerprint(identity)
        self.run_dir = Path(ckpt_dir)  # locked while training (one trainer per run folder)
        self.ckpt_dir = self.run_dir / self.fingerprint
        self._earlier_backends: dict[str, str] = {}  # op backends of the steps before a resume
        # Where checkpoints are mirrored ("env": LMREPRO_CHECKPOINT_MIRROR); each machine's first process restores.
        local_main = self.accelerator.is_local_main_process
        self.mirror = (CheckpointMirror.from_env_or_none() if mirror == "env" else mirror) if local_main else None
        world = self.accelerator.num_processes
        if cfg.batch_size % (cfg.micro_batch_size * world):
            raise ValueError(f"train.batch_size {cfg.batch_size} must be a multiple of micro_batch_size × processes "
                             f"= {cfg.micro_batch_size} × {world}")
        strategy = strategy or os.environ.get(fsdp.ENV) or ("fsdp" if fsdp.accelerate_says_fsdp() else "ddp")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r} (launch.strategy, {fsdp.ENV}): choose one of {list(STRATEGIES)}")
        self.fsdp = strategy == "fsdp" and world > 1
        if self.fsdp and int(os.environ.get("LOCAL_WORLD_SIZE", world)) != world:
            # Checkpoints are gathered on the first process only, so other machines would have none to resume from.
            raise ValueError("sharded training (launch.strategy fsdp, or an accelerate config of type FSDP) runs on "
                             "one machine; use ddp across machines")

    # -- setup ---------------------------------------------------------------------------------
    def _build(self):
        set_seed(self.cfg.seed)
        model = DecoderLM(self.spec)
        model.activation_checkpointing = self.cfg.activation_checkpointing
        optimizer = build_optimizer(model, self.cfg)
        return model, optimizer, self._scheduler(optimizer)

    def _scheduler(self, optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_multiplier, total_steps=self.cfg.max_steps,
                                                                    cfg=self.cfg))

    def _resume(self):
        """(model, optimizer, scheduler, state): from the newest checkpoint that loads, else fresh (state None).
        A damaged checkpoint is renamed ``<name>.damaged`` (kept, never deleted) and the previous one tried; a
        checkpoint of another run (fingerprint) is refused. A mirrored checkpoint newer than every local one (a
        run preempted on another machine) is downloaded first. With several processes every check ends in an
        exchange (:mod:`.agree`): all resume from the newest step each of them holds, or all stop."""
        acc = self.accelerator
        if self.mirror is not None:
            try:
                self.mirror.pull(self.ckpt_dir, self.fingerprint)
            except Exception as err:  # noqa: BLE001 — any store error: resume from what is here
                log.warning("could not read the checkpoint mirror %s (%s: %s); resuming from the local checkpoints",
                            self.mirror.root, type(err).__name__, err)
        acc.wait_for_everyone()
        local = {ckpt.step_of(f): f for f in ckpt.list_checkpoints(self.ckpt_dir)}
        shared, problem = common_steps(acc, list(local), self.ckpt_dir)
        agree(acc, problem, "resume")
        found = None
        for step in sorted(shared, reverse=True):
            folder = local[step]
            model, optimizer, scheduler = self._build()
            try:
                why = ckpt.foreign(folder, self.fingerprint, "run", "spec, training config and data")
                if why:
                    raise ForeignCheckpointError(why)
                state = ckpt.load_checkpoint(folder, model, optimizer, scheduler)
            except ForeignCheckpointError as err:
                problem = err
                break
            except Exception as err:  # damaged: hash mismatch, truncated torch file, unreadable JSON, ...
                ckpt.set_aside(folder, err, acc.is_local_main_process)
                continue
            found = (model, optimizer, scheduler, state)
            break
        agree(acc, problem, "resume")
        step = found[3]["step"] if found else 0
        agree(acc, same_start(acc, step, self.fingerprint, self.ckpt_dir), "resume")
        if found:
            log.info("resuming from %s (step %d)", shown(local[step]), step)
            return found
        return (*self._build(), None)

    # -- loop ----------------------------------------------------------------------------------
    def fit(self, until_step: int | None = None) -> TrainResult:
        """Train to ``cfg.max_steps`` (or stop early after ``until_step`` steps, as a preemption would)."""
        with held_run(self.accelerator, self.run_dir, self.ckpt_dir) as watch:
            return self._fit(until_step, watch)

    def _fit(self, until_step: int | None, watch: Watch) -> TrainResult:
        acc = self.accelerator
        model, optimizer, scheduler, state = self._resume()
        start = state["step"] if state else 0
        rows: list[dict[str, Any]] = state["rows"] if state else []
        # This run's backends: the steps before an interruption (from the checkpoint) and this process's.
        self._earlier_backends = state.get("op_backends", {}) if state else {}
        reset_backends_used()
        if self.fsdp:  # sharded by the trainer itself (accelerate's FSDP plugin runs on CUDA only)
            model, optimizer, scheduler = fsdp.shard(model, optimizer, scheduler, acc,
                                                     partial(build_optimizer, cfg=self.cfg), self._scheduler)
        else:
            model, optimizer = acc.prepare(model, optimizer)  # the scheduler is stepped by us, once per step
        self._start_trackers(acc.unwrap_model(model), rows)
        try:
            return self._loop(model, optimizer, scheduler, start, rows, until_step, watch)
        finally:
            self._finish_trackers()

    def _loop(self, model, optimizer, scheduler, start: int, rows: list[dict[str, Any]], until_step: int | None,
              watch: Watch) -> TrainResult:
        acc, cfg = self.accelerator, self.cfg
        total = cfg.max_steps
        stop = total if until_step is None else min(total, until_step)
        world, rank = acc.num_processes, acc.process_index
        per_proc = cfg.batch_size // world
        global_tokens = cfg.batch_size * cfg.seq_len
        budgets = list(cfg.checkpoint_tokens)
        bar = tqdm(total=total, initial=start, desc="train", disable=not (self.progress and acc.is_main_process))
        # Says how many processes really train: `accelerate launch --cpu --num_processes 2` starts one.
        if start < stop:
            log.info("training steps %d..%d of %d on %d processes (%s, %s%s)", start + 1, stop, total, world,
                     acc.device, acc.mixed_precision, ", sharded: FSDP" if self.fsdp else "")
        t0 = time.perf_counter()
        every = cfg.progress_every_steps or max(1, total // 20)
        for step in range(start, stop):
            batch = self.sampler.batch(step, cfg.batch_size)[rank * per_proc:(rank + 1) * per_proc]
            micro = batch.split(cfg.micro_batch_size)
            weights = self._weights(step)
            # The loss is a sum over labels ÷ the global label count (or weight total, with weights).
            norm = global_tokens if weights is None else float(weights.sum())
            if weights is not None:
                weights = weights[rank * per_proc:(rank + 1) * per_proc].split(cfg.micro_batch_size)
            loss_sum = torch.zeros((), device=acc.device, dtype=torch.float64)
            for i, mb in enumerate(micro):
                mb = mb.to(acc.device)
                # Only the last micro-batch synchronizes gradients across processes.
                sync = (contextlib.nullcontext() if i == len(micro) - 1
                        else fsdp.no_sync(model) if self.fsdp else acc.no_sync(model))
                with sync, acc.autocast():
                    loss = model(mb[:, :-1], targets=mb[:, 1:], loss_chunk=cfg.loss_chunk_tokens,
                                 target_weights=None if weights is None else weights[i])
                    # × world undoes DDP's gradient averaging.
                    acc.backward(loss * (world / norm))
                loss_sum += loss.detach().double()
            grad_norm = self._clip(model)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = acc.reduce(loss_sum, reduction="sum").item() / norm
            done = step + 1
            tokens = done * global_tokens
            row = {"step": done, "tokens": tokens, "loss": loss_value, "lr": lr, "grad_norm": grad_norm}
            if (cfg.eval_every_steps and self.val_tokens is not None
                    and (done % cfg.eval_every_steps == 0 or done == total)):
                row["val_loss"] = self._val_loss(model)
            if done % cfg.log_every_steps == 0 or done == total or "val_loss" in row:
                row["elapsed_s"] = round(time.perf_counter() - t0, 3)
                rows.append(row)
                self._track(row)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}")
            if acc.is_main_process and (done % every == 0 or done == stop):
                self._progress(done, start, total, loss_value, time.perf_counter() - t0, rows)
            crossed = [b for b in budgets if tokens - global_tokens < b <= tokens]
            for b in crossed:
                self._save_budget(model, b, tokens)
            saved = done % cfg.save_every_steps == 0 or done == stop
            if saved:
                self._save_checkpoint(model, optimizer, scheduler, done, rows)
                self._mirror(done)
            reason = agreed_stop_reason(watch, acc) if done < stop else None
            if reason:
                if not saved:
                    self._save_checkpoint(model, optimizer, scheduler, done, rows)
                self._mirror(done, now=True)  # a preemption's SIGTERM: this may be the machine's last minute
                bar.close()
                raise RunInterrupted(f"training stopped after step {done} of {total}: {reason}; a resumable "
                                     f"checkpoint is in {self.ckpt_dir} (rerun to continue)")
        bar.close()
        completed = stop == total
        final_dir = self.out_dir / "final"
        weights = fsdp.full_weights(model) if completed and self.fsdp else None  # every process gathers
        if completed and acc.is_local_main_process:  # each machine's own copy (identical weights)
            self._publish(model, rows, start, weights)
        acc.wait_for_everyone()
        budget_dirs = {b: self.out_dir / f"budget-{b}" for b in budgets}
        return TrainResult(rows, final_dir, budget_dirs, resumed_from_step=start or None, completed=completed,
                           step=max(start, stop))

    def _progress(self, done: int, start: int, total: int, loss: float, elapsed: float, rows: list[dict]) -> None:
        """One text line (a stage's log in `dvc repro` and the notebook shows it; tqdm's bar is not shown there)
        and the per-step CSV so far, so a long stage can be watched and plotted while it trains."""
        rate = (done - start) * self.cfg.tokens_per_step / max(elapsed, 1e-9)
        eta = (total - done) * self.cfg.tokens_per_step / rate
        log.info("step %d/%d (%.0f%%)  loss %.4f  %s tok/s  elapsed %s  ETA %s", done, total, 100 * done / total,
                 loss, f"{rate:,.0f}", _clock(elapsed), _clock(eta))
        if self.log_path and rows:
            write_rows(self.log_path, rows)

    def _start_trackers(self, model: DecoderLM, rows: list[dict[str, Any]]) -> None:
        """Open the accelerator's trackers afresh for this run (its name, the run's settings) and replay the rows
        restored from a checkpoint: a resumed run's live curve has each step once, exactly as its CSV."""
        acc = self.accelerator
        if not acc.log_with:
            return
        config = {"fingerprint": self.fingerprint, "parameters": model.num_parameters(),
                  **{k: v if isinstance(v, (int, float, str, bool)) else str(v)
                     for k, v in dataclasses.asdict(self.cfg).items() if k not in _NON_SEMANTIC}}
        # save_dvc_exp / dvcyaml off: the run never creates DVC experiments or edits a dvc.yaml itself (the
        # project declares live/ as metrics once); resume off: DVCLive starts from an empty folder.
        dvclive = {"save_dvc_exp": False, "dvcyaml": None, "resume": False}
        parts = self.live_dir.parts if self.live_dir is not None else ()
        run = "/".join(parts[parts.index("live") + 1:]) if "live" in parts else self.run_dir.name  # xformer/x/s2
        if self.live_dir is not None:
            dvclive["dir"] = str(self.live_dir)
        # One project for every run (services that group runs by project: wandb, mlflow), each run by its name.
        acc.init_trackers("lmrepro", config={"run": run, **config},
                          init_kwargs={"dvclive": dvclive, "wandb": {"name": run}, "mlflow": {"run_name": run}})
        for row in rows:
            self._track(row)

    def _finish_trackers(self) -> None:
        """Close this run's trackers, also when it was interrupted (not ``end_training``: that also ends the
        process group, which the caller's next run may still need). A tracker that fails to close is reported."""
        for tracker in self.accelerator.trackers:
            try:
                tracker.finish()
            except Exception as err:  # noqa: BLE001 — live metrics must not hide the run's own outcome
                log.warning("tracker %s did not close (%s: %s)", tracker.name, type(err).__name__, err)
        self.accelerator.trackers.clear()

    def _track(self, row: dict[str, Any]) -> None:
        """Send one logged row to the trackers (on the main process; a no-op without trackers). A tracker that
        fails (a service unreachable, a full disk under live/) is reported and training goes on: the row is in
        the run's CSV and checkpoint."""
        if not self.accelerator.log_with:
            return
        try:
            self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        except Exception as err:  # noqa: BLE001
            log.warning("could not send step %d to the trackers (%s: %s); training goes on", row["step"],
                        type(err).__name__, err)

    def _weights(self, step: int) -> torch.Tensor | None:
        """[batch_size, seq_len] loss weights of the global batch ``step``, or None (plain token mean)."""
        weights = getattr(self.sampler, "weights", None)
        return None if weights is None else weights(step, self.cfg.batch_size)

    def _clip(self, model) -> float:
        params = [p for p in model.parameters() if p.grad is not None]
        if self.cfg.grad_clip:
            if self.fsdp:  # sharded gradients: torch's clip reduces the norm over the shards
                return float(fsdp.local(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)))
            return float(self.accelerator.clip_grad_norm_(params, self.cfg.grad_clip))
        return float(torch.linalg.vector_norm(torch.stack([fsdp.local(p.grad.detach().norm()) for p in params])))

    def _val_loss(self, model) -> float:
        windows = eval_windows(self.val_tokens, self.cfg.seq_len, self.cfg.eval_windows, self.cfg.micro_batch_size)
        # Under DDP the prepared model's forward carries the run's autocast; a sharded model is not prepared.
        with self.accelerator.autocast() if self.fsdp else contextlib.nullcontext():
            return evaluate_loss(self.accelerator.unwrap_model(model), windows, self.accelerator.device)["loss"]

    # -- persistence ---------------------------------------------------------------------------
    def _save_checkpoint(self, model, optimizer, scheduler, step, rows) -> None:
        full = fsdp.full_states(model, optimizer) if self.fsdp else None  # every process gathers
        if self.accelerator.is_local_main_process:  # every machine resumes from its own disk
            state = {"step": step, "rows": rows, "fingerprint": self.fingerprint, "op_backends": self._backends()}
            ckpt.save_checkpoint(self.ckpt_dir / f"{ckpt.STEP_PREFIX}{step:07d}",
                                 self.accelerator.unwrap_model(model), optimizer, scheduler, state, full=full)
            ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def _mirror(self, step: int, now: bool = False) -> None:
        """Upload checkpoint ``step`` when a mirror is configured and due (or ``now``). A failed upload is logged
        and training goes on: the local checkpoints are intact, and the next upload may succeed."""
        if self.mirror is None or not self.accelerator.is_main_process or not (now or self.mirror.due()):
            return
        try:
            self.mirror.push(self.ckpt_dir / f"{ckpt.STEP_PREFIX}{step:07d}", self.fingerprint,
                             self.cfg.keep_checkpoints)
        except Exception as err:  # noqa: BLE001 — any store error (OSError, botocore's ClientError, ...)
            log.warning("could not mirror checkpoint step %d to %s (%s: %s); training goes on", step,
                        self.mirror.root, type(err).__name__, err)

    def _backends(self) -> dict[str, str]:
        """Per op, every backend this run used, in order of first use, joined by "," (as backends_used)."""
        merged = {op: names.split(",") for op, names in self._earlier_backends.items()}
        for op, names in provenance.op_backends().items():
            merged.setdefault(op, [])
            merged[op] += [n for n in names.split(",") if n not in merged[op]]
        return {op: ",".join(names) for op, names in sorted(merged.items())}

    def _save_budget(self, model, budget: int, tokens: int) -> None:
        # Snapshots live beside the resumable checkpoints (a persistent folder) so a resumed run still
        # has the ones written before the interruption; _publish copies them to out_dir.
        weights = fsdp.full_weights(model) if self.fsdp else None  # every process gathers
        if self.accelerator.is_local_main_process:
            ckpt.save_model(self.accelerator.unwrap_model(model), self.ckpt_dir / "budgets" / f"budget-{budget}",
                            extra={"budget_tokens": budget, "tokens_seen": tokens}, weights=weights)

    def _publish(self, model, rows, start, weights=None) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        final = self.out_dir / "final"
        ckpt.save_model(self.accelerator.unwrap_model(model), final,
                        extra={"tokens_seen": self.cfg.max_steps * self.cfg.tokens_per_step}, weights=weights)
        budgets = self.ckpt_dir / "budgets"
        if budgets.is_dir():
            for snap in sorted(budgets.iterdir()):
                shutil.copytree(snap, self.out_dir / snap.name, dirs_exist_ok=True)
        if self.log_path:
            write_rows(self.log_path, rows)
        if self.provenance_path:
            provenance.write(self.provenance_path, provenance.collect(
                self.run_config, seed=self.cfg.seed, checkpoint_fingerprint=self.fingerprint,
                resumed_from_step=start or None, processes=self.accelerator.num_processes, op_backends=self._backends(),
                parameters=self.accelerator.unwrap_model(model).num_parameters(),
                train_tokens=self.train_tokens.num_tokens))


def _clock(seconds: float) -> str:
    """4000.0 → '1:06:40'."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


ROW_COLUMNS = ("step", "tokens", "loss", "lr", "grad_norm", "elapsed_s")


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Per-step metrics as CSV (a DVC plot): the :data:`ROW_COLUMNS` first, then any other keys in order of
    appearance. A fixed order keeps the file identical when a resumed run restores rows from its JSON state."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    present = {k for row in rows for k in row}
    columns = [k for k in ROW_COLUMNS if k in present]
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path
