"""Paper 2 (variable-width transformers, the "><former"): variants × sizes → widths, specs, training runs.

A run is (variant, size). Every run of a size shares the embedding / LM-head width h, depth L, head count,
token budget, seed and data order; only the per-block widths (``lmrepro.models.width``) and the residual
rule (``lmrepro.models.varwidth``) differ. The X model's widths are parameter-matched to the baseline by
the brief's budget 2·V·h + 16·Σw² − wasted; rounding to multiples of ``quantize`` breaks the match, so
(our choice, ``rematch``) single blocks are then moved by ±quantize, keeping the shape, to restore it
(``lmrepro.models.width.matched_widths``). Parameter / FLOP / KV accounting of a run's spec:
``lmrepro.analysis.flops.accounting``; its files and folders: ``artifacts``.
"""

from __future__ import annotations

import numpy as np

from ...config import Config, TrainConfig, derive
from ...models import LMSpec
from ...models.varwidth import MLP_RATIO, block_widths
from ...models.width import budget_deviation, matched_widths
from .artifacts import PAPER
from .config import VARIANT_EXPANSION, VARIANT_SHAPE, VARIANTS, turning_layer

__all__ = ["PAPER", "VARIANTS", "run_spec", "size_widths", "train_config", "width_table"]


# ------------------------------------------------------------------------------------------ widths

def size_widths(cfg: Config, size: str, shape: str | None) -> list[int]:
    """Widths of ``shape`` at ``size`` of the profile (its vocabulary, recipe and rounding)."""
    x = cfg.xformer
    s = x.sizes[size]
    V = cfg.tokenizer.vocab_size
    widths = matched_widths(s.hidden_size, s.num_layers, V, shape, ratio=x.bottleneck_ratio,
                            turning=turning_layer(s.num_layers, x.bottleneck_fraction),
                            quantize=x.quantize, num_heads=s.num_heads, rematch=x.rematch)
    dev = budget_deviation(widths, s.hidden_size, V)
    if abs(dev) > x.match_tolerance:
        raise ValueError(f"xformer.match_tolerance ({cfg.profile} profile): shape {shape!r} at size {size} has "
                         f"widths {widths}, {dev:+.2%} parameters vs the baseline (allowed ±{x.match_tolerance:.2%}); "
                         "use a smaller quantize, rematch: true or a larger tolerance")
    return widths


# ------------------------------------------------------------------------------------------ runs

def run_spec(cfg: Config, variant: str, size: str) -> LMSpec:
    """Spec of one run: the profile's model settings (norm eps, RoPE θ, init std), the size's h, L and heads
    (MHA: kv heads = heads, so KV cache ∝ Σ 2·w_ℓ), SwiGLU 4·width, untied embeddings; widths and the
    residual rule from the variant (the baseline is the ordinary constant-width model)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is unknown; choose one of {list(VARIANTS)}")
    x = cfg.xformer
    s = x.sizes[size]
    shape = VARIANT_SHAPE[variant]
    model = derive(cfg.model, f"{PAPER}.sizes.{size}", hidden_size=s.hidden_size, num_layers=s.num_layers,
                   num_heads=s.num_heads, num_kv_heads=None, intermediate_size=MLP_RATIO * s.hidden_size,
                   tie_embeddings=False, mixer="full", full_attention_every=None,
                   max_seq_len=max(cfg.model.max_seq_len, x.seq_len))
    widths = None if shape is None else tuple(size_widths(cfg, size, shape))
    return LMSpec.from_config(model, cfg.tokenizer.vocab_size, widths=widths,
                              expansion=VARIANT_EXPANSION[variant])


def train_config(cfg: Config, size: str) -> TrainConfig:
    """Training settings of every run of ``size``: the profile's optimizer and schedule with the section's
    context, batch, lr, seed and the size's token budget (whole steps); no mid-run snapshots."""
    x = cfg.xformer
    step_tokens = x.batch_size * x.seq_len
    steps = x.sizes[size].max_tokens // step_tokens
    return derive(
        cfg.train, PAPER, seq_len=x.seq_len, batch_size=x.batch_size, micro_batch_size=x.micro_batch_size,
        max_tokens=steps * step_tokens, lr=x.lr_of(size), warmup_fraction=x.warmup_fraction,
        precision=x.precision, seed=x.seed, checkpoint_tokens=[], eval_every_steps=None,
        save_every_steps=max(1, steps // 4), log_every_steps=max(1, steps // 200))


def width_table(cfg: Config) -> list[dict]:
    """One row per run: variant, size, widths (as text), turning layer and the matched-budget deviation."""
    rows = []
    for variant, size in cfg.xformer.runs():
        spec = run_spec(cfg, variant, size)
        w = block_widths(spec)
        rows.append({"variant": variant, "size": size, "hidden_size": spec.hidden_size,
                     "num_layers": spec.num_layers, "widths": " ".join(map(str, w)),
                     "average_width_ratio": float(np.mean(w)) / spec.hidden_size,
                     "budget_deviation": budget_deviation(w, spec.hidden_size, spec.vocab_size)})
    return rows

