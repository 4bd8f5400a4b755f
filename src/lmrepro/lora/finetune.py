"""One supervised fine-tuning loop for every method: LoRA variants (PEFT-wrapped) and full fine-tuning.

The method lives entirely in the model (which parameters require grad, how adapters scale) and in
the optimizer factory (AdamW, LoRA+ groups, ...), so every method sees the same data order, loss,
schedule, clipping and logging, and their curves differ only by the method.

Label convention (HF's): ``labels`` is aligned with ``input_ids`` — labels[:, t] is the token at
position t, or -100 where it is not supervised (prompt, padding). The loss predicts labels[:, t+1]
from the prefix input_ids[:, :t+1]:

    loss = mean over {(b, t): labels[b, t+1] != -100} of CE(logits[b, t], labels[b, t+1]).

For plain LM windows [B, T+1] use labels = input_ids (every token after the first is predicted).

Callbacks are objects with any of two argument-free hooks (both optional), the protocol of
:class:`lmrepro.lora.signal_drift.SignalDrift`, which therefore plugs in directly:
``before_step()`` — after backward and clipping, before ``optimizer.step()`` (gradients are final,
parameters not yet updated: the place to snapshot LoRA factors);
``after_step() -> dict | None`` — after the update; the returned metrics are merged into the step's
row, nested dicts flattened with "/" (``{"layers.0.q_proj": {"ratio": r}}`` → ``"layers.0.q_proj/ratio"``).
A callback that needs the model or the step keeps its own reference / counter.

Several processes (``accelerator`` of an ``accelerate launch``, :func:`launched_accelerator`): every process draws
the same global batch (a pure function of the step) and takes its own rows, process k of n rows k·B/n … (k+1)·B/n;
DDP sums the gradients of the trainable parameters so every process holds the whole batch's token-mean gradient,
and every process takes the same step. The curve and weights equal the one-process run's to float rounding of
the all-reduce (tests/test_launch.py). Callbacks and ``eval_fn`` run on every process, on identical weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..data.reasoning import IGNORE_INDEX, Example, exact_match
from ..train.guard import RunInterrupted, agreed_stop_reason, held_run
from ..train.schedule import lr_multiplier
from .checkpoints import FinetuneCheckpoints

log = logging.getLogger(__name__)

Batch = Mapping[str, torch.Tensor]
SCHEDULES = ("cosine", "wsd", "constant")


@dataclass
class FinetuneResult:
    # One per logged step: step (1-based), loss (of the step's batch, before its update), lr (param
    # group 0, used by this step), tokens (supervised), grad_norm (before clipping), then callback
    # and eval metrics.
    rows: list[dict[str, Any]]
    final_eval: dict[str, Any] | None  # eval_fn after the last step (None without eval_fn)
    steps_done: int = 0
    diverged: bool = False  # stopped at a non-finite loss (that row has loss = nan)
    elapsed_s: float = 0.0  # wall time, kept out of ``rows`` so same-seed runs give identical rows
    resumed_from: int | None = None  # the checkpoint's step this run continued from (None: from the start)


@dataclass(frozen=True)
class _ScheduleSpec:
    # The fields lmrepro.train.schedule.lr_multiplier reads: fine-tuning reuses the pretraining math.
    schedule: str
    warmup_fraction: float
    min_lr_ratio: float
    decay_fraction: float


def make_lr_schedule(total_steps: int, schedule: str = "cosine", warmup_fraction: float = 0.05,
                min_lr_ratio: float = 0.1, decay_fraction: float = 0.2) -> Callable[[int], float]:
    """Learning-rate multiplier per 0-based step (warmup, then cosine / WSD / constant), as in pretraining."""
    _check_int("total_steps", total_steps, 1)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    for name, value, high in (("warmup_fraction", warmup_fraction, 0.5), ("min_lr_ratio", min_lr_ratio, 1.0),
                              ("decay_fraction", decay_fraction, 1.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
            raise ValueError(f"{name} must be a number in [0, {high}], got {value!r}")
    spec = _ScheduleSpec(schedule, float(warmup_fraction), float(min_lr_ratio), float(decay_fraction))
    return partial(lr_multiplier, total_steps=total_steps, cfg=spec)


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def model_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids [B, T] → logits [B, T, V] for a DecoderLM, a PEFT wrapper of one, or an HF causal LM."""
    out = model(input_ids=input_ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def sft_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """(mean shifted CE over supervised tokens (fp32 scalar), number of supervised tokens); see module doc."""
    input_ids, labels = batch["input_ids"], batch["labels"]
    if input_ids.shape != labels.shape or input_ids.dim() != 2:
        raise ValueError(f"input_ids and labels must both be [B, T]; got {tuple(input_ids.shape)} and "
                         f"{tuple(labels.shape)}")
    targets = labels[:, 1:]
    count = int((targets != IGNORE_INDEX).sum())
    if count == 0:
        raise ValueError("batch has no supervised token (every labels[:, 1:] is -100)")
    logits = model_logits(model, input_ids)[:, :-1]
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    return loss, count


def _trim(batch: Batch) -> dict[str, torch.Tensor]:
    # Right padding past the longest row of this batch only costs compute; drop it.
    if "lengths" not in batch:
        return dict(batch)
    width = int(batch["lengths"].max())
    return {k: (v[:, :width] if v.dim() == 2 else v) for k, v in batch.items()}


def dataset_batches(data: Batch, batch_size: int, seed: int) -> Callable[[int], dict[str, torch.Tensor]]:
    """step → batch of ``batch_size`` rows of ``data`` (tensors sharing dim 0), a pure function of step.

    Rows are visited in epoch permutations drawn from generators seeded by (seed, epoch), as the
    pretraining ChunkSampler does; a batch may span two epochs.
    """
    _check_int("batch_size", batch_size, 1)
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    sizes = {k: v.shape[0] for k, v in tensors.items()}
    if "input_ids" not in tensors or len(set(sizes.values())) != 1:
        raise ValueError(f"data must hold input_ids and tensors of equal first dimension; got sizes {sizes}")
    n = sizes["input_ids"]
    perms: dict[int, torch.Tensor] = {}

    def perm(epoch: int) -> torch.Tensor:
        if epoch not in perms:
            if len(perms) >= 2:  # a batch spans at most two epochs
                perms.pop(min(perms))
            # Hash (seed, epoch): nearby seeds/epochs give unrelated orders; 63 bits fit manual_seed.
            digest = hashlib.sha256(f"sft:{seed}:{epoch}".encode()).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
            perms[epoch] = torch.randperm(n, generator=g)
        return perms[epoch]

    def batch(step: int) -> dict[str, torch.Tensor]:
        items = range(step * batch_size, (step + 1) * batch_size)
        idx = torch.stack([perm(i // n)[i % n] for i in items])
        return {k: v[idx] for k, v in tensors.items()}

    return batch


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _evaluate(model: torch.nn.Module, eval_fn: Callable[[torch.nn.Module], dict]) -> dict[str, Any]:
    was_training = model.training
    model.eval()
    try:
        metrics = dict(eval_fn(model))
    finally:
        model.train(was_training)
    return metrics


def _forward_backward(net, batch: dict[str, torch.Tensor], micro_batch_size: int | None,
                      autocast_dtype: torch.dtype | None, acc=None) -> tuple[float, int]:
    """Accumulate the gradient of the batch's token-mean loss over micro-batches; (loss, tokens). With an
    accelerator of several processes (``net`` DDP-wrapped) this process takes its rows of the global ``batch``
    and the gradient every process holds afterwards is still the whole batch's token mean."""
    total = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    if total == 0:
        raise ValueError("batch has no supervised token (every labels[:, 1:] is -100)")
    world, rank = (acc.num_processes, acc.process_index) if acc is not None else (1, 0)
    size = batch["input_ids"].shape[0]
    per = size // world
    step = micro_batch_size or per
    if world > 1 and (size % world or per % step):  # one process: a shorter last micro-batch is fine
        raise ValueError(f"batch of {size} rows: it must split into {world} processes × micro-batches of {step} "
                         "(train.batch_size a multiple of micro_batch_size × processes)")
    starts = range(rank * per, (rank + 1) * per, step)
    loss_sum = 0.0
    for i, start in enumerate(starts):
        micro = _trim({k: v[start:start + step] for k, v in batch.items()})
        count = int((micro["labels"][:, 1:] != IGNORE_INDEX).sum())
        # Under DDP only the last micro-batch's backward all-reduces, and every process must run it: a last
        # micro-batch without supervised tokens still goes through the model, with a zero loss.
        last_sync = world > 1 and i == len(starts) - 1
        if count == 0 and not last_sync:
            continue  # contributes nothing to the token mean
        ctx = (torch.autocast(micro["input_ids"].device.type, dtype=autocast_dtype) if autocast_dtype
               else contextlib.nullcontext())
        with (acc.no_sync(net) if world > 1 and not last_sync else contextlib.nullcontext()):
            with ctx:
                if count:
                    loss, count = sft_loss(net, micro)
                    # Weight by tokens so the accumulated gradient is that of the whole batch's token mean
                    # (× world: DDP averages over processes, the token mean sums).
                    scaled = loss * (count * world / total)
                else:
                    loss, scaled = None, model_logits(net, micro["input_ids"]).sum() * 0.0
            scaled.backward()
        if loss is not None:
            loss_sum += float(loss.detach()) * count
    if world > 1:
        loss_sum = acc.reduce(torch.tensor(loss_sum, dtype=torch.float64, device=acc.device), reduction="sum").item()
    return loss_sum / total, total


def launched_accelerator():
    """An accelerator joining this launch's process group when this process is one of several (``accelerate
    launch`` sets ``WORLD_SIZE``; :mod:`lmrepro.launch`), else None: one process runs the plain loop."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")  # autocast is the loop's own


def finetune(model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
             train_batches: Callable[[int], Batch] | Batch, steps: int, *, batch_size: int | None = None,
             lr_schedule: Callable[[int], float] | None = None,
             eval_fn: Callable[[torch.nn.Module], dict] | None = None, eval_every: int | None = None,
             callbacks: Sequence[Any] = (), grad_clip: float | None = 1.0, seed: int = 0,
             log_every: int = 1, micro_batch_size: int | None = None,
             autocast_dtype: torch.dtype | None = None, stop_on_nonfinite: bool = True,
             accelerator=None, checkpoints: FinetuneCheckpoints | None = None,
             until_step: int | None = None) -> FinetuneResult:
    """Fine-tune ``model`` in place for ``steps`` optimizer steps.

    train_batches: step → {"input_ids" [B, T], "labels" [B, T], optional "lengths" [B]}, or a dataset
        dict of such tensors with ``batch_size`` (sampled by :func:`dataset_batches` with ``seed``).
    make_optimizer: called once, after seeding, with the model (it picks the trainable parameters).
    lr_schedule: 0-based step → multiplier of every param group's initial lr (None: constant), e.g.
        :func:`make_lr_schedule`.
    eval_fn: model → dict of metrics, run in eval mode every ``eval_every`` steps and after the last
        step (``final_eval``; also merged into the last row).
    grad_clip: max global norm of the trainable parameters' gradient (None: no clipping).
    micro_batch_size: split each batch for gradient accumulation (same result, less memory).
    autocast_dtype: e.g. torch.bfloat16 on GPU (None: the parameters' dtype).
    Rows are logged every ``log_every`` steps, at eval steps and at the last step; callback
    metrics of steps that are not logged are dropped. A non-finite loss stops the run before its
    update (``diverged``) unless ``stop_on_nonfinite`` is False.
    Deterministic given ``seed`` (the global torch RNG is seeded first: adapter dropout, sampling).
    accelerator: with several processes, each trains its rows of every batch under DDP (module docstring); the
    model moves to the accelerator's device. None or one process: the plain loop.
    checkpoints: resume from the run's newest checkpoint and save one every ``checkpoints.every`` steps, where the
    run stops and at its end (:mod:`lmrepro.lora.checkpoints`); Ctrl-C / SIGTERM then save and raise
    :class:`~lmrepro.train.guard.RunInterrupted`. Not with ``callbacks`` (their state is not saved).
    until_step: stop after this step, as a preemption would (no final evaluation; ``steps_done`` says where).
    """
    _check_int("steps", steps, 1)
    _check_int("log_every", log_every, 1)
    for name, value in (("eval_every", eval_every), ("micro_batch_size", micro_batch_size)):
        if value is not None:
            _check_int(name, value, 1)
    if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float))
                                  or grad_clip <= 0):
        raise ValueError(f"grad_clip must be a positive number or None, got {grad_clip!r}")
    if not callable(train_batches):
        if batch_size is None:
            raise ValueError("batch_size is required when train_batches is a dataset dict, not a function of step")
        train_batches = dataset_batches(train_batches, batch_size, seed)
    torch.manual_seed(seed)
    optimizer = make_optimizer(model)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    if not params:
        raise ValueError("make_optimizer returned an optimizer without trainable parameters")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule or (lambda _: 1.0))
    ddp = accelerator is not None and accelerator.num_processes > 1
    # DDP reduces the trainable parameters' gradients only; the optimizer keeps the same parameter objects.
    net = accelerator.prepare_model(model) if ddp else model
    if ddp:
        log.info("fine-tuning %d steps on %d processes (%s)", steps, accelerator.num_processes, accelerator.device)
    if checkpoints is not None and callbacks:
        raise ValueError("checkpoints= cannot resume callbacks' own state: give one or the other")
    with _guarded(checkpoints, accelerator) as watch:
        start, rows = (checkpoints.resume(model, optimizer, scheduler, accelerator) if checkpoints is not None
                       else (0, []))
        result = _loop(model, net, optimizer, scheduler, params, train_batches, start, rows, steps,
                       steps if until_step is None else min(steps, until_step), eval_fn, eval_every, callbacks,
                       grad_clip, log_every, micro_batch_size, autocast_dtype, stop_on_nonfinite, accelerator,
                       checkpoints, watch)
    return result


@contextlib.contextmanager
def _guarded(checkpoints: FinetuneCheckpoints | None, acc):
    """With checkpoints: the run's folder locked and private to this machine, Ctrl-C / SIGTERM turned into a
    checkpoint at the next step boundary (:func:`lmrepro.train.guard.held_run`); yields the watch (None without)."""
    if checkpoints is None:
        yield None
        return
    with held_run(acc, checkpoints.folder, checkpoints.folder) as watch:
        yield watch


def _loop(model, net, optimizer, scheduler, params, train_batches, start: int, rows: list, steps: int, stop: int,
          eval_fn, eval_every, callbacks, grad_clip, log_every, micro_batch_size, autocast_dtype, stop_on_nonfinite,
          accelerator, checkpoints: FinetuneCheckpoints | None, watch) -> FinetuneResult:
    """Steps ``start`` … ``stop`` of :func:`finetune` (``rows``: those logged before ``start``)."""
    ddp = net is not model
    device = _device(model)
    result = FinetuneResult(rows, None, steps_done=start, resumed_from=start or None)
    t0 = time.perf_counter()
    model.train()
    for step in range(start, stop):
        batch = {k: v.to(device) for k, v in _trim(train_batches(step)).items()}
        loss, count = _forward_backward(net, batch, micro_batch_size, autocast_dtype, accelerator if ddp else None)
        row: dict[str, Any] = {"step": step + 1, "loss": loss, "lr": scheduler.get_last_lr()[0], "tokens": count}
        if stop_on_nonfinite and not math.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            result.rows.append(row)
            result.diverged = True
            break
        row["grad_norm"] = _clip(params, grad_clip)
        for cb in callbacks:
            if hasattr(cb, "before_step"):
                cb.before_step()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        for cb in callbacks:
            if hasattr(cb, "after_step"):
                _merge(row, cb.after_step() or {})
        done = result.steps_done = step + 1
        evaluated = eval_fn is not None and eval_every is not None and done % eval_every == 0 and done < steps
        if evaluated:
            row.update(_evaluate(model, eval_fn))
        if evaluated or done % log_every == 0 or done == steps:
            result.rows.append(row)
        if checkpoints is not None:
            reason = agreed_stop_reason(watch, accelerator) if done < stop else None
            if done % checkpoints.every == 0 or done == stop or reason:
                checkpoints.save(model, optimizer, scheduler, done, result.rows, accelerator, final=done == steps)
            if reason:
                raise RunInterrupted(f"fine-tuning stopped after step {done} of {steps}: {reason}; a resumable "
                                     f"checkpoint is in {checkpoints.folder} (rerun to continue)")
    if result.steps_done < steps and not result.diverged:  # stopped early (until_step): no final evaluation
        result.elapsed_s = round(time.perf_counter() - t0, 3)
        return result
    if eval_fn is not None and not result.diverged:
        result.final_eval = _evaluate(model, eval_fn)
        result.rows[-1].update(result.final_eval)
    result.elapsed_s = round(time.perf_counter() - t0, 3)
    return result


def _merge(row: dict[str, Any], metrics: Mapping[str, Any], prefix: str = "") -> None:
    """Flatten nested metric dicts into ``row`` ("outer/inner" keys): rows stay flat CSV/JSON records."""
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            _merge(row, value, f"{prefix}{key}/")
        else:
            row[f"{prefix}{key}"] = value


def _clip(params: list[torch.Tensor], grad_clip: float | None) -> float:
    """Global gradient norm before clipping (clipped in place to ``grad_clip`` if given)."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if grad_clip is not None:
        return float(torch.nn.utils.clip_grad_norm_(grads, grad_clip))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.detach().float().norm() for p in grads])))


# -- generation and exact-match accuracy --------------------------------------------------------

def _is_hf_tokenizer(tokenizer) -> bool:
    return hasattr(tokenizer, "eos_token_id")  # transformers tokenizers; tokenizers.Tokenizer lacks it


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Prompt ids as the SFT encoders build them: no specials for project tokenizers, the model's own
    (e.g. BOS) for HF tokenizers."""
    if _is_hf_tokenizer(tokenizer):
        return list(tokenizer(text, add_special_tokens=True)["input_ids"])
    return tokenizer.encode(text, add_special_tokens=False).ids


def tokenizer_eos(tokenizer) -> int:
    """EOS id of a project (``tokenizers``) or HF tokenizer."""
    if _is_hf_tokenizer(tokenizer):
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no eos_token_id; generation could never stop")
        return int(tokenizer.eos_token_id)
    from ..data.tokenizer import eos_id

    return eos_id(tokenizer)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # A PeftModel's base model already contains the LoRA layers (injected in place).
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.no_grad()
def _generate(model: torch.nn.Module, ids: torch.Tensor, max_new_tokens: int, eos: int) -> torch.Tensor:
    from ..models import DecoderLM
    from ..models.generate import greedy_generate

    base = _unwrap(model)
    if isinstance(base, DecoderLM):
        return greedy_generate(base, ids, max_new_tokens, eos_id=eos)
    was_training = base.training
    base.eval()
    out = base.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                        do_sample=False, eos_token_id=eos, pad_token_id=eos)
    base.train(was_training)
    return out


def generate_answers(model: torch.nn.Module, tokenizer, examples: Sequence[Example], max_new_tokens: int,
                     batch_size: int = 32) -> list[str]:
    """Greedy continuation of each example's prompt, cut at EOS and decoded; in the order of ``examples``.

    Prompts are batched only with prompts of equal token length, so no padding or attention mask
    is needed (our DecoderLM has none) and results do not depend on the batch composition.
    """
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("batch_size", batch_size, 1)
    eos, device = tokenizer_eos(tokenizer), _device(model)
    prompts = [encode_prompt(tokenizer, e.prompt) for e in examples]
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    texts: list[str] = [""] * len(examples)
    for length, members in sorted(by_len.items()):
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            ids = torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=device)
            new = _generate(model, ids, max_new_tokens, eos)[:, length:].tolist()
            for i, row in zip(chunk, new):
                row = row[: row.index(eos)] if eos in row else row
                texts[i] = tokenizer.decode(row, skip_special_tokens=True)
    return texts


def reasoning_accuracy(model: torch.nn.Module, tokenizer, examples: Sequence[Example],
                       max_new_tokens: int | None = None, batch_size: int = 32) -> float:
    """Exact-match accuracy of greedy answers (fraction in [0, 1]).

    ``max_new_tokens`` defaults to the longest reference target's token count + 2 (room for EOS):
    a model that rambles past the reference length cannot be right anyway.
    """
    if not examples:
        raise ValueError("examples is empty; accuracy is undefined")
    if max_new_tokens is None:
        lengths = [len(encode_prompt(tokenizer, e.target)) for e in examples]
        max_new_tokens = max(lengths) + 2
    texts = generate_answers(model, tokenizer, examples, max_new_tokens, batch_size)
    return sum(exact_match(t, e.answer) for t, e in zip(texts, examples)) / len(examples)
