"""Paper 2 report: read the evaluation tables, fit the loss-matched power laws, compute each claim's metric.

Metrics (named in pipelines/xformer/claims.yaml; all from our own numbers; "the ablation size" is the profile's
``xformer.ablation_size``, "largest" the largest size, "main runs" the first seed at the full token budget):
  x_loss_gap_max             max over sizes of (val loss X − val loss baseline), the seed mean of the paired
                             gaps where both have several seeds; < 0: X better at every size
  flop_ratio_equal_params    forward FLOPs X / baseline at the largest size (brief's formula, equal parameters)
  width_ratio_equal_params   average block width (∝ KV cache per token) X / baseline at the largest size
  compute_ratio_equal_loss   training FLOPs X / baseline for the baseline's loss at its largest compute, from
                             loss = A·C^(−a) fitted per architecture over every size × token budget of the first
                             seed (compute_ratio_at_equal_loss): compute varies at fixed size too
  width_ratio_equal_loss     the same with average width in place of compute
  zero_minus_carry           val loss zero padding − carry-forward (the X run) at the ablation size
  learned_minus_zero         val loss learned projection − zero padding at the ablation size
  zero_minus_baseline        val loss zero padding − baseline (precondition of both: > 0 means the narrow
                             blocks bind, every coordinate having to pass the bottleneck costs loss)
  x_minus_best_shape         val loss X − min(diamond, increasing, decreasing) at the ablation size, seed means
                             where a variant has several seeds
  baseline_valley_depth      depth of the baseline's mid-depth residual-entropy valley over the block outputs
                             (``valley_depth``, largest size, main run); its noise: the depth's standard
                             deviation over seeds at the ablation size
  valley_depth_gap           baseline valley depth − X valley depth (largest size, main runs); its noise: the
                             standard deviation over seeds of the paired gap at the ablation size
  recipe_minus_best_bottleneck  val loss of the recipe (the x run at the smallest size) − the best other point of
                             the bottleneck location × width grid (the ``bottleneck`` runs)
  late_gain_share_gap        |seed mean of (X − baseline)| of the logit lens's late share: the fraction of the
                             target log-prob gain from the embedding to the output made after the X model's
                             narrowest block (``late_gain_share``), at the ablation size

Noise (``*_noise``, ``*_seed_se``: the claims' margins are multiples of them): ``gap_seed_sd``, the standard
deviation of the loss difference between two runs with the same seed (from the residuals of the seed × variant
table of the seeded variants at the ablation size, :func:`gap_seed_sd`), is the noise of a one-seed difference;
a difference of seed means has ``gap_seed_sd/√seeds``, and a ratio read off the fits moves by about
``ratio·gap_seed_sd/(a·L)`` when one architecture's losses shift by ``gap_seed_sd`` (ln C = (ln A − ln L)/a).
The evidence also lists the paired standard error over validation windows (the evaluation sample only, not
training noise). Each noise has its
degrees of freedom (``gap_seed_dof``: (seeds − 1)(seeded variants − 1); ``valley_seed_dof``,
``logit_lens_seed_dof``: seeds − 1): the margins use the noise's 95% upper confidence bound
(``claims.noise_upper_factor``).
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
    for variant, run, path in artifacts.train_logs(paths):
        frames.append(pd.read_csv(path).assign(variant=variant, run=run))
    train = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(train):  # each log's size, seed, token fraction and main flag from the runs table
        keys = ["variant", "run", "size", "seed", "token_fraction", "main"]
        train = train.merge(tables["runs"][keys], on=["variant", "run"], how="inner")
    tables["train"] = train
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


def main_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The first seed's run of every variant and size at the full token budget (not the bottleneck grid)."""
    return runs[runs["main"].astype(bool)]


def _loss(runs: pd.DataFrame, variant: str, size: str) -> float:
    row = main_runs(runs)
    row = row[(row.variant == variant) & (row["size"] == size)]
    return float(row["val_loss"].iloc[0]) if len(row) else math.nan


