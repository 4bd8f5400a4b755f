"""Paper 3 (LoRA-α): the base model, the two task datasets and one fine-tuning run of any method.

Base model: our foundation baseline (``data/models/<base>/final``, smoke/laptop) or any HF causal LM
(``hf_model``, paper profile), through the same PEFT wrapping and the same loop (lmrepro.lora.finetune).

Tasks (fixed splits, written once by the ``data`` stage to ``data/lora_alpha/<task>.safetensors``; every file
name is in :mod:`.artifacts`, the encoding of texts and examples in :mod:`lmrepro.data.sft`):
  domain     language modeling on a held-out domain: windows [N, seq_len + 1], every token supervised
             (package READMEs from site-packages on the laptop; an HF text dataset at paper scale)
  reasoning  SFT, loss on the response tokens only (the synthetic arithmetic task with exact-match answers on
             the laptop; an HF SFT dataset at paper scale)
The validation split is cut in two interleaved halves: "select" (choosing each method's hyperparameters)
and "report" (the numbers in the method table), so a method's reported loss is not the one it was tuned on.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from ...config import Config, fingerprint
from ...data.reasoning import IGNORE_INDEX, Example, make_reasoning_split
from ...data.sft import encode_examples, interleaved_halves, lm_tensors, windows_from_texts
from ...eval.loss import evaluate_sft_loss
from ...lora import AlphaChoice, apply_lora, loraplus_optimizer
from ...lora.checkpoints import FinetuneCheckpoints
from ...lora.finetune import FinetuneResult, finetune, launched_accelerator, make_lr_schedule
from ...missing import missing_input
from ...paths import CHECKPOINT_ROOT_ENV, Paths, project_paths
from ...train.device import autocast_dtype, default_device
from . import artifacts
from .config import LoraAlphaConfig

PAPER = artifacts.PAPER
SPLITS = ("train", "select", "report")


def section(cfg: Config) -> LoraAlphaConfig:
    if cfg.papers.get(PAPER) is None:
        raise ValueError(f"profile {cfg.profile!r} has no {PAPER} section in params.yaml")
    return cfg.papers[PAPER]


# ------------------------------------------------------------------------------------------ base model

def load_tokenizer_for(cfg: Config, paths: Paths):
    """The base model's tokenizer: ours (``data/tokenizer``) or the HF model's."""
    la = section(cfg)
    if la.hf_model is None:
        from ...data import load_tokenizer

        return load_tokenizer(paths.tokenizer)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(la.hf_model.name, revision=la.hf_model.revision,
                                        trust_remote_code=la.hf_model.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(cfg: Config, paths: Paths) -> tuple[torch.nn.Module, Any]:
    """(base model in train mode on the default device, tokenizer). Every run fine-tunes a deep copy of it."""
    la = section(cfg)
    if la.hf_model is None:
        from ...train import load_model

        model = load_model(artifacts.base_model(paths, la.base))
        tokenizer = load_tokenizer_for(cfg, paths)
    else:
        from ...lora.hf_models import load_causal_lm

        h = la.hf_model
        model, tokenizer = load_causal_lm(h.name, dtype=h.dtype, revision=h.revision,
                                          trust_remote_code=h.trust_remote_code)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.to(default_device()).train(), tokenizer


def base_id(cfg: Config, paths: Paths) -> str:
    la = section(cfg)
    return la.hf_model.name if la.hf_model is not None else artifacts.base_model_id(paths, la.base)


# ------------------------------------------------------------------------------------------ task data

def build_domain(cfg: Config, paths: Paths, tokenizer) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    t = section(cfg).tasks.domain
    if t.source == "package-docs":
        from ...data.domains import build_domain_corpus, iter_domain_documents

        manifest = build_domain_corpus(max_documents=t.max_documents, seed=section(cfg).seed,
                                       val_fraction=t.val_fraction, min_chars=t.min_chars)
        artifacts.domain_manifest(paths).write_text(json.dumps(manifest, indent=1) + "\n")

        def texts(split):
            return (text for _, text in iter_domain_documents(manifest, split))
        meta = {"source": "package-docs", "documents": manifest["num_documents"], "bytes": manifest["num_bytes"]}
    else:
        from ...data.corpus import assign_split
        from ...data.hf_source import stream_hf_documents
        from ...data.revisions import resolve_revision

        h = t.hf
        revision = resolve_revision(h.path, h.revision, "lora_alpha.tasks.domain.hf.revision")
        docs = list(stream_hf_documents(h.path, h.name, h.split, h.text_field, h.data_files, h.max_documents,
                                        revision=revision))
        split = {doc_id: assign_split(doc_id, t.val_fraction, section(cfg).seed) for doc_id, _ in docs}

        def texts(name):
            return (text for doc_id, text in docs if split[doc_id] == name)
        meta = {"source": f"hf:{h.path}", "revision": revision, "documents": len(docs)}
    train = windows_from_texts(tokenizer, texts("train"), t.seq_len, t.train_windows)
    val = windows_from_texts(tokenizer, texts("validation"), t.seq_len, t.val_windows)
    select, report = interleaved_halves(lm_tensors(val))
    meta.update(train_windows=int(train.shape[0]), select_windows=int(select["input_ids"].shape[0]),
                report_windows=int(report["input_ids"].shape[0]), seq_len=t.seq_len)
    return {"train": lm_tensors(train), "select": select, "report": report}, meta


def build_reasoning(cfg: Config, paths: Paths, tokenizer) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    la = section(cfg)
    t = la.tasks.reasoning
    if t.source == "synthetic":
        train, val = make_reasoning_split(t.n_train, t.n_val, seed=la.seed, steps=t.steps, max_operand=t.max_operand,
                                          max_multiplier=t.max_multiplier)
        report_examples = val[1::2][: t.accuracy_examples]
        artifacts.report_examples(paths).write_text(
            json.dumps([e.__dict__ for e in report_examples], indent=1) + "\n")
        tensors = {"train": encode_examples(train, tokenizer, t.max_len)}
        tensors["select"], tensors["report"] = interleaved_halves(encode_examples(val, tokenizer, t.max_len))
        meta = {"source": "synthetic", "example": train[0].__dict__}
    else:
        from ...data.revisions import resolve_revision
        from ...lora.hf_models import hf_sft_dataset

        h = t.hf
        revision = resolve_revision(h.path, h.revision, "lora_alpha.tasks.reasoning.hf.revision")
        data = hf_sft_dataset(h.path, tokenizer, t.max_len, name=h.name, split=h.split, prompt_field=h.prompt_field,
                              response_field=h.response_field, messages_field=h.messages_field,
                              data_files=h.data_files, max_examples=h.max_examples, revision=revision)
        n = data["input_ids"].shape[0]
        if n <= h.val_examples:
            raise ValueError(f"{h.path}: {n} usable examples, not more than val_examples={h.val_examples}")
        cut = n - h.val_examples
        tensors = {"train": {k: v[:cut] for k, v in data.items()}}
        tensors["select"], tensors["report"] = interleaved_halves({k: v[cut:] for k, v in data.items()})
        meta = {"source": f"hf:{h.path}", "revision": revision}
    meta.update({f"{split}_examples": int(v["input_ids"].shape[0]) for split, v in tensors.items()})
    supervised = tensors["train"]["labels"][:, 1:] != IGNORE_INDEX
    meta["supervised_tokens_per_example"] = float(supervised.sum(1).float().mean())
    return tensors, meta


def prepare_tasks(cfg: Config, paths: Paths) -> dict:
    """Build both tasks and write ``data/lora_alpha/<task>.safetensors`` (keys ``<split>.<tensor>``); a summary
    dict."""
    artifacts.task_dir(paths).mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer_for(cfg, paths)
    summary = {"base": base_id(cfg, paths)}
    for task, build in (("domain", build_domain), ("reasoning", build_reasoning)):
        tensors, meta = build(cfg, paths, tokenizer)
        flat = {f"{split}.{k}": v.contiguous() for split, d in tensors.items() for k, v in d.items()}
        save_file(flat, str(artifacts.task_file(paths, task)))
        summary[task] = meta
    return summary


@dataclass
class TaskData:
    name: str
    train: dict[str, torch.Tensor]
    select: dict[str, torch.Tensor]
    report: dict[str, torch.Tensor]
    examples: list[Example]  # report-half problems scored by exact match (reasoning, synthetic; else empty)


def load_task(paths: Paths, task: str) -> TaskData:
    path = artifacts.task_file(paths, task)
    if not path.is_file():
        raise FileNotFoundError(missing_input(str(path), f"pipelines/{PAPER}/dvc.yaml:data"))
    flat = load_file(str(path))
    splits = {s: {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(f"{s}.")} for s in SPLITS}
    examples = []
    ex_path = artifacts.report_examples(paths)
    if task == "reasoning" and ex_path.is_file():
        examples = [Example(**e) for e in json.loads(ex_path.read_text())]
    return TaskData(task, splits["train"], splits["select"], splits["report"], examples)


# ------------------------------------------------------------------------------------------ one run

@dataclass(frozen=True)
class RunSpec:
    """One fine-tuning run. ``choice`` None means full fine-tuning; ``loraplus_ratio`` switches to LoRA+."""

    lr: float
    choice: AlphaChoice | None
    loraplus_ratio: float | None = None


def make_model(base: torch.nn.Module, spec: RunSpec, target_modules: list[str], seed: int) -> torch.nn.Module:
    """A deep copy of ``base``: PEFT-wrapped with ``spec.choice`` (adapter init seeded), or fully trainable."""
    model = copy.deepcopy(base)
    if spec.choice is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    return apply_lora(model, spec.choice.r, spec.choice, target_modules, seed=seed)


def make_optimizer(spec: RunSpec, weight_decay: float) -> Callable[[torch.nn.Module], torch.optim.Optimizer]:
    if spec.loraplus_ratio is not None:
        return lambda m: loraplus_optimizer(m, spec.lr, spec.loraplus_ratio, weight_decay=weight_decay)
    return lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=spec.lr,
                                       weight_decay=weight_decay)


def train_run(cfg: Config, base: torch.nn.Module, data: TaskData, spec: RunSpec, *, steps: int | None = None,
              seed: int | None = None, callbacks: Sequence[Any] = (), eval_split: str | None = None,
              eval_every: int | None = None, log_every: int = 1, model: torch.nn.Module | None = None,
              until_step: int | None = None) -> tuple[torch.nn.Module, FinetuneResult]:
    """Fine-tune a fresh copy of ``base`` (or ``model``) on ``data.train`` with the profile's training settings.

    eval_split: "select"/"report" → its loss every ``eval_every`` steps (learning curves, key ``eval_loss``).
    With ``train.save_every_steps`` (and no callbacks) the run is resumable (:func:`run_checkpoints`);
    ``until_step`` stops it early, as a preemption would.
    """
    la = section(cfg)
    tr = la.train
    steps = steps or tr.steps[data.name]
    seed = la.seed if seed is None else seed
    handed_in = model is not None
    model = model if handed_in else make_model(base, spec, la.target_modules, seed)
    amp = autocast_dtype(tr.precision)
    eval_fn = None
    if eval_split is not None:
        split = getattr(data, eval_split)
        eval_fn = lambda m: {"eval_loss": evaluate_sft_loss(m, split, autocast=amp)}  # noqa: E731
    checkpoints = None
    # Runs with callbacks (their state lives in memory) or a model handed in (not rebuilt from base) are not resumable.
    if tr.save_every_steps is not None and not callbacks and not handed_in:
        checkpoints = run_checkpoints(cfg, base, data, spec, seed=seed, steps=steps, eval_split=eval_split,
                                      eval_every=eval_every, log_every=log_every)
    result = finetune(model, make_optimizer(spec, tr.weight_decay), data.train, steps, batch_size=tr.batch_size,
                      lr_schedule=make_lr_schedule(steps, tr.schedule, tr.warmup_fraction, tr.min_lr_ratio),
                      eval_fn=eval_fn, eval_every=eval_every, callbacks=callbacks, grad_clip=tr.grad_clip, seed=seed,
                      log_every=log_every, micro_batch_size=tr.micro_batch_size, autocast_dtype=amp,
                      accelerator=launched_accelerator(), checkpoints=checkpoints, until_step=until_step)
    return model, result


def run_checkpoints(cfg: Config, base: torch.nn.Module, data: TaskData, spec: RunSpec, **settings
                    ) -> FinetuneCheckpoints:
    """Where one fine-tuning run saves: data/checkpoints/lora_alpha/<task>/<fingerprint>/ (or under
    ``LMREPRO_CHECKPOINT_ROOT``), the fingerprint covering the base weights, the training data, the run and every
    setting that changes its rows (``settings``: seed, steps, evaluation)."""
    la = section(cfg)
    # One run's settings: both tasks' step counts and the learning-curve density are the stage's (steps is in
    # ``settings``), and the checkpoint period does not change what is trained.
    train = {k: v for k, v in dataclasses.asdict(la.train).items()
             if k not in ("steps", "eval_points", "save_every_steps")}
    split = settings.get("eval_split")
    identity = {"base": tensors_digest(dict(base.state_dict())), "data": tensors_digest(data.train),
                "eval_data": tensors_digest(getattr(data, split)) if split else None,
                "run": dataclasses.asdict(spec), "train": train, "target_modules": la.target_modules, **settings}
    digest = fingerprint(identity)
    # Paths.checkpoint_root, without needing a project around when LMREPRO_CHECKPOINT_ROOT says where (the runs
    # get no Paths: their stages hand them (cfg, base, data) only).
    root = Path(os.environ.get(CHECKPOINT_ROOT_ENV) or project_paths().checkpoint_root)
    return FinetuneCheckpoints(root / PAPER / data.name / digest, la.train.save_every_steps, digest)


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors' names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def run_summary(cfg: Config, model: torch.nn.Module, data: TaskData, result: FinetuneResult,
                splits: Sequence[str] = ("select", "report")) -> dict[str, Any]:
    """Final numbers of a run: validation losses (NaN after divergence), last training losses, wall time."""
    amp = autocast_dtype(section(cfg).train.precision)
    losses = [r["loss"] for r in result.rows]
    tail = [x for x in losses[-max(1, len(losses) // 10):] if math.isfinite(x)]
    row = {"steps_done": result.steps_done, "diverged": bool(result.diverged),
           "train_loss_end": sum(tail) / len(tail) if tail else math.nan, "elapsed_s": result.elapsed_s}
    for split in splits:
        row[f"{split}_loss"] = (math.nan if result.diverged
                                else evaluate_sft_loss(model, getattr(data, split), autocast=amp))
    return row


def curve_rows(result: FinetuneResult, every: int = 1, **keys) -> list[dict[str, Any]]:
    """Per-step training loss (and eval loss where measured) of a run, every ``every`` steps and at the end."""
    rows = []
    last = result.rows[-1]["step"] if result.rows else 0
    for r in result.rows:
        if r["step"] % every == 0 or r["step"] == last or "eval_loss" in r:
            rows.append({**keys, "step": r["step"], "loss": r["loss"], "lr": r["lr"],
                         "eval_loss": r.get("eval_loss", math.nan)})
    return rows


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished children (the :mod:`lmrepro.pool` workers
    that ran the stage's runs) so far: the stage's cost on an otherwise idle machine."""
    import resource

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return round(sum(u.ru_utime + u.ru_stime for u in usage), 1)


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.t0, 1)
