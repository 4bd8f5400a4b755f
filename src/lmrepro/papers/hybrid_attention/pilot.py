"""Paper 1 pilot: does long-range retrieval emerge at laptop scale, and how fast?

One pilot run trains an 8-layer model (full attention at layers 4 and 8 for the hybrids, the same pattern the
redesigned pipeline uses) on the Python-source stream with synthetic retrieval rows mixed in
(:mod:`lmrepro.data.retrieval_mix`), keeps ``snapshots`` evenly spaced snapshots and measures at each:

* ``needle_acc``: greedy single-needle RULER accuracy at 1× length on validation haystacks (the task the
  pipeline's precondition uses; 3-digit values, chance ≈ 0);
* ``value_nll``: mean NLL (nats) of the value tokens in held-out recall rows — the copy signal, which moves
  before accuracy does; uniform guessing over the 900 values costs ln 900 ≈ 6.80;
* ``copy_acc``: teacher-forced top-1 accuracy on the second copy of 120 random ids (from 256) in held-out
  "repeat" rows — induction, content-based copying; chance 1/256 (shorter spans where the context is short);
* ``copy_acc_own``: the same on the run's own ``repeat_vocab`` alphabet (new sequences of trained symbols).

:func:`step_seconds` times one training step of any architecture, for the budget arithmetic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...bench import tokens_per_second
from ...config import Config, derive
from ...config.layers import hybrid_pattern, render_layer_token
from ...data import ChunkSampler, ShardedTokens, load_tokenizer
from ...data.retrieval_mix import MixedSampler, RetrievalMix
from ...data.synthetic import make_task
from ...eval.ruler import evaluate_task
from ...models import DecoderLM, LMSpec
from ...models.hybrid import layers_from_pattern
from ...paths import Paths
from ...train import Trainer, load_model

CHANCE_VALUE_NLL = math.log(900)  # 3-digit values without a leading zero
COPY_SPAN, COPY_VOCAB = 120, 256  # held-out repeat rows of copy_acc (every run, whatever it trained on)


@dataclass(frozen=True)
class PilotRun:
    """One pilot configuration (8 layers, 4 heads, batch 8)."""

    arch: str  # one of ARCHITECTURES
    seq_len: int
    hidden_size: int
    steps: int
    share: float
    kinds: tuple[str, ...]
    recall_pairs: int = 4
    repeat_tokens: int = 64
    repeat_vocab: int | None = None
    lr: float = 4e-3
    snapshots: int = 4
    num_layers: int = 8
    batch_size: int = 8
    seed: int = 0  # initialization, data order and synthetic rows

    @property
    def name(self) -> str:
        return (f"{self.arch}-T{self.seq_len}-d{self.hidden_size}-L{self.num_layers}-n{self.steps}-m{self.share}"
                f"-{'+'.join(self.kinds)}-p{self.recall_pairs}-r{self.repeat_tokens}v{self.repeat_vocab}"
                f"-lr{self.lr}-s{self.snapshots}"
                + (f"-b{self.batch_size}" if self.batch_size != 8 else "")
                + (f"-seed{self.seed}" if self.seed else ""))


def _spec(cfg: Config, run: PilotRun) -> LMSpec:
    """``run.arch`` with the pipeline's windows (fractions of ``run.seq_len``) and full attention at layers 4, 8."""
    h = derive(cfg.hybrid_attention, "pilot", seq_len=run.seq_len)
    mixer = "full" if run.arch == "full" else (
        render_layer_token("attention", h.window(run.arch)) if run.arch.startswith("swa-") else run.arch)
    pattern = hybrid_pattern(run.num_layers, mixer, None if run.arch == "full" else 4,
                             full_attention_rope=not run.arch.endswith("-nope"))
    model = derive(cfg.model, "pilot", hidden_size=run.hidden_size, num_layers=run.num_layers, num_heads=4,
                   num_kv_heads=4, intermediate_size=run.hidden_size * 11 // 64 * 16, max_seq_len=4 * run.seq_len)
    return LMSpec.from_config(model, cfg.tokenizer.vocab_size, layers=layers_from_pattern(pattern))


def step_seconds(cfg: Config, run: PilotRun, steps: int = 10, batch_size: int = 8) -> float:
    """Median wall time (s) of one training step of ``run``'s model (:func:`lmrepro.bench.tokens_per_second`)."""
    model = DecoderLM(_spec(cfg, run))
    tokens = batch_size * run.seq_len
    return tokens / tokens_per_second(model, cfg.tokenizer.vocab_size, batch_size, run.seq_len, steps)


@torch.no_grad()
def value_nll(model, rows, tokenizer) -> float:
    """Mean NLL (nats) of every recall value, summed over its tokens, given everything before it."""
    out = []
    for row in rows:
        logp = F.log_softmax(model(torch.tensor([row.ids[:-1]])).float(), -1)[0]
        for (_, target), value in zip(row.pairs, row.values):
            n = len(tokenizer.encode(" " + value, add_special_tokens=False).ids)
            out.append(-sum(logp[target - 1 + j, row.ids[target + j]].item() for j in range(n)))
    return float(np.mean(out))


@torch.no_grad()
def copy_accuracy(model, rows) -> float:
    """Teacher-forced top-1 accuracy on the repeated span's tokens after its first (induction copying)."""
    hits = []
    for row in rows:
        pred = model(torch.tensor([row.ids[:-1]]))[0].argmax(-1)
        target = row.pairs[0][1]
        hits += (pred[target:len(row.ids) - 1] == torch.tensor(row.ids[target + 1:])).tolist()
    return float(np.mean(hits))


def _min_distance(cfg: Config, run: PilotRun) -> int:
    """Values sit beyond the stacked receptive field of the smallest window's six SWA layers."""
    return 6 * derive(cfg.hybrid_attention, "pilot", seq_len=run.seq_len).window("swa-small") + 1


def retrieval_mix(cfg: Config, run: PilotRun) -> RetrievalMix:
    """The synthetic rows ``run`` trains on."""
    return RetrievalMix(share=run.share, kinds=run.kinds, value_digits=3, min_distance=_min_distance(cfg, run),
                        seed=run.seed, recall_pairs=run.recall_pairs, repeat_tokens=run.repeat_tokens,
                        repeat_vocab=run.repeat_vocab)


@dataclass(frozen=True)
class EvalSets:
    """Held-out measuring material of one run (module doc): recall rows, repeat rows of 256 ids and of the
    run's own alphabet (empty without one), single-needle samples."""

    recall: list
    copy: list
    copy_own: list
    needles: list


def eval_sets(cfg: Config, paths: Paths, run: PilotRun, tok, eval_samples: int = 32) -> EvalSets:
    """Rows as long as the context allows: recall pairs and the copied span shrink for short contexts."""
    min_distance = _min_distance(cfg, run)
    val = ShardedTokens(paths.tokens("validation"))

    def rows(mix: RetrievalMix) -> list:
        sampler = MixedSampler(ChunkSampler(val, run.seq_len, 0), mix, tok)
        return [sampler.row(s, r) for s in range(4) for r in sampler.positions(s, 8)]

    pairs = max(1, min(run.recall_pairs, (run.seq_len - min_distance) // 48))  # <= 48 tokens a pair
    span = min(COPY_SPAN, (run.seq_len + 1 - min_distance) // 2)
    own = [] if run.repeat_vocab is None else rows(RetrievalMix(0.5, ("repeat",), 3, min_distance, seed=97,
                                                               repeat_tokens=span, repeat_vocab=run.repeat_vocab))
    return EvalSets(rows(RetrievalMix(0.5, ("recall",), 3, min_distance, seed=99, recall_pairs=pairs)),
                    rows(RetrievalMix(0.5, ("repeat",), 3, min_distance, seed=98, repeat_tokens=span,
                                      repeat_vocab=COPY_VOCAB)),
                    own,
                    make_task("single_needle", tok, val.read(0, min(len(val), 200_000)), run.seq_len, eval_samples,
                              seed=123, value_digits=3))


def measure(model, sets: EvalSets, tok) -> dict:
    """``needle_acc``, ``value_nll``, ``copy_acc``, ``copy_acc_own`` (module doc) of ``model`` (eval mode)."""
    return {"needle_acc": evaluate_task(model, sets.needles, tok)["accuracy"],
            "value_nll": value_nll(model, sets.recall, tok), "copy_acc": copy_accuracy(model, sets.copy),
            "copy_acc_own": copy_accuracy(model, sets.copy_own) if sets.copy_own else math.nan}


def run_pilot(cfg: Config, paths: Paths, run: PilotRun, root: Path, eval_samples: int = 32) -> list[dict]:
    """Train ``run`` under ``root/<name>`` (resumable) and measure each of its ``snapshots`` snapshots."""
    tok = load_tokenizer(paths.tokenizer)
    bs = run.batch_size
    step_tokens = bs * run.seq_len
    budgets = sorted({max(1, round((i + 1) / run.snapshots * run.steps)) * step_tokens
                      for i in range(run.snapshots)})
    tcfg = derive(cfg.train, "pilot", seq_len=run.seq_len, batch_size=bs, micro_batch_size=bs,
                  max_tokens=run.steps * step_tokens, lr=run.lr, warmup_fraction=0.05, checkpoint_tokens=budgets,
                  eval_every_steps=None, seed=run.seed, save_every_steps=max(1, run.steps // 4))
    folder = root / run.name
    # mirror=None: the sampler is set below, after the fingerprint; pilots share no remote folder by fingerprint
    trainer = Trainer(_spec(cfg, run), tcfg, paths.tokens("train"), folder / "out", folder / "ckpt", progress=False,
                      mirror=None, live_dir=paths.live("hybrid_attention") / "pilot" / run.name)
    # A pilot folder of its own: no fingerprint clash.
    trainer.sampler = MixedSampler(trainer.sampler, retrieval_mix(cfg, run), tok)
    t0 = time.time()
    trainer.fit()
    seconds = time.time() - t0
    sets = eval_sets(cfg, paths, run, tok, eval_samples)
    out = []
    for b in budgets:
        model = load_model(folder / "out" / f"budget-{b}").eval()
        out.append({"run": run.name, "arch": run.arch, "tokens": b, "step": b // step_tokens,
                    **measure(model, sets, tok), "train_s": round(seconds, 1),
                    "params": sum(p.numel() for p in model.parameters())})
    return out