def seed_losses(runs: pd.DataFrame, variant: str, size: str) -> pd.Series:
    """Validation loss by seed of ``variant`` at ``size`` (full token budget, not the bottleneck grid)."""
    rows = runs[(runs.variant == variant) & (runs["size"] == size) & (runs.token_fraction == 1.0)]
    return rows.set_index("seed")["val_loss"].sort_index()


def _mean_loss(runs: pd.DataFrame, variant: str, size: str) -> float:
    losses = seed_losses(runs, variant, size)
    return float(losses.mean()) if len(losses) else math.nan


def gap_seed_sd(runs: pd.DataFrame, size: str) -> tuple[float, int, dict[str, list[float]], int]:
    """(standard deviation of the paired gap between two variants' runs with the same seed at ``size``; X's seed
    count; the gaps X − v by variant v, for the evidence; degrees of freedom).

    The variants with several seeds (X among them) over the seeds they all have form a seed × variant table; the
    additive model loss = seed effect + variant effect + ε leaves residuals whose mean square estimates σ²_ε with
    ν = (seeds − 1)(variants − 1), and a one-seed paired gap has variance 2σ²_ε. (Pooling the gap series X − v
    instead would count ν too high: they share X's runs.) NaN and ν = 0 without two seeds of X and another."""
    x = seed_losses(runs, "x", size)
    table = {}
    for variant in dict.fromkeys(runs.variant):
        if variant == "bottleneck":  # one seed per grid point
            continue
        losses = seed_losses(runs, variant, size)
        if len(losses) >= 2:
            table[variant] = losses
    gaps = {v: (x - losses).dropna().tolist() for v, losses in table.items() if v != "x"}
    frame = pd.DataFrame(table).dropna()  # seeds × variants, the seeds every seeded variant has
    seeds, variants = frame.shape
    if "x" not in frame or seeds < 2 or variants < 2:
        return math.nan, len(x), gaps, 0
    values = frame.to_numpy(dtype=np.float64)
    resid = values - values.mean(0, keepdims=True) - values.mean(1, keepdims=True) + values.mean()
    dof = (seeds - 1) * (variants - 1)
    return float(math.sqrt(2 * (resid ** 2).sum() / dof)), len(x), gaps, dof


def paired_se(windows: pd.DataFrame, a: str, b: str, size: str) -> float:
    """Standard error of mean(loss a − loss b) over the shared validation windows of the main runs at ``size``."""
    if "run" in windows:
        windows = windows[windows["run"] == size]  # a variant's main run at a size is named after the size
    wa = windows[(windows.variant == a) & (windows["size"] == size)].set_index("window")["loss"]
    wb = windows[(windows.variant == b) & (windows["size"] == size)].set_index("window")["loss"]
    diff = (wa - wb).dropna()
    return float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan


def loss_matched(runs: pd.DataFrame) -> tuple[dict[str, float], pd.DataFrame]:
    """compute_ratio_equal_loss and width_ratio_equal_loss, and the per-architecture power-law fits, over the
    first seed's runs at every size and token budget."""
    if "seed" in runs:
        runs = runs[runs.seed == runs.loc[runs["main"].astype(bool), "seed"].min()]
    base = runs[runs.variant == "baseline"].sort_values("train_flops")
    x = runs[runs.variant == "x"].sort_values("train_flops")
    values, fits = {}, []
    target = float(base.loc[base["train_flops"].idxmax(), "val_loss"]) if len(base) else math.nan
    for metric, column in (("compute_ratio_equal_loss", "train_flops"), ("width_ratio_equal_loss", "average_width")):
        try:
            values[metric] = compute_ratio_at_equal_loss(base[[column, "val_loss"]].to_numpy(),
                                                         x[[column, "val_loss"]].to_numpy(), target)
        except ValueError:  # fewer than two points, or a flat fit: reported as unmeasurable
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


