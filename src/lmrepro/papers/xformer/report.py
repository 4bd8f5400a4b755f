"""Paper 2 report: read the evaluation tables, fit the loss-matched power laws, compute each claim's metric.

Metrics (named in pipelines/xformer/claims.yaml; all from our own numbers; "the ablation size" is the profile's
``xformer.ablation_size``, "largest" the largest size):
  x_loss_gap_max             max over sizes of (val loss X − val loss baseline); < 0: X better at every size
  flop_ratio_equal_params    forward FLOPs X / baseline at the largest size (brief's formula, equal parameters)
  width_ratio_equal_params   average block width (∝ KV cache per token) X / baseline at the largest size
  compute_ratio_equal_loss   training FLOPs X / baseline for the baseline's loss at the largest size, from
                             loss = A·C^(−a) fitted per architecture over the sizes (compute_ratio_at_equal_loss)
  width_ratio_equal_loss     the same with average width in place of compute
  zero_minus_carry           val loss zero padding − carry-forward (the X run) at the ablation size
  learned_minus_zero         val loss learned projection − zero padding at the ablation size
  x_minus_best_shape         val loss X − min(diamond, increasing, decreasing) at the ablation size
  baseline_valley_depth      depth of the baseline's mid-depth residual-entropy valley over the block outputs
                             (``valley_depth``, largest size)
  valley_depth_gap           baseline valley depth − X valley depth (largest size)

Evidence for the loss metrics includes the paired standard error of each difference over validation windows
(sampling error of the evaluation only: it does not include training-seed noise, which is larger).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from ...analysis.scaling import compute_ratio_at_equal_loss, fit_power_law
from ...paths import Paths
from . import artifacts
from .config import VARIANTS

OTHER_SHAPES = ("diamond", "increasing", "decreasing")


def load_tables(paths: Paths) -> dict[str, pd.DataFrame]:
    """The evaluate and analyze stages' tables and every run's training log (``artifacts`` names them)."""
    tables = {"runs": pd.read_csv(artifacts.runs_table(paths)),
              "windows": pd.read_csv(artifacts.window_losses(paths))}
    for name in artifacts.ANALYSIS_TABLES:
        path = artifacts.analysis_table(paths, name)
        tables[name] = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    frames = []
    for variant, size, path in artifacts.train_logs(paths):
        frames.append(pd.read_csv(path).assign(variant=variant, size=size))
    tables["train"] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return tables


def valley_depth(entropy: Sequence[float]) -> float:
    """Depth of a mid-depth valley of a per-layer profile H_1..H_L (the residual stream after each block).

    m = the interior layer (2..L−1) with the lowest value; depth = min(max H before m, max H after m) − H_m,
    clamped at 0: how far the interior minimum lies below the lower of the highest points on its two sides.
    0 for a monotone profile (no valley). Our definition: the paper body does not give one. The embedding
    (stage 0) is left out by the caller: no block produces it, and in our small, briefly trained models its
    entropy is far above every block's, which turned the drop after the embedding into a "valley" at layer 1."""
    h = np.asarray(entropy, dtype=np.float64)
    if h.ndim != 1 or h.size < 3 or not np.all(np.isfinite(h)):
        raise ValueError(f"entropy: expected >= 3 finite per-layer values, got {list(entropy)!r}")
    m = 1 + int(np.argmin(h[1:-1]))
    return float(max(0.0, min(h[:m].max(), h[m + 1:].max()) - h[m]))


def largest(runs: pd.DataFrame) -> str:
    """Largest size: the one whose baseline has the most parameters."""
    base = runs[runs.variant == "baseline"]
    return str(base.loc[base["parameters"].idxmax(), "size"])


def ablation_size(runs: pd.DataFrame) -> str:
    """The size at which the shape / residual ablations ran (where the diamond run is)."""
    ab = runs[runs.variant.isin(OTHER_SHAPES + ("zero", "learned"))]
    return str(ab["size"].iloc[0]) if len(ab) else largest(runs)


def _loss(runs: pd.DataFrame, variant: str, size: str) -> float:
    row = runs[(runs.variant == variant) & (runs["size"] == size)]
    return float(row["val_loss"].iloc[0]) if len(row) else math.nan


def paired_se(windows: pd.DataFrame, a: str, b: str, size: str) -> float:
    """Standard error of mean(loss a − loss b) over the shared validation windows at ``size``."""
    wa = windows[(windows.variant == a) & (windows["size"] == size)].set_index("window")["loss"]
    wb = windows[(windows.variant == b) & (windows["size"] == size)].set_index("window")["loss"]
    diff = (wa - wb).dropna()
    return float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan


def loss_matched(runs: pd.DataFrame) -> tuple[dict[str, float], pd.DataFrame]:
    """compute_ratio_equal_loss and width_ratio_equal_loss, and the per-architecture power-law fits."""
    base = runs[runs.variant == "baseline"].sort_values("train_flops")
    x = runs[runs.variant == "x"].sort_values("train_flops")
    values, fits = {}, []
    target = float(base.loc[base["train_flops"].idxmax(), "val_loss"]) if len(base) else math.nan
    for metric, column in (("compute_ratio_equal_loss", "train_flops"), ("width_ratio_equal_loss", "average_width")):
        try:
            values[metric] = compute_ratio_at_equal_loss(base[[column, "val_loss"]].to_numpy(),
                                                         x[[column, "val_loss"]].to_numpy(), target)
        except ValueError:  # fewer than two sizes, or a flat fit: reported as unmeasurable
            values[metric] = math.nan
        for variant, group in (("baseline", base), ("x", x)):
            try:
                fit = fit_power_law(group[column], group["val_loss"])
                fits.append({"variant": variant, "x": column, "A": fit.A, "a": fit.a, "r2": fit.r2,
                             "n_points": len(group), "target_loss": target,
                             "x_at_target": float(fit.inverse(target)) if fit.a != 0 else math.nan})
            except ValueError:
                fits.append({"variant": variant, "x": column, "n_points": len(group)})
    return values, pd.DataFrame(fits)


