"""Paper 1 pilot: does long-range retrieval emerge at laptop scale, and how fast?

One pilot run trains an 8-layer model (full attention at layers 4 and 8 for the hybrids, the same pattern the
redesigned pipeline uses) on the Python-source stream with synthetic retrieval rows mixed in
(:mod:`lmrepro.data.retrieval_mix`), keeps snapshots at quarter budgets and measures at each:

* ``needle_acc``: greedy single-needle RULER accuracy at 1× length on validation haystacks (the task the
  pipeline's precondition uses; 3-digit values, chance ≈ 0);
* ``value_nll``: mean NLL (nats) of the value tokens in held-out recall rows — the copy signal, which moves
  before accuracy does; uniform guessing over the 900 values costs ln 900 ≈ 6.80.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...config import Config, derive
from ...config.layers import hybrid_pattern, render_layer_token
from ...data import ChunkSampler, ShardedTokens, load_tokenizer
from ...data.retrieval_mix import MixedSampler, RetrievalMix
from ...data.synthetic import make_task
from ...eval.ruler import evaluate_task
from ...models import LMSpec
from ...models.hybrid import layers_from_pattern
from ...paths import Paths
from ...train import Trainer, load_model

CHANCE_VALUE_NLL = math.log(900)  # 3-digit values without a leading zero


@dataclass(frozen=True)
class PilotRun:
    """One pilot configuration (8 layers, 4 heads, batch 8)."""

    arch: str  # full, swa-small or swa-large
    seq_len: int
    hidden_size: int
    steps: int
    share: float
    kinds: tuple[str, ...]
    recall_pairs: int = 4
    lr: float = 4e-3
    num_layers: int = 8

    @property
    def name(self) -> str:
        return (f"{self.arch}-T{self.seq_len}-d{self.hidden_size}-L{self.num_layers}-n{self.steps}-m{self.share}"
                f"-{'+'.join(self.kinds)}-p{self.recall_pairs}-lr{self.lr}")

    def window(self) -> int | None:
        return {"full": None, "swa-small": max(1, round(self.seq_len / 128)), "swa-large": round(self.seq_len / 8)}[
            self.arch]


def _spec(cfg: Config, run: PilotRun) -> LMSpec:
    win = run.window()
    mixer = "full" if win is None else render_layer_token("attention", win)
    pattern = hybrid_pattern(run.num_layers, mixer, None if win is None else 4)
    model = derive(cfg.model, "pilot", hidden_size=run.hidden_size, num_layers=run.num_layers, num_heads=4,
                   num_kv_heads=4, intermediate_size=run.hidden_size * 11 // 64 * 16, max_seq_len=4 * run.seq_len)
    return LMSpec.from_config(model, cfg.tokenizer.vocab_size, layers=layers_from_pattern(pattern))


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


def run_pilot(cfg: Config, paths: Paths, run: PilotRun, root: Path, eval_samples: int = 32) -> list[dict]:
    """Train ``run`` under ``root/<name>`` (resumable) and measure every quarter-budget snapshot."""
    tok = load_tokenizer(paths.tokenizer)
    bs = 8
    step_tokens = bs * run.seq_len
    budgets = sorted({max(1, round(f * run.steps)) * step_tokens for f in (0.25, 0.5, 0.75, 1.0)})
    tcfg = derive(cfg.train, "pilot", seq_len=run.seq_len, batch_size=bs, micro_batch_size=bs,
                  max_tokens=run.steps * step_tokens, lr=run.lr, warmup_fraction=0.05, checkpoint_tokens=budgets,
                  eval_every_steps=None, seed=0, save_every_steps=max(1, run.steps // 4))
    # Values sit beyond the stacked receptive field of the smallest window's six SWA layers.
    min_distance = 6 * max(1, round(run.seq_len / 128)) + 1
    mix = RetrievalMix(share=run.share, kinds=run.kinds, value_digits=3, min_distance=min_distance, seed=0,
                       recall_pairs=run.recall_pairs)
    folder = root / run.name
    trainer = Trainer(_spec(cfg, run), tcfg, paths.tokens("train"), folder / "out", folder / "ckpt", progress=False)
    trainer.sampler = MixedSampler(trainer.sampler, mix, tok)  # a pilot folder of its own: no fingerprint clash
    t0 = time.time()
    trainer.fit()
    seconds = time.time() - t0
    val = ShardedTokens(paths.tokens("validation"))
    held_out_mix = RetrievalMix(0.5, ("recall",), 3, min_distance, seed=99, recall_pairs=run.recall_pairs)
    held_out = MixedSampler(ChunkSampler(val, run.seq_len, 0), held_out_mix, tok)
    rows = [held_out.row(s, r) for s in range(4) for r in held_out.positions(s, 8)]
    samples = make_task("single_needle", tok, val.read(0, min(len(val), 200_000)), run.seq_len, eval_samples,
                        seed=123, value_digits=3)
    out = []
    for b in budgets:
        model = load_model(folder / "out" / f"budget-{b}").eval()
        out.append({"run": run.name, "arch": run.arch, "tokens": b, "step": b // step_tokens,
                    "needle_acc": evaluate_task(model, samples, tok)["accuracy"],
                    "value_nll": value_nll(model, rows, tok), "train_s": round(seconds, 1),
                    "params": sum(p.numel() for p in model.parameters())})
    return out