def late_gain_share(logprob: Sequence[float], turning: int) -> float:
    """Fraction of the logit lens's target log-prob gain from stage 0 (embedding) to stage L (output) made by
    the blocks after ``turning`` (1-indexed block): (lp_L − lp_turning) / (lp_L − lp_0); NaN without a gain."""
    lp = np.asarray(logprob, dtype=np.float64)
    if lp.ndim != 1 or not 1 <= turning < lp.size - 1:
        raise ValueError(f"turning layer {turning} must be a block before the last of {lp.size - 1}")
    total = lp[-1] - lp[0]
    return float((lp[-1] - lp[turning]) / total) if total > 0 else math.nan


def _narrowest_block(runs: pd.DataFrame, size: str) -> int:
    """1-indexed narrowest block of the X main run at ``size``."""
    widths = [int(w) for w in main_runs(runs).query("variant == 'x' and size == @size")["widths"].iloc[0].split()]
    return int(np.argmin(widths)) + 1


def claim_values(tables: dict[str, pd.DataFrame]) -> tuple[dict[str, float], dict[str, dict]]:
    """Each metric of the module docstring, its noise, and the numbers behind it (evidence for the ledger)."""
    runs, windows = tables["runs"], tables["windows"]
    big, ab = largest(runs), ablation_size(runs)
    sizes = list(dict.fromkeys(main_runs(runs).query("variant == 'baseline'")["size"]))
    values, evidence = {}, {}
    sd, n_seeds, seed_gaps, dof = gap_seed_sd(runs, ab)
    noise_ev = {"gap_seed_sd": round(sd, 5), "dof": dof, "seeds": n_seeds, "size": ab,
                "paired_gaps_x_minus": {v: [round(g, 4) for g in gs] for v, gs in seed_gaps.items()}}
    values["gap_seed_sd"] = sd
    values["gap_seed_dof"] = dof

    def gap(size: str) -> float:
        g = (seed_losses(runs, "x", size) - seed_losses(runs, "baseline", size)).dropna()
        return float(g.mean()) if len(g) >= 2 else _loss(runs, "x", size) - _loss(runs, "baseline", size)

    gaps = {s: gap(s) for s in sizes}
    values["x_loss_gap_max"] = max(gaps.values()) if gaps else math.nan
    values["x_loss_gap_noise"] = sd  # the max may come from a one-seed size: the noise of one paired gap
    evidence["x_loss_gap_max"] = {"loss_gap_x_minus_baseline": {s: round(g, 4) for s, g in gaps.items()},
                                  "seed_noise": noise_ev,
                                  "paired_se_windows": {s: round(paired_se(windows, "x", "baseline", s), 4)
                                                        for s in sizes},
                                  "effective_parameter_deviation": {
                                      s: round(float(main_runs(runs).query("variant == 'x' and size == @s")
                                                     ["effective_parameter_deviation"].iloc[0]), 4) for s in sizes}}

    xr = main_runs(runs)[main_runs(runs).variant == "x"].set_index("size")
    values["flop_ratio_equal_params"] = float(xr.loc[big, "flop_ratio"])
    values["width_ratio_equal_params"] = float(xr.loc[big, "average_width_ratio"])
    ratios = {"flop_ratio": xr["flop_ratio"].round(4).to_dict(),
              "average_width_ratio": xr["average_width_ratio"].round(4).to_dict(),
              "effective_parameter_deviation": xr["effective_parameter_deviation"].round(4).to_dict(),
              "largest_size": big}
    evidence["flop_ratio_equal_params"] = evidence["width_ratio_equal_params"] = ratios

    matched, fits = loss_matched(runs)
    values.update(matched)
    fit_ev = {f"{r.variant}.{r.x}": {"A": round(float(r.A), 5), "a": round(float(r.a), 5), "r2": round(float(r.r2), 4),
                                     "points": int(r.n_points)}
              for r in fits.itertuples() if "A" in fits and not pd.isna(r.A)}
    target = float(fits["target_loss"].iloc[0]) if "target_loss" in fits else math.nan
    for metric, column in (("compute_ratio_equal_loss", "train_flops"), ("width_ratio_equal_loss", "average_width")):
        a = fits[(fits.variant == "x") & (fits.x == column)]["a"] if "a" in fits else pd.Series(dtype=float)
        a = float(a.iloc[0]) if len(a) and pd.notna(a.iloc[0]) and a.iloc[0] > 0 else math.nan
        values[f"{metric}_noise"] = values[metric] * sd / (a * target)
        evidence[metric] = {"fits": fit_ev, "target_loss": round(target, 4), "gap_seed_sd": round(sd, 5),
                            "x_fit_exponent": round(a, 5)}

    carry, zero, learned = (_loss(runs, v, ab) for v in ("x", "zero", "learned"))
    values["zero_minus_carry"] = zero - carry
    values["learned_minus_zero"] = learned - zero
    values["zero_minus_baseline"] = zero - _loss(runs, "baseline", ab)
    values["residual_rule_noise"] = sd
    res_ev = {"ablation_size": ab, "val_loss": {"carry": round(carry, 4), "zero": round(zero, 4),
                                                 "learned": round(learned, 4),
                                                 "baseline": round(_loss(runs, "baseline", ab), 4)},
              "paired_se_windows": {"zero-carry": round(paired_se(windows, "zero", "x", ab), 4),
                                    "learned-zero": round(paired_se(windows, "learned", "zero", ab), 4)},
              "gap_seed_sd": round(sd, 5)}
    lp = main_runs(runs)[main_runs(runs).variant == "learned"]
    if len(lp):
        res_ev["learned_extra_parameters"] = round(float(lp["parameter_deviation"].iloc[0]), 4)
    evidence["zero_minus_carry"] = evidence["learned_minus_zero"] = res_ev

    shapes = {v: _mean_loss(runs, v, ab) for v in OTHER_SHAPES}
    best = min(shapes, key=lambda v: shapes[v] if math.isfinite(shapes[v]) else math.inf)
    values["x_minus_best_shape"] = _mean_loss(runs, "x", ab) - shapes[best]
    best_seeds = len(seed_losses(runs, best, ab))
    # a difference of seed means (paired by seed) has gap_sd/√n; against a one-seed shape, X's mean has
    # σ²/n and the shape σ², with σ² = gap_sd²/2 the variance of one run
    values["x_minus_best_shape_noise"] = (sd / math.sqrt(n_seeds) if best_seeds >= 2
                                          else sd * math.sqrt((1 + 1 / max(n_seeds, 1)) / 2))
    evidence["x_minus_best_shape"] = {"ablation_size": ab, "best_other_shape": best,
                                      "val_loss_seed_mean": {"x": round(_mean_loss(runs, "x", ab), 4),
                                                             **{v: round(loss, 4) for v, loss in shapes.items()}},
                                      "seeds": {v: len(seed_losses(runs, v, ab)) for v in ("x", *OTHER_SHAPES)},
                                      "seed_noise": noise_ev,
                                      "paired_se_windows_vs_best": round(paired_se(windows, "x", best, ab), 4)}

    values.update(valley_values(tables["entropy"], big, ab, evidence))
    values.update(bottleneck_values(runs, sd, evidence))
    values.update(logit_lens_values(tables.get("logit_lens", pd.DataFrame()), _narrowest_block(runs, ab), evidence))
    return values, evidence


