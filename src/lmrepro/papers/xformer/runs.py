"""Paper 2 (variable-width transformers, the "><former"): variants × sizes → widths, specs, training runs.

A run (:class:`~.config.Run`) is a variant at a size, with a seed, a token budget and, for the ``bottleneck``
variant, its own bottleneck location and width. Every run of a size shares the embedding / LM-head width h,
depth L and head count; runs with the same seed and token budget also share the data order, so only the
per-block widths (``lmrepro.models.width``) and the residual rule (``lmrepro.models.varwidth``) differ.
The X model's widths are parameter-matched to the baseline by
the brief's budget 2·V·h + 16·Σw² − wasted; rounding to multiples of ``quantize`` breaks the match, so
(our choice, ``rematch``) single blocks are then moved by ±quantize, keeping the shape, to restore it
(``lmrepro.models.width.matched_widths``). Parameter / FLOP / KV accounting of a run's spec:
``lmrepro.analysis.flops.accounting``; its files and folders: ``artifacts``.
"""

from __future__ import annotations

import numpy as np

from ...analysis.flops import accounting
from ...config import Config, TrainConfig, derive
from ...models import LMSpec
from ...models.varwidth import MLP_RATIO, block_widths
from ...models.width import budget_deviation, matched_widths
from ...paths import Paths
from ...train import Trainer
from . import artifacts
from .artifacts import PAPER
from .config import VARIANT_EXPANSION, VARIANT_SHAPE, VARIANTS, Run, turning_layer

__all__ = ["PAPER", "VARIANTS", "run_spec", "size_widths", "train_config", "train_run", "train_threads",
           "width_table"]


# ------------------------------------------------------------------------------------------ widths

def size_widths(cfg: Config, size: str, shape: str | None,
                bottleneck: tuple[float, float] | None = None) -> list[int]:
    """Widths of ``shape`` at ``size`` of the profile (its vocabulary, recipe and rounding); ``bottleneck``:
    (turning-layer fraction, ratio) in place of the section's recipe."""
    x = cfg.xformer
    s = x.sizes[size]
    V = cfg.tokenizer.vocab_size
    fraction, ratio = bottleneck or (x.bottleneck_fraction, x.bottleneck_ratio)
    widths = matched_widths(s.hidden_size, s.num_layers, V, shape, ratio=ratio,
                            turning=turning_layer(s.num_layers, fraction),
                            quantize=x.quantize, num_heads=s.num_heads, rematch=x.rematch)
    dev = budget_deviation(widths, s.hidden_size, V)
    if abs(dev) > x.match_tolerance:
        raise ValueError(f"xformer.match_tolerance ({cfg.profile} profile): shape {shape!r} at size {size} has "
                         f"widths {widths}, {dev:+.2%} parameters vs the baseline (allowed ±{x.match_tolerance:.2%}); "
                         "use a smaller quantize, rematch: true or a larger tolerance")
    return widths


# ------------------------------------------------------------------------------------------ runs

