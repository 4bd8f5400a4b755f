"""Paper 2 (variable-width transformers, the "><former"): variants × sizes → widths, specs, training runs,
parameter / FLOP / KV accounting.

A run is (variant, size). Every run of a size shares the embedding / LM-head width h, depth L, head count,
token budget, seed and data order; only the per-block widths (``lmrepro.models.width``) and the residual
rule (``lmrepro.models.varwidth``) differ. The X model's widths are parameter-matched to the baseline by
the brief's budget 2·V·h + 16·Σw² − wasted; rounding to multiples of ``quantize`` breaks the match, so
(our choice, ``rematch``) single blocks are then moved by ±quantize, keeping the shape, to restore it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..analysis.flops import average_width, forward_flops, kv_cache_bytes_per_token
from ..config import Config, TrainConfig
from ..config.xformer import VARIANT_EXPANSION, VARIANT_SHAPE, VARIANTS, turning_layer
from ..models import LMSpec
from ..models.varwidth import MLP_RATIO, block_widths, width_changes
from ..models.width import schedule_budget, wasted_parameters, width_schedule, x_profile
from ..paths import Paths

PAPER = "xformer"

__all__ = ["PAPER", "VARIANTS", "accounting", "budget_deviation", "checkpoint_dir", "matched_widths",
           "model_parameters", "rematch_widths", "run_dirs", "run_spec", "shape_ok", "size_widths",
           "train_config", "projection_parameters"]


# ------------------------------------------------------------------------------------------ widths

def shape_ok(widths, shape: str, turning: int) -> bool:
    """Does ``widths`` keep the monotone segments of ``shape`` (non-strictly)? ``turning`` = 1-indexed l*."""
    w = list(widths)
    down = lambda seq: all(a >= b for a, b in zip(seq, seq[1:]))  # noqa: E731
    up = lambda seq: all(a <= b for a, b in zip(seq, seq[1:]))  # noqa: E731
    if shape == "x":
        return down(w[:turning]) and up(w[turning - 1:])
    if shape == "diamond":
        return up(w[:turning]) and down(w[turning - 1:])
    if shape == "increasing":
        return up(w)
    if shape == "decreasing":
        return down(w)
    raise ValueError(f"shape {shape!r} is unknown")


def budget_deviation(widths, hidden_size: int, vocab_size: int) -> float:
    """(budget(widths) − budget(baseline)) / budget(baseline), budget = 2·V·h + 16·Σw² − wasted (the brief's
    matched quantity: parameters that can receive signal, norms ignored)."""
    base = schedule_budget([hidden_size] * len(widths), hidden_size, vocab_size)
    return (schedule_budget(widths, hidden_size, vocab_size) - base) / base


def rematch_widths(widths, hidden_size: int, vocab_size: int, shape: str, turning: int, quantize: int,
                   keep: tuple[int, ...] = ()) -> list[int]:
    """Greedy re-matching after rounding: repeatedly apply the single move that most reduces |budget
    deviation| — one block ±quantize, or (x, diamond) both end blocks together so w_1 = w_L stays — among
    moves that keep ``shape`` (:func:`shape_ok`), widths ≥ quantize and the 0-indexed blocks ``keep`` (the
    bottleneck) unchanged. Stops when no move helps; |deviation| never increases."""
    cur = [int(w) for w in widths]
    L = len(cur)
    symmetric = shape in ("x", "diamond") and cur[0] == cur[-1]
    groups = [(0, L - 1)] if symmetric else [(0,), (L - 1,)]
    groups += [(i,) for i in range(1, L - 1)]
    groups = [g for g in groups if not set(g) & set(keep)]
    err = abs(budget_deviation(cur, hidden_size, vocab_size))
    while True:
        best = None
        for group in groups:
            for step in (-quantize, quantize):
                cand = list(cur)
                for i in group:
                    cand[i] += step
                if min(cand) < quantize or not shape_ok(cand, shape, turning):
                    continue
                e = abs(budget_deviation(cand, hidden_size, vocab_size))
                if e < err - 1e-15 and (best is None or e < best[0]):
                    best = (e, cand)
        if best is None:
            return cur
        err, cur = best


def matched_widths(hidden_size: int, num_layers: int, vocab_size: int, shape: str | None, *, ratio: float,
                   turning: int, quantize: int, num_heads: int, rematch: bool = True) -> list[int]:
    """Per-block widths of ``shape`` (None: the constant baseline), parameter-matched to the baseline.

    ``turning`` (1-indexed l*) is used by x and diamond; the monotone shapes have none."""
    if shape is None:
        return [hidden_size] * num_layers
    lstar = turning if shape in ("x", "diamond") else None
    widths = width_schedule(hidden_size, num_layers, vocab_size, shape=shape, bottleneck_ratio=ratio,
                            bottleneck_layer=lstar, quantize=quantize, num_heads=num_heads)
    if not rematch:
        return widths
    prof = x_profile(hidden_size, num_layers, vocab_size, shape=shape, bottleneck_ratio=ratio, bottleneck_layer=lstar)
    narrowest = int(np.argmin(prof.widths))
    return rematch_widths(widths, hidden_size, vocab_size, shape, prof.bottleneck_layer, quantize, keep=(narrowest,))


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
        raise ValueError(f"profiles.{cfg.profile}.xformer.match_tolerance: shape {shape!r} at size {size} has widths "
                         f"{widths}, {dev:+.2%} parameters vs the baseline (allowed ±{x.match_tolerance:.2%}); use a "
                         "smaller quantize, rematch: true or a larger tolerance")
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
    model = dataclasses.replace(cfg.model, hidden_size=s.hidden_size, num_layers=s.num_layers,
                                num_heads=s.num_heads, num_kv_heads=None,
                                intermediate_size=MLP_RATIO * s.hidden_size, tie_embeddings=False,
                                mixer="full", full_attention_every=None,
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
    return dataclasses.replace(
        cfg.train, seq_len=x.seq_len, batch_size=x.batch_size, micro_batch_size=x.micro_batch_size,
        max_tokens=steps * step_tokens, lr=x.lr_of(size), warmup_fraction=x.warmup_fraction,
        precision=x.precision, seed=x.seed, checkpoint_tokens=[], eval_every_steps=None,
        save_every_steps=max(1, steps // 4), log_every_steps=max(1, steps // 200))


def run_dirs(paths: Paths, variant: str, size: str) -> dict[str, Path]:
    results = paths.results(PAPER) / "train" / variant
    return {"out": paths.data / PAPER / "models" / variant / size,
            "ckpt": checkpoint_dir(paths, variant) / size,
            "log": results / f"{size}.csv",
            "provenance": results / f"{size}.provenance.json"}


def checkpoint_dir(paths: Paths, variant: str) -> Path:
    return paths.data / "checkpoints" / PAPER / variant


# ------------------------------------------------------------------------------------------ accounting

def projection_parameters(spec: LMSpec) -> int:
    """Parameters of the learned width projections ("learned" rule): Σ w_{ℓ−1}·w_ℓ where the width changes."""
    if spec.expansion != "learned" or spec.widths is None:
        return 0
    return sum(spec.widths[i - 1] * spec.widths[i] for i in width_changes(spec))


def model_parameters(spec: LMSpec) -> int:
    """Exact parameter count of ``DecoderLM(spec)`` (built on the meta device: no memory, any size)."""
    import torch

    from ..models import DecoderLM

    with torch.device("meta"):
        return DecoderLM(spec).num_parameters()


def accounting(spec: LMSpec, seq_len: int, tokens: float) -> dict[str, float]:
    """Parameters, FLOPs and KV cache of one run (lmrepro.analysis.flops conventions, the brief's formula).

    parameters: every tensor of the model; effective_parameters: minus the wasted (never-signalled) slices;
    forward_flops: per sequence of ``seq_len`` tokens, + 2·s·(projection parameters) for "learned";
    train_flops: 3 × forward × tokens / seq_len; kv_bytes_per_token: bf16, Σ 2·w_ℓ·2 bytes."""
    widths = block_widths(spec)
    h, V = spec.hidden_size, spec.vocab_size
    wasted = wasted_parameters(widths, h) if spec.widths is not None else 0.0
    proj = projection_parameters(spec)
    fwd = forward_flops(widths, h, V, seq_len) + 2.0 * seq_len * proj
    params = model_parameters(spec)
    return {"parameters": params, "effective_parameters": params - wasted, "wasted_parameters": wasted,
            "projection_parameters": proj, "average_width": average_width(widths),
            "min_width": min(widths), "max_width": max(widths),
            "forward_flops": fwd, "train_flops": 3.0 * fwd * float(tokens) / seq_len,
            "kv_bytes_per_token": kv_cache_bytes_per_token(widths, 2),
            "budget_deviation": budget_deviation(widths, h, V)}


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