def _sd(values: np.ndarray) -> float:
    """Sample standard deviation; NaN with fewer than two values."""
    return float(values.std(ddof=1)) if len(values) >= 2 else math.nan


def valley_values(ent: pd.DataFrame, big: str, ab: str, evidence: dict) -> dict[str, float]:
    """baseline_valley_depth and valley_depth_gap of the main runs at the largest size, and their one-seed noise:
    the standard deviation over seeds, at the ablation size, of the baseline's depth and of the paired gap
    baseline − X (NaN with fewer than two seeds); every depth goes to ``evidence``."""
    if "run" not in ent:  # one run per variant and size (tables written before the seeded runs)
        ent = ent.assign(run=ent["size"], seed=0)
    depths: dict[tuple[str, str], float] = {}
    for (variant, run), group in ent[ent.stage >= 1].groupby(["variant", "run"]):
        depths[(variant, run)] = valley_depth(group.sort_values("stage")["entropy"].to_numpy())
    at_ab = dict.fromkeys(ent.loc[ent["size"] == ab, "run"])  # every seed's run at the ablation size
    common = [r for r in at_ab if ("baseline", r) in depths and ("x", r) in depths]
    base = np.array([depths[("baseline", r)] for r in common])
    gaps = base - np.array([depths[("x", r)] for r in common])
    db, dx = depths.get(("baseline", big), math.nan), depths.get(("x", big), math.nan)
    evidence["baseline_valley_depth"] = evidence["valley_depth_gap"] = {
        "largest_size": big, "valley_depth": {f"{v}.{r}": round(d, 4) for (v, r), d in sorted(depths.items())},
        "seed_noise": {"size": ab, "seeds": len(common), "baseline_depth_sd": round(_sd(base), 5),
                       "gap_sd": round(_sd(gaps), 5)}}
    return {"baseline_valley_depth": db, "valley_depth_gap": db - dx,
            "baseline_valley_depth_noise": _sd(base), "valley_depth_gap_noise": _sd(gaps),
            "valley_seed_dof": len(common) - 1}


