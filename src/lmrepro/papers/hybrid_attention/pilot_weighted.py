"""Paper 1 pilot, rounds 3–8: the answer tokens of the synthetic rows weighted in the loss.

Rounds 1–2 (:mod:`.pilot`) found two answer tokens a row too little signal against the thousands of
language-modelling tokens of a step. Here every token a synthetic row asks the model to reproduce — values, and
the copied span of a repeat row (:func:`lmrepro.data.retrieval_mix.answer_mask`) — counts ``weight`` times in a
weighted mean of the token losses; everything else is the round-2 setup (same model, data, measures from
:func:`.pilot.measure`), in fp32 on the CPU (the loop has no device placement or autocast).

Why a loop of its own: the pilot came before the Trainer learned weighted streams (``Trainer(sampler=…)``, what
the pipeline now uses), and its cached measures are keyed by these runs. The loop uses the Trainer's optimizer
and schedule (:func:`build_optimizer`, :func:`lr_multiplier`) and the same Σ w·CE / Σ w.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ...config import Config, derive
from ...data import ChunkSampler, ShardedTokens, load_tokenizer
from ...data.retrieval_mix import MixedSampler
from ...models import DecoderLM
from ...paths import Paths
from ...train.schedule import lr_multiplier
from ...train.trainer import build_optimizer
from .pilot import PilotRun, _spec, eval_sets, measure, retrieval_mix


@dataclass(frozen=True)
class WeightedRun:
    """A :class:`PilotRun` with the answer labels of its synthetic rows weighted
    (:func:`lmrepro.data.retrieval_mix.answer_mask`)."""

    run: PilotRun
    weight: float

    @property
    def name(self) -> str:
        return f"{self.run.name}-w{self.weight}"


def run_weighted(cfg: Config, paths: Paths, root: Path, job: WeightedRun) -> list[dict]:
    """Train ``job`` from scratch (one process) and measure at its snapshots; cached in
    ``root/<name>/measures.json`` (a rerun of the notebook reads it instead of training again)."""
    cache = root / job.name / "measures.json"
    if cache.exists():
        return json.loads(cache.read_text())
    run, tok = job.run, load_tokenizer(paths.tokenizer)
    bs, steps = run.batch_size, run.steps
    tcfg = derive(cfg.train, "pilot", seq_len=run.seq_len, batch_size=bs, micro_batch_size=bs,
                  max_tokens=steps * bs * run.seq_len, lr=run.lr, warmup_fraction=0.05, eval_every_steps=None,
                  checkpoint_tokens=[], seed=run.seed)
    torch.manual_seed(tcfg.seed)
    model = DecoderLM(_spec(cfg, run))
    optimizer = build_optimizer(model, tcfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, steps, tcfg))
    sampler = MixedSampler(ChunkSampler(ShardedTokens(paths.tokens("train")), run.seq_len, tcfg.seed),
                           replace(retrieval_mix(cfg, run), answer_weight=job.weight), tok)
    sets = eval_sets(cfg, paths, run, tok)
    snap = {max(1, round((i + 1) / run.snapshots * steps)) for i in range(run.snapshots)}
    out, t0 = [], time.time()
    for step in range(steps):
        batch = sampler.batch(step, bs)
        w = sampler.weights(step, bs)
        w = torch.ones(bs, run.seq_len) if w is None else w  # weight 1: the plain loss
        logits = model(batch[:, :-1])
        ce = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
        loss = (ce * w.flatten()).sum() / w.sum()
        loss.backward()
        if tcfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step + 1 in snap:
            model.eval()
            out.append({"run": job.name, "arch": run.arch, "weight": job.weight, "step": step + 1,
                        "tokens": (step + 1) * bs * run.seq_len, **measure(model, sets, tok),
                        "train_s": round(time.time() - t0, 1), "params": sum(p.numel() for p in model.parameters()),
                        "config": asdict(run)})
            model.train()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=1))
    return out