def claim_values(tables: dict[str, pd.DataFrame]) -> tuple[dict[str, float], dict[str, dict]]:
    """Each metric of the module docstring and the numbers behind it (evidence for the ledger)."""
    runs, windows = tables["runs"], tables["windows"]
    big, ab = largest(runs), ablation_size(runs)
    sizes = list(dict.fromkeys(runs[runs.variant == "baseline"]["size"]))
    values, evidence = {}, {}

    gaps = {s: _loss(runs, "x", s) - _loss(runs, "baseline", s) for s in sizes}
    values["x_loss_gap_max"] = max(gaps.values()) if gaps else math.nan
    evidence["x_loss_gap_max"] = {"loss_gap_x_minus_baseline": {s: round(g, 4) for s, g in gaps.items()},
                                  "paired_se": {s: round(paired_se(windows, "x", "baseline", s), 4) for s in sizes},
                                  "effective_parameter_deviation": {
                                      s: round(float(runs[(runs.variant == "x") & (runs["size"] == s)]
                                                     ["effective_parameter_deviation"].iloc[0]), 4) for s in sizes}}

    xr = runs[(runs.variant == "x")].set_index("size")
    values["flop_ratio_equal_params"] = float(xr.loc[big, "flop_ratio"])
    values["width_ratio_equal_params"] = float(xr.loc[big, "average_width_ratio"])
    ratios = {"flop_ratio": xr["flop_ratio"].round(4).to_dict(),
              "average_width_ratio": xr["average_width_ratio"].round(4).to_dict(),
              "effective_parameter_deviation": xr["effective_parameter_deviation"].round(4).to_dict(),
              "largest_size": big}
    evidence["flop_ratio_equal_params"] = evidence["width_ratio_equal_params"] = ratios

    matched, fits = loss_matched(runs)
    values.update(matched)
    fit_ev = {f"{r.variant}.{r.x}": {"A": round(float(r.A), 5), "a": round(float(r.a), 5), "r2": round(float(r.r2), 4)}
              for r in fits.itertuples() if "A" in fits and not pd.isna(r.A)}
    evidence["compute_ratio_equal_loss"] = evidence["width_ratio_equal_loss"] = {
        "fits": fit_ev, "target_loss": round(float(fits["target_loss"].iloc[0]), 4) if "target_loss" in fits else None,
        "points": int(len(sizes))}

    carry, zero, learned = (_loss(runs, v, ab) for v in ("x", "zero", "learned"))
    values["zero_minus_carry"] = zero - carry
    values["learned_minus_zero"] = learned - zero
    res_ev = {"ablation_size": ab, "val_loss": {"carry": round(carry, 4), "zero": round(zero, 4),
                                                 "learned": round(learned, 4),
                                                 "baseline": round(_loss(runs, "baseline", ab), 4)},
              "paired_se": {"zero-carry": round(paired_se(windows, "zero", "x", ab), 4),
                            "learned-zero": round(paired_se(windows, "learned", "zero", ab), 4)}}
    lp = runs[(runs.variant == "learned")]
    if len(lp):
        res_ev["learned_extra_parameters"] = round(float(lp["parameter_deviation"].iloc[0]), 4)
    evidence["zero_minus_carry"] = evidence["learned_minus_zero"] = res_ev

    shapes = {v: _loss(runs, v, ab) for v in OTHER_SHAPES}
    best = min(shapes, key=lambda v: shapes[v] if math.isfinite(shapes[v]) else math.inf)
    values["x_minus_best_shape"] = _loss(runs, "x", ab) - shapes[best]
    evidence["x_minus_best_shape"] = {"ablation_size": ab, "best_other_shape": best,
                                      "val_loss": {"x": round(_loss(runs, "x", ab), 4),
                                                   **{v: round(loss, 4) for v, loss in shapes.items()}},
                                      "paired_se_vs_best": round(paired_se(windows, "x", best, ab), 4)}

    ent = tables["entropy"]
    depths = {}
    if len(ent):
        for (variant, size), group in ent[ent.stage >= 1].groupby(["variant", "size"]):
            depths[(variant, size)] = valley_depth(group.sort_values("stage")["entropy"].to_numpy())
    db, dx = depths.get(("baseline", big), math.nan), depths.get(("x", big), math.nan)
    values["baseline_valley_depth"] = db
    values["valley_depth_gap"] = db - dx
    evidence["baseline_valley_depth"] = evidence["valley_depth_gap"] = {
        "largest_size": big, "valley_depth": {f"{v}.{s}": round(d, 4) for (v, s), d in sorted(depths.items())}}
    return values, evidence


def variant_order() -> list[str]:
    return list(VARIANTS)