def bottleneck_values(runs: pd.DataFrame, sd: float, evidence: dict) -> dict[str, float]:
    """recipe_minus_best_bottleneck and its noise (one paired gap: gap_seed_sd); the grid goes to ``evidence``."""
    grid = runs[runs.variant == "bottleneck"]
    if not len(grid):
        return {"recipe_minus_best_bottleneck": math.nan, "bottleneck_noise": sd}
    size = str(grid["size"].iloc[0])
    recipe = main_runs(runs).query("variant == 'x' and size == @size").iloc[0]
    points = pd.concat([grid, recipe.to_frame().T])
    best = grid.loc[grid["val_loss"].astype(float).idxmin()]
    evidence["recipe_minus_best_bottleneck"] = {
        "size": size, "recipe": f"l{float(recipe.bottleneck_fraction):g}-r{float(recipe.bottleneck_ratio):g}",
        "best_other": f"l{float(best.bottleneck_fraction):g}-r{float(best.bottleneck_ratio):g}",
        "val_loss": {f"l{float(r.bottleneck_fraction):g}-r{float(r.bottleneck_ratio):g}": round(float(r.val_loss), 4)
                     for r in points.itertuples()},
        "widths": {f"l{float(r.bottleneck_fraction):g}-r{float(r.bottleneck_ratio):g}": r.widths
                   for r in points.itertuples()},
        "gap_seed_sd": round(sd, 5)}
    return {"recipe_minus_best_bottleneck": float(recipe.val_loss) - float(best.val_loss), "bottleneck_noise": sd}


def logit_lens_values(lens: pd.DataFrame, turning: int, evidence: dict) -> dict[str, float]:
    """late_gain_share_gap (|seed mean of X − baseline|) and its seed standard error; shares to ``evidence``."""
    shares: dict[str, dict[int, float]] = {}
    groups = lens.groupby(["variant", "seed"]) if len(lens) else []
    for (variant, seed), group in groups:
        shares.setdefault(variant, {})[int(seed)] = late_gain_share(group.sort_values("stage")["logprob"], turning)
    common = sorted(set(shares.get("x", {})) & set(shares.get("baseline", {})))
    diffs = np.array([shares["x"][s] - shares["baseline"][s] for s in common], dtype=np.float64)
    evidence["late_gain_share_gap"] = {"narrowest_block": turning,
                                       "late_gain_share": {v: {s: round(x, 4) for s, x in by.items()}
                                                           for v, by in shares.items()},
                                       "x_minus_baseline_mean": round(float(diffs.mean()), 4) if len(diffs) else None}
    se = _sd(diffs) / math.sqrt(max(len(diffs), 1))
    return {"late_gain_share_gap": float(abs(diffs.mean())) if len(diffs) else math.nan,
            "late_gain_share_gap_seed_se": se, "logit_lens_seed_dof": len(diffs) - 1}


def variant_order() -> list[str]:
    return list(VARIANTS)