def run_spec(cfg: Config, variant: str, size: str, bottleneck: tuple[float, float] | None = None) -> LMSpec:
    """Spec of one run: the profile's model settings (norm eps, RoPE θ, init std), the size's h, L and heads
    (MHA: kv heads = heads, so KV cache ∝ Σ 2·w_ℓ), SwiGLU 4·width, untied embeddings, the section's
    parametrization (``mup_base_width``: μP, else standard); widths and the
    residual rule from the variant (the baseline is the ordinary constant-width model); ``bottleneck``: a
    ``bottleneck`` run's (turning-layer fraction, ratio)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is unknown; choose one of {list(VARIANTS)}")
    x = cfg.xformer
    s = x.sizes[size]
    shape = VARIANT_SHAPE[variant]
    model = derive(cfg.model, f"{PAPER}.sizes.{size}", hidden_size=s.hidden_size, num_layers=s.num_layers,
                   num_heads=s.num_heads, num_kv_heads=None, intermediate_size=MLP_RATIO * s.hidden_size,
                   tie_embeddings=False, mixer="full", full_attention_every=None,
                   max_seq_len=max(cfg.model.max_seq_len, x.seq_len))
    widths = None if shape is None else tuple(size_widths(cfg, size, shape, bottleneck))
    return LMSpec.from_config(model, cfg.tokenizer.vocab_size, widths=widths,
                              expansion=VARIANT_EXPANSION[variant], mup_base_width=x.mup_base_width)


def train_config(cfg: Config, size: str, seed: int | None = None, token_fraction: float = 1.0) -> TrainConfig:
    """Training settings of a run at ``size``: the profile's optimizer and schedule with the section's
    context, batch and lr, ``seed`` (None: the main seed) and ``token_fraction`` of the size's token budget
    (whole steps; the schedule spans the run's own budget); no mid-run snapshots."""
    x = cfg.xformer
    step_tokens = x.batch_size * x.seq_len
    steps = int(x.sizes[size].max_tokens * token_fraction) // step_tokens
    if steps < 1:
        raise ValueError(f"xformer.token_fractions: {token_fraction} of size {size}'s max_tokens "
                         f"({x.sizes[size].max_tokens}) is less than one step ({step_tokens} tokens)")
    return derive(
        cfg.train, PAPER, seq_len=x.seq_len, batch_size=x.batch_size, micro_batch_size=x.micro_batch_size,
        max_tokens=steps * step_tokens, lr=x.lr_of(size), warmup_fraction=x.warmup_fraction,
        precision=x.precision, seed=x.seed if seed is None else seed, checkpoint_tokens=[], eval_every_steps=None,
        save_every_steps=max(1, steps // 4), log_every_steps=max(1, steps // 200))


def train_run(cfg: Config, paths: Paths, run: Run) -> dict:
    """Train (or resume, or find finished) one run; a summary row. Module-level so :func:`lmrepro.pool.run_jobs`
    can train the runs of a stage side by side."""
    xf = cfg.xformer
    spec = run_spec(cfg, run.variant, run.size, run.bottleneck)
    dirs = artifacts.run_dirs(paths, run.variant, run.name)
    trainer = Trainer(spec, train_config(cfg, run.size, run.seed, run.token_fraction), paths.tokens("train"),
                      dirs["out"], dirs["ckpt"], log_path=dirs["log"], provenance_path=dirs["provenance"],
                      run_config=cfg, progress=False, live_dir=dirs["live"])
    result = trainer.fit()
    acc = accounting(spec, xf.seq_len, result.step * xf.batch_size * xf.seq_len)
    return {"run": run.name, "widths": " ".join(map(str, block_widths(spec))), "parameters": acc["parameters"],
            "budget_deviation": round(acc["budget_deviation"], 4), "steps": result.step,
            "final_train_loss": result.rows[-1]["loss"], "resumed_from": result.resumed_from_step}


def train_threads(jobs: list[Run]) -> int:
    """Torch threads of every run of one pretraining stage: 2 when the stage trains a single run (one worker,
    so it can use both laptop cores: 1.7× the tokens/s of one thread for an s2 model, measured 2026-12-06),
    else 1 (one per worker, :mod:`lmrepro.pool`). It depends on the stage's run list only, never on the
    machine, so a run's numbers are the same on every machine of one kind."""
    return 2 if len(jobs) == 1 else 1


def width_table(cfg: Config) -> list[dict]:
    """One row per run: variant, run name, size, widths (as text) and the matched-budget deviation."""
    rows = []
    for run in cfg.xformer.runs():
        spec = run_spec(cfg, run.variant, run.size, run.bottleneck)
        w = block_widths(spec)
        rows.append({"variant": run.variant, "run": run.name, "size": run.size, "hidden_size": spec.hidden_size,
                     "num_layers": spec.num_layers, "widths": " ".join(map(str, w)),
                     "average_width_ratio": float(np.mean(w)) / spec.hidden_size,
                     "budget_deviation": budget_deviation(w, spec.hidden_size, spec.vocab_size)})
    return rows

