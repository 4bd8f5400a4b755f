"""Paper 2 evaluations: validation loss and accounting of every run; residual-stream, MLP and logit-lens
analyses of the baseline and the X model.

Each function returns plain rows (list of dicts) that the notebooks write as CSV/JSON (file names:
``artifacts``). Every run is scored on the same validation windows (``eval_windows`` of ``seq_len`` tokens
spread over the split), with ``lmrepro.eval.loss.evaluate_loss``; the analyses are ``lmrepro.eval.residual``'s.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ...analysis.flops import accounting
from ...config import Config
from ...data import ShardedTokens, eval_windows
from ...eval.loss import evaluate_loss
from ...eval.residual import (activation_density, logit_lens, mlp_activations, participation_ratio,
                              residual_entropy_by_layer, unit_utilization)
from ...missing import missing_input
from ...models.varwidth import block_widths
from ...paths import Paths
from ...pool import run_jobs
from ...train import load_model
from ...train.device import default_device
from . import artifacts
from .config import VARIANT_SHAPE, Run

nan = float("nan")

#: The two models every analysis compares.
ANALYZED = ("baseline", "x")


def _load(paths: Paths, variant: str, run: str) -> torch.nn.Module:
    """A trained run on the GPU when there is one (paper profile), else the CPU, in eval mode."""
    return load_model(final_dir(paths, variant, run)).to(default_device()).eval()


def final_dir(paths: Paths, variant: str, run: str) -> Path:
    folder = artifacts.final_model(paths, variant, run)
    if not (folder / artifacts.MODEL_META).is_file():
        raise FileNotFoundError(missing_input(f"{folder} (trained model)",
                                              f"pipelines/xformer/dvc.yaml:pretrain@{variant}"))
    return folder


def largest_size(cfg: Config) -> str:
    """The size with the most baseline parameters (h²·L dominates; ties: the last listed)."""
    sizes = cfg.xformer.sizes
    return max(sizes, key=lambda s: (sizes[s].num_layers * sizes[s].hidden_size ** 2, list(sizes).index(s)))


def _val_batches(cfg: Config, paths: Paths, windows: int, batch_size: int = 8):
    return eval_windows(ShardedTokens(paths.tokens("validation")), cfg.xformer.seq_len, windows, batch_size)


def evaluate_run(cfg: Config, paths: Paths, run: Run) -> tuple[dict, list[float]]:
    """(row, per-window losses) of one run: its identity (variant, size, run name, seed, token fraction,
    bottleneck), tokens, validation loss and accounting. Module-level so :func:`lmrepro.pool.run_jobs` can
    score the runs side by side."""
    x = cfg.xformer
    folder = final_dir(paths, run.variant, run.name)
    meta = json.loads((folder / artifacts.MODEL_META).read_text())
    model = _load(paths, run.variant, run.name)
    tokens = int(meta["tokens_seen"])
    batches = _val_batches(cfg, paths, x.eval_windows)
    per_window = evaluate_loss(model, batches, next(model.parameters()).device)["window_losses"]
    acc = accounting(model.spec, x.seq_len, tokens)
    shaped = model.spec.widths is not None and VARIANT_SHAPE[run.variant] == "x"
    fraction, ratio = run.bottleneck or ((x.bottleneck_fraction, x.bottleneck_ratio) if shaped else (nan, nan))
    row = {"variant": run.variant, "size": run.size, "run": run.name, "seed": run.seed,
           "token_fraction": run.token_fraction,
           "main": run.seed == x.seed and run.token_fraction == 1.0 and run.bottleneck is None,
           "bottleneck_fraction": fraction, "bottleneck_ratio": ratio,
           "hidden_size": model.spec.hidden_size, "num_layers": model.spec.num_layers,
           "widths": " ".join(map(str, block_widths(model.spec))),
           "expansion": model.spec.expansion if model.spec.widths is not None else "none",
           "tokens": tokens, "val_loss": float(np.mean(per_window)), "val_windows": len(per_window),
           "num_parameters_model": model.num_parameters(), **acc}
    return row, [float(v) for v in per_window]


def evaluate_runs(cfg: Config, paths: Paths) -> tuple[list[dict], list[dict]]:
    """(runs, windows): validation loss, parameters, FLOPs, average width and KV cache of every run
    (:func:`evaluate_run`, in worker processes), with its deviation from the baseline of its size, seed and
    token budget (the size's main baseline for runs without one: parameters actual and effective = without
    wasted slices, FLOPs, average width, loss); and every run's per-window validation loss (mean NLL of each
    window: their mean is the validation loss, paired per-window differences give its sampling error)."""
    todo = cfg.xformer.runs()
    scored = run_jobs(evaluate_run, todo, (cfg, paths))
    rows = [row for row, _ in scored]
    windows = [{"variant": run.variant, "size": run.size, "run": run.name, "window": i, "loss": v}
               for run, (_, losses) in zip(todo, scored) for i, v in enumerate(losses)]
    base = {(r["size"], r["seed"], r["token_fraction"]): r for r in rows if r["variant"] == "baseline"}
    for r in rows:
        b = base.get((r["size"], r["seed"], r["token_fraction"])) or base[(r["size"], cfg.xformer.seed, 1.0)]
        r["parameter_deviation"] = r["parameters"] / b["parameters"] - 1.0
        r["effective_parameter_deviation"] = r["effective_parameters"] / b["effective_parameters"] - 1.0
        r["flop_ratio"] = r["forward_flops"] / b["forward_flops"]
        r["average_width_ratio"] = r["average_width"] / b["average_width"]
        r["loss_gap"] = r["val_loss"] - b["val_loss"]
    return rows, windows


def metrics(rows: list[dict]) -> dict[str, float]:
    """Flat metrics for ``dvc metrics`` (the evaluate stage's evaluation.json): validation loss of every run
    and the X/baseline ratios."""
    out = {}
    for r in rows:
        key = f"{r['variant']}.{r['run']}"
        out[f"val_loss.{key}"] = round(float(r["val_loss"]), 5)
        if r["variant"] != "baseline":
            out[f"flop_ratio.{key}"] = round(float(r["flop_ratio"]), 5)
            out[f"parameter_deviation.{key}"] = round(float(r["effective_parameter_deviation"]), 5)
    return out


def _analysis_input(cfg: Config, paths: Paths) -> torch.Tensor:
    """[N, seq_len + 1] validation windows (N = analysis.windows), the same for both models."""
    return torch.cat(list(_val_batches(cfg, paths, cfg.xformer.analysis.windows))).to(default_device())


def full_budget_runs(cfg: Config, variant: str) -> list[Run]:
    """Every seed's run of ``variant`` at the full token budget (the analyses' inputs)."""
    return [run for run in cfg.xformer.variant_runs(variant) if run.token_fraction == 1.0]


def entropy_rows(cfg: Config, paths: Paths) -> list[dict]:
    """Normalized residual-stream matrix entropy after the embedding (stage 0) and each block, for every
    full-budget run of the baseline and the X model (every size; every seed at the ablation size, whose spread
    is the valley claims' noise)."""
    batch = _analysis_input(cfg, paths)[:, :-1]
    rows = []
    for variant in ANALYZED:
        for run in full_budget_runs(cfg, variant):
            model = _load(paths, variant, run.name)
            widths = (model.spec.hidden_size,) + block_widths(model.spec)
            for stage, value in enumerate(residual_entropy_by_layer(model, batch)):
                rows.append({"variant": variant, "size": run.size, "run": run.name, "seed": run.seed,
                             "stage": stage, "width": widths[stage], "entropy": value})
    return rows


def mlp_rows(cfg: Config, paths: Paths, size: str) -> dict[str, list[dict]]:
    """MLP activation density over thresholds, participation ratio per layer and per-unit utilization
    (units sorted by utilization, for heatmaps) of the baseline and the X model at ``size``."""
    a = cfg.xformer.analysis
    batch = _analysis_input(cfg, paths)[:, :-1]
    density, pr, util = [], [], []
    for variant in ANALYZED:
        model = _load(paths, variant, size)
        acts = mlp_activations(model, batch)
        dens = activation_density(acts, a.thresholds)
        for layer, row in enumerate(dens):
            for t, value in zip(a.thresholds, row):
                density.append({"variant": variant, "layer": layer, "threshold": t, "density": float(value)})
        for layer, value in enumerate(participation_ratio(acts)):
            units = acts[layer].shape[1]
            pr.append({"variant": variant, "layer": layer, "units": units, "participation_ratio": value,
                       "participation_fraction": value / units})
        for layer, values in enumerate(unit_utilization(acts, a.utilization_threshold)):
            for rank, value in enumerate(np.sort(values)[::-1]):
                util.append({"variant": variant, "layer": layer, "rank": rank, "utilization": float(value)})
    return {"density": density, "participation": pr, "utilization": util}


def logit_lens_rows(cfg: Config, paths: Paths) -> list[dict]:
    """Logit lens per stage (0 = embedding, ℓ = after block ℓ) of every seed of the baseline and the X model at
    the ablation size (their seed spread is the noise of the logit-lens claim): target log-prob, entropy (nats)
    and the KL from the previous stage's prediction."""
    x = cfg.xformer
    windows = _analysis_input(cfg, paths)
    rows = []
    for variant in ANALYZED:
        for run in full_budget_runs(cfg, variant):
            if run.size != x.ablation_size:
                continue
            model = _load(paths, variant, run.name)
            lens = logit_lens(model, windows[:, :-1], windows[:, 1:])
            for stage in range(len(lens["logprob"])):
                # kl_from_previous at stage s ≥ 1: KL(p_s ‖ p_{s−1}), what block s changes in the prediction.
                kl = float(lens["kl_next"][stage - 1]) if stage > 0 else nan
                rows.append({"variant": variant, "size": run.size, "seed": run.seed, "stage": stage,
                             "logprob": float(lens["logprob"][stage]), "entropy": float(lens["entropy"][stage]),
                             "kl_from_previous": kl})
    return rows
