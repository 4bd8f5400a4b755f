"""Paper 1 (efficient attention in hybrids): architectures × sizes → specs, training runs, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from ...config import Config, TrainConfig, derive
from ...config.layers import hybrid_pattern, render_layer_token
from ...models import LMSpec
from ...models.hybrid import layers_from_pattern
from ...paths import Paths
from . import artifacts
from .artifacts import PAPER
from .config import check_arch


def mixer_token(cfg: Config, arch: str) -> str:
    """Layer token of the efficient layers of ``arch`` (``full`` for the all-attention baseline)."""
    h = cfg.hybrid_attention
    if check_arch(arch) == "full":
        return "full"
    if arch.startswith("swa-"):
        return render_layer_token("attention", h.window(arch))
    return arch


def arch_spec(cfg: Config, arch: str, size: str) -> LMSpec:
    """Spec of ``arch`` at ``size``: the profile's model settings with the size's shape and the hybrid
    pattern (the last layer of every ``full_attention_every`` is full attention; NoPE there for *-nope)."""
    h = cfg.hybrid_attention
    s = h.sizes[size]
    every = None if arch == "full" else h.full_attention_every
    pattern = hybrid_pattern(s.num_layers, mixer_token(cfg, arch), every,
                             full_attention_rope=not arch.endswith("-nope"))
    model = derive(cfg.model, f"{PAPER}.sizes.{size}", hidden_size=s.hidden_size, num_layers=s.num_layers,
                   num_heads=s.num_heads, num_kv_heads=s.num_kv_heads, intermediate_size=s.intermediate_size,
                   tie_embeddings=h.tie_embeddings, max_seq_len=max(cfg.model.max_seq_len, 4 * h.seq_len))
    return LMSpec.from_config(model, cfg.tokenizer.vocab_size, layers=layers_from_pattern(pattern))


def train_config(cfg: Config, size: str) -> TrainConfig:
    """Training settings of one size: budgets at ``budget_fractions`` of its token budget (rounded to steps)."""
    h = cfg.hybrid_attention
    step_tokens = h.batch_size * h.seq_len
    steps = h.sizes[size].max_tokens // step_tokens
    budgets = sorted({max(1, round(f * steps)) * step_tokens for f in h.budget_fractions})
    return derive(
        cfg.train, PAPER, seq_len=h.seq_len, batch_size=h.batch_size, micro_batch_size=h.micro_batch_size,
        max_tokens=steps * step_tokens, lr=h.lr, warmup_fraction=h.warmup_fraction, checkpoint_tokens=budgets,
        eval_every_steps=None, seed=h.seed, save_every_steps=max(1, steps // 4))


def checkpoints(paths: Paths, arch: str, size: str) -> list[tuple[int, Path]]:
    """(tokens seen, model folder) of every token-budget snapshot of a finished run, in order."""
    out = artifacts.run_dirs(paths, arch, size)["out"]
    found = []
    for folder in out.glob(artifacts.SNAPSHOT_GLOB):
        meta = json.loads((folder / artifacts.SNAPSHOT_META).read_text())
        found.append((int(meta["tokens_seen"]), folder))
    if not found:
        raise FileNotFoundError(f"{out}: no {artifacts.SNAPSHOT_GLOB} snapshots; run the pretrain stage for {arch} "
                                f"(pipelines/{PAPER}/dvc.yaml)")
    return sorted(found)
