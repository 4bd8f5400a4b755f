"""Paper 3 experiments: the α × learning-rate sweep, the methods at their best settings, the mechanisms.

Every function returns plain rows (lists of dicts) that the notebooks write as CSV. Our reconstructions (the
brief publishes no code): the layer-wise α rule, the signal/drift decomposition and the curvature probes
(lmrepro.lora; their derivations are in those modules' docstrings).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from ...config import Config
from ...missing import missing_input
from ...pool import run_jobs
from ...lora import (SignalDrift, alpha_for, layerwise_report, lora_vs_full_curvature, mean_over_layers,
                     run_mlp_experiment, total_ratio)
from ...lora.alpha import AlphaChoice
from ...lora.finetune import reasoning_accuracy, sft_loss
from . import artifacts
from .artifacts import PAPER
from .config import METHODS
from .runs import RunSpec, TaskData, Timer, curve_rows, make_model, run_summary, section, train_run

LORA_STYLE = tuple(m for m in METHODS if m != "full")


def _log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------ base_lr

def full_ft_sweep(cfg: Config, base: torch.nn.Module, data: TaskData) -> tuple[list[dict], list[dict]]:
    """Full fine-tuning at every learning rate of ``full_ft.lrs``, the grid growing past its edge (at most
    ``max_extensions`` points, never above 1 / max(sweep.lr_multipliers), the largest base_lr the LoRA sweep can
    use) while the selection-half optimum sits there. Returns (runs, curves); the optimum
    (:func:`pre_registered_lr`) becomes the LoRA sweep's ``base_lr``."""
    la = section(cfg)
    ft = la.full_ft
    top = 1.0 / max(la.sweep.lr_multipliers)  # else with_base_lr refuses the optimum
    lrs, rows, curves = list(ft.lrs), [], []
    for _ in range(ft.max_extensions + 1):
        todo = [lr for lr in lrs if lr not in {row["lr"] for row in rows}]
        for row, c in run_jobs(full_ft_point, todo, (cfg, base, data), threads=_threads(la), launch=cfg.launch):
            _log(f"full fine-tuning {data.name} lr={row['lr']:g}: select {row['select_loss']:.4f}")
            rows.append(row)
            curves += c
        nxt = next_lr(sorted(lrs), [_loss_at(rows, "lr", lr) for lr in sorted(lrs)], top)
        if nxt is None:
            break
        lrs.append(nxt)
    return sorted(rows, key=lambda row: row["lr"]), curves


def next_lr(lrs: list[float], losses: list[float], top: float) -> float | None:
    """The learning rate the full fine-tuning grid grows to (:func:`beyond_edge`), or None when the optimum is
    interior or the next point would exceed ``top``."""
    nxt = beyond_edge(lrs, losses)
    return None if nxt is None or nxt > top else nxt


def full_ft_point(cfg: Config, base: torch.nn.Module, data: TaskData, lr: float) -> tuple[dict, list[dict]]:
    """One full fine-tuning run at ``lr``: its row (select/report losses) and learning curve."""
    la = section(cfg)
    model, result = train_run(cfg, base, data, RunSpec(lr, None))
    row = {"task": data.name, "lr": lr, **run_summary(cfg, model, data, result, splits=("select", "report"))}
    return row, curve_rows(result, max(1, la.train.steps[data.name] // 50), task=data.name, lr=lr)


def _loss_at(rows: list[dict], key: str, value: float, loss: str = "select_loss") -> float:
    y = next(row[loss] for row in rows if row[key] == value)
    return y if math.isfinite(y) else math.inf


def beyond_edge(grid: list[float], losses: list[float]) -> float | None:
    """The next grid point past the edge the optimum of ``losses`` sits on (one more step of the grid's own
    ratio at that edge), or None when the optimum is interior (or every loss is infinite).

    >>> beyond_edge([1, 4, 16], [3.0, 2.0, 1.0])
    64.0
    >>> beyond_edge([1, 4, 16], [1.0, 2.0, 3.0])
    0.25
    """
    y = np.asarray(losses, float)
    if not np.isfinite(y).any():
        return None
    k = int(np.argmin(y))
    if k == len(grid) - 1:
        return float(grid[-1] * grid[-1] / grid[-2])
    if k == 0:
        return float(grid[0] * grid[0] / grid[1])
    return None


def pre_registered_lr(runs: pd.DataFrame) -> dict:
    """The sweep's base_lr from the full fine-tuning runs: the grid learning rate with the lowest selection-half
    loss (the report half stays untouched by every setting). ``at_edge``: the grid could not bracket it."""
    runs = runs.sort_values("lr")
    y = runs.select_loss.where(np.isfinite(runs.select_loss), np.inf).to_numpy(float)
    if not np.isfinite(y).any():
        raise ValueError("every full fine-tuning run diverged: no learning rate to pre-register; lower full_ft.lrs")
    k = int(np.argmin(y))
    return {"base_lr": float(runs.lr.iloc[k]), "select_loss": float(y[k]),
            "at_edge": bool(k in (0, len(y) - 1)), "lrs": [float(v) for v in runs.lr]}


# ------------------------------------------------------------------------------------------ sweep

def sweep(cfg: Config, base: torch.nn.Module, data: TaskData) -> tuple[list[dict], list[dict]]:
    """α multiplier × lr multiplier at every rank (``sweep.rank_grid()``) with the main seed; then, per rank at
    base_lr, α multipliers past the grid's edge (at most ``max_extensions``) while the optimum sits on it; then
    ``optimum_seeds`` repeats of the optimum of the seed-mean loss (:func:`missing_seeds`) and its two neighbours,
    following it if the seeds move it. α = r·m_α (s = m_α), lr = base_lr·m_lr.
    Returns (runs, curves). The runs within a round are independent: :func:`lmrepro.pool.run_jobs` spreads
    them over the cores."""
    la = section(cfg)
    sw = la.sweep
    _require_base_lr(la)
    clock, rows, curves = Timer(), [], []

    def run(points: list[tuple]) -> None:
        def log(i: int, result: tuple[dict, list[dict]]) -> None:
            row = result[0]
            _log(f"[{clock():7.1f}s] sweep {data.name} {len(rows) + i + 1} r={row['rank']} "
                 f"α×{row['alpha_multiplier']:g} lr×{row['lr_multiplier']:g} seed={row['seed']}: "
                 f"val {row['val_loss']:.4f}{' (diverged)' if row['diverged'] else ''}")

        results = run_jobs(sweep_point, points, (cfg, base, data), threads=_threads(la), on_result=log,
                           launch=cfg.launch)
        rows.extend(row for row, _ in results)
        curves.extend(c for _, cs in results for c in cs)

    run([(r, a, m, la.seed) for r, a, m in sw.rank_grid()])
    for _ in range(sw.max_extensions):
        more = [(r, a, 1.0, la.seed) for r in sw.ranks
                if (a := beyond_edge(*_alpha_axis(rows, r, la.seed))) is not None]
        if not more:
            break
        run(more)
    # Seeds around the seed-mean optimum; if the extra seeds move it, the new window gets them too (and the grid
    # grows again if they move it onto the edge).
    rounds = len(sw.alpha_multipliers) + 2 * sw.max_extensions
    for _ in range(rounds):
        missing = missing_seeds(rows, sw.ranks, sw.optimum_seeds, la.seed)
        if not missing:
            break
        run(missing)
    else:
        if missing := missing_seeds(rows, sw.ranks, sw.optimum_seeds, la.seed):
            warnings.warn(f"sweep {data.name}: after {rounds} rounds the seed-mean optimum still lacks {missing}; "
                          "its α* rests on fewer seeds (best_alpha's `seeds` column)", stacklevel=2)
    return rows, curves


def missing_seeds(rows: list[dict], ranks, seeds, main_seed: int) -> list[tuple]:
    """Sweep points (rank, α multiplier, 1.0, seed) still to run so that the optimum over α of the seed-mean loss
    at base_lr (as :func:`best_alpha` finds it) and its two neighbours have every seed of ``seeds``; where that
    optimum sits on the grid's edge, the next grid point past it (:func:`beyond_edge`) with ``main_seed``."""
    runs, out = pd.DataFrame(rows), []
    for r in ranks:
        at = runs[(runs["rank"] == r) & (runs.lr_multiplier == 1.0)]
        grid, table = seed_table(at, "val_loss", "alpha_multiplier")
        means = np.nanmean(center_seeds(table), axis=1)
        if not np.isfinite(means).any():
            continue
        k = int(np.argmin(means))
        done = set(zip(at.alpha_multiplier, at.seed))
        nxt = beyond_edge(list(grid), list(means))
        if nxt is not None and (nxt, main_seed) not in done:
            out.append((r, nxt, 1.0, main_seed))
        out += [(r, float(a), 1.0, seed) for a in grid[max(k - 1, 0):k + 2] for seed in seeds
                if (a, seed) not in done]
    return out


def _require_base_lr(la) -> None:
    if la.sweep.base_lr is None:
        raise ValueError("sweep.base_lr is None: set it from the full_ft stage's pre-registered learning rate "
                         "first (pre_registered(cfg, paths, task))")


def _alpha_axis(rows: list[dict], r: int, seed: int) -> tuple[list[float], np.ndarray]:
    """(α multipliers, val losses; diverged = inf) of rank ``r`` at base_lr and ``seed``, by α."""
    axis = sorted((row["alpha_multiplier"], row["val_loss"]) for row in rows
                  if row["rank"] == r and row["lr_multiplier"] == 1.0 and row["seed"] == seed)
    y = np.array([v for _, v in axis], float)
    return [a for a, _ in axis], np.where(np.isfinite(y), y, np.inf)


def with_base_lr(cfg: Config, base_lr: float) -> Config:
    """``cfg`` with the lora_alpha section's ``sweep.base_lr`` set (the full_ft stage's pre-registered value)."""
    la = section(cfg)
    sw = la.sweep
    top = base_lr * max(sw.lr_multipliers)
    if top > 1.0:
        raise ValueError(f"the pre-registered base_lr {base_lr:g} times the largest of sweep.lr_multipliers "
                         f"{sw.lr_multipliers} is {top:g}, above a learning rate of 1: shorten lr_multipliers")
    new = dataclasses.replace(la, sweep=dataclasses.replace(sw, base_lr=float(base_lr)))
    return dataclasses.replace(cfg, papers={**cfg.papers, PAPER: new})


def pre_registered(cfg: Config, paths, task: str) -> tuple[Config, str]:
    """(``cfg`` with the sweep's base_lr set, where it came from): the profile's ``sweep.base_lr`` when given,
    else the full_ft stage's optimum for ``task`` (``artifacts.base_lr_file``)."""
    la = section(cfg)
    if la.sweep.base_lr is not None:
        return with_base_lr(cfg, la.sweep.base_lr), "sweep.base_lr of the profile"
    path = artifacts.base_lr_file(paths, task)
    if not path.is_file():
        raise FileNotFoundError(missing_input(
            f"{path} (sweep.base_lr is null, so the learning rate comes from the full fine-tuning stage)",
            f"pipelines/{PAPER}/dvc.yaml:full_ft@{task}"))
    record = json.loads(path.read_text())
    return with_base_lr(cfg, record["base_lr"]), f"pre-registered by full_ft@{task} ({path.name})"


def sweep_point(cfg: Config, base: torch.nn.Module, data: TaskData, point: tuple) -> tuple[dict, list[dict]]:
    """One sweep run at ``point`` = (rank, α multiplier, lr multiplier, seed): its row and learning curve."""
    la = section(cfg)
    r, am, lm, seed = point
    choice = alpha_for("fixed", r, alpha=am * r)
    spec = RunSpec(lr=la.sweep.base_lr * lm, choice=choice)
    model, result = train_run(cfg, base, data, spec, seed=seed)
    keys = {"task": data.name, "rank": r, "alpha_multiplier": am, "lr_multiplier": lm, "seed": seed}
    row = {**keys, "alpha": choice.lora_alpha, "scaling": choice.scaling, "lr": spec.lr,
           **run_summary(cfg, model, data, result, splits=("select", "report"))}
    row["val_loss"] = _combined(row, data)
    return row, curve_rows(result, max(1, la.train.steps[data.name] // 50), **keys)


def _threads(la) -> int:
    """Torch threads of each run: the section's ``threads`` (None: this process's current count)."""
    return la.threads if la.threads is not None else torch.get_num_threads()


def _combined(row: dict, data: TaskData) -> float:
    """Loss over the whole validation split from the two halves (weighted by supervised tokens)."""
    n = {s: int((getattr(data, s)["labels"][:, 1:] != -100).sum()) for s in ("select", "report")}
    return (row["select_loss"] * n["select"] + row["report_loss"] * n["report"]) / (n["select"] + n["report"])


# ------------------------------------------------------------------------------------------ α* and its fit

def best_alpha(runs: pd.DataFrame, lr_multiplier: float = 1.0, loss: str = "val_loss") -> pd.DataFrame:
    """Per rank, at lr = base_lr·``lr_multiplier``: the grid optimum of the seed-mean loss over α and α*
    interpolated by the vertex of a parabola through the best grid point and its neighbours in (log α, loss);
    α* stays the grid point when the optimum is at the grid's edge (``at_edge``: the true optimum may lie beyond
    it). A diverged run makes its grid point's mean +inf. ``seeds``: the fewest seeds behind one of the three points
    (the sweep runs every ``optimum_seeds`` seed at all three: :func:`missing_seeds`)."""
    sel = runs[np.isclose(runs.lr_multiplier, lr_multiplier)]
    rows = []
    for r, g in sel.groupby("rank"):
        if g.alpha.nunique() < 3:
            continue  # only the lr axis ran at this learning rate: no α optimum to find
        alphas, table = seed_table(g, loss, "alpha")
        means = np.nanmean(center_seeds(table), axis=1)
        n = (~np.isnan(table)).sum(1)
        k, xs, edge = alpha_vertex(np.log(alphas), means)
        rows.append({"rank": int(r), "lr_multiplier": lr_multiplier, "alpha_grid": float(alphas[k]),
                     "alpha_star": float(np.exp(xs)), "best_loss": float(means[k]), "at_edge": bool(edge),
                     "multiplier_star": float(np.exp(xs) / r), "seeds": int(n[max(k - 1, 0):k + 2].min())})
    return pd.DataFrame(rows)


def seed_table(g: pd.DataFrame, loss: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(the sorted values of column ``key`` [P], losses [P, S] by seed: NaN where a seed did not run that
    point, +inf where it diverged) of one rank's runs ``g`` (one run per (``key``, seed))."""
    if g.duplicated([key, "seed"]).any():
        raise ValueError(f"runs repeat a ({key}, seed) pair: {g[g.duplicated([key, 'seed'])][[key, 'seed']].values}")
    xs, seeds = np.sort(g[key].unique()), np.sort(g.seed.unique())
    table = np.full((len(xs), len(seeds)), np.nan)
    table[np.searchsorted(xs, g[key]), np.searchsorted(seeds, g.seed)] = (
        g[loss].where(np.isfinite(g[loss]), np.inf).to_numpy(float))
    return xs.astype(float), table


def center_seeds(table: np.ndarray) -> np.ndarray:
    """``table`` [points, seeds] minus each seed's offset: a seed that is low or high at every α does not decide
    where the optimum lies, and a point only some seeds ran estimates the all-seed mean there. A seed's offset is
    its median difference from the seed mean over the points every seed ran (finite), re-centred to sum to 0 —
    the median because one of those points may sit where runs start to diverge and scatter ten times more."""
    full = np.isfinite(table).all(1)
    if table.shape[1] < 2 or not full.any():
        return table
    offset = np.median(table[full] - table[full].mean(1, keepdims=True), axis=0)
    return table - (offset - offset.mean())


def alpha_vertex(x: np.ndarray, y: np.ndarray) -> tuple[int, float, bool]:
    """(index of the grid optimum, log α* by the parabola through it and its neighbours, at the grid's edge)
    for log α values ``x`` (sorted) and losses ``y`` (+inf for diverged)."""
    k = int(np.argmin(y))
    edge = k == 0 or k == len(y) - 1 or not np.isfinite(y[[k - 1, k + 1]]).all()
    return k, float(x[k] if edge else parabola_vertex(x[k - 1:k + 2], y[k - 1:k + 2])), edge


def bootstrap_alpha_stars(runs: pd.DataFrame, n_boot: int = 4000, seed: int = 0, loss: str = "val_loss",
                          level: float = 0.95) -> tuple[pd.DataFrame, dict]:
    """Uncertainty of α* per rank and of the exponent k of log α* = log C + k·log r, at base_lr.

    Each replicate resamples, with replacement, the *seeds* of every rank — one draw per rank shared by all its
    α grid points, so a seed's errors stay paired across α — and averages each grid point over the drawn seeds it
    has (a point run with the main seed only keeps its value); seed offsets are removed first
    (:func:`center_seeds`), as in the point estimate.
    α* is recomputed from those means (grid optimum and parabola refinement, as in :func:`best_alpha`), k is
    fitted by least squares, and the fit's own uncertainty is added as a Student-t draw (n − 2 degrees of
    freedom, n ranks) times the replicate's standard error: with no seed noise the interval is the exact t
    interval of the fit. The fit's residual scatter already contains the seed noise of α*, so the seed
    resampling counts that noise twice and the interval comes out wider than the fit's own — which makes
    "contains 1/2" easier and "excludes 0 and 1" harder, so it favours neither verdict. With 3 seeds a whole-seed
    resample has 10 distinct outcomes, so the per-rank α* bands are about the range of the per-seed α*, not
    95% intervals (they are reported as ranges).
    Returns (per rank: alpha_star_lo / alpha_star_hi, the ``level`` percentiles of the replicates' α*;
    {"exponent_lo", "exponent_hi", "replicates", "ranks": those fitted, "bound_mc_se": the larger Monte-Carlo
    standard error of the two bounds}). Ranks at the grid's edge in the point estimate are left
    out of the fit, like a censored value (:func:`interior_stars` gives the point fit the same ranks)."""
    rng = np.random.default_rng(seed)
    sel = runs[np.isclose(runs.lr_multiplier, 1.0)]
    keep = interior_stars(best_alpha(sel, loss=loss))["rank"].tolist()
    groups = {}
    for r in keep:
        alphas, table = seed_table(sel[sel["rank"] == r], loss, "alpha")
        groups[r] = (np.log(alphas), center_seeds(table))
    stars = np.full((n_boot, len(keep)), np.nan)
    for b in range(n_boot):
        for j, r in enumerate(keep):
            x, table = groups[r]
            stars[b, j] = alpha_vertex(x, resampled_means(table, rng))[1]
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    per_rank = pd.DataFrame({"rank": keep, "alpha_star_lo": np.exp(np.percentile(stars, q[0], axis=0)) if keep else [],
                             "alpha_star_hi": np.exp(np.percentile(stars, q[1], axis=0)) if keep else []})
    if len(keep) < 3:
        return per_rank, {"exponent_lo": math.nan, "exponent_hi": math.nan, "replicates": n_boot, "ranks": keep,
                          "bound_mc_se": math.nan}
    x = np.log(np.asarray(keep, float))
    sxx = float(((x - x.mean()) ** 2).sum())
    ks = np.empty(n_boot)
    for b in range(n_boot):
        k, c = np.polyfit(x, stars[b], 1)
        resid = stars[b] - (c + k * x)
        se = math.sqrt(float(resid @ resid) / (len(x) - 2) / sxx)
        ks[b] = k + se * rng.standard_t(len(x) - 2)
    lo, hi = np.percentile(ks, q)
    return per_rank, {"exponent_lo": float(lo), "exponent_hi": float(hi), "replicates": n_boot, "ranks": keep,
                      "bound_mc_se": max(quantile_mc_se(ks, q[0] / 100), quantile_mc_se(ks, q[1] / 100))}


def interior_stars(stars: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`best_alpha` whose α* is interior: the ranks the exponent is fitted on (an α* at the
    grid's edge is only a bound)."""
    return stars[~stars.at_edge.astype(bool)] if len(stars) else stars


def resampled_means(table: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One bootstrap replicate of the per-point means of ``table`` [points, seeds] (NaN: not run): the seeds
    (columns) drawn with replacement once for all points; a point averages the drawn seeds it has, with their
    multiplicity, and keeps the mean of all its seeds when it has none of them."""
    cols = rng.integers(0, table.shape[1], table.shape[1])
    drawn = table[:, cols]
    have = ~np.isnan(drawn)
    n = have.sum(1)
    with np.errstate(invalid="ignore"):
        mean = np.where(have, drawn, 0.0).sum(1) / n
    return np.where(n > 0, mean, np.nanmean(table, axis=1))


def quantile_mc_se(samples: np.ndarray, p: float) -> float:
    """Monte-Carlo standard error of the ``p`` quantile of ``samples`` (order-statistic interval: the sample
    quantiles at p ± 1.96·√(p(1−p)/n), divided by 2·1.96): how much the bound would move with another
    bootstrap seed."""
    n = len(samples)
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    lo, hi = np.quantile(samples, [max(p - half, 0.0), min(p + half, 1.0)])
    return float((hi - lo) / (2 * 1.96))


def parabola_vertex(x: np.ndarray, y: np.ndarray) -> float:
    """x of the vertex of the parabola through three points (x sorted, y[1] the smallest), clamped to [x0, x2]."""
    a, b, _ = np.polyfit(x, y, 2)
    if a <= 0:
        return float(x[1])
    return float(np.clip(-b / (2 * a), x[0], x[2]))


def fit_alpha_law(ranks, alpha_stars) -> dict[str, float]:
    """Least squares log α* = log C + k·log r → exponent k, C, R², and C_sqrt = the C of α* = C·√r with the
    exponent fixed at 1/2 (geometric mean of α*/√r): the constant of the rank rule."""
    r = np.asarray(ranks, float)
    a = np.asarray(alpha_stars, float)
    ok = np.isfinite(a) & (a > 0) & (r > 0)
    if ok.sum() < 2:
        return {"exponent": math.nan, "C": math.nan, "r2": math.nan, "C_sqrt": math.nan, "n": int(ok.sum())}
    lx, ly = np.log(r[ok]), np.log(a[ok])
    k, logc = np.polyfit(lx, ly, 1)
    pred = logc + k * lx
    ss = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1 - float(((ly - pred) ** 2).sum()) / ss if ss > 0 else math.nan
    return {"exponent": float(k), "C": float(np.exp(logc)), "r2": r2,
            "C_sqrt": float(np.exp(np.mean(ly - 0.5 * lx))), "n": int(ok.sum())}


def fitted_C(runs: pd.DataFrame) -> float:
    """The rank-rule constant calibrated on a sweep: C_sqrt of the α* fit at the base learning rate, on the
    selection half of the validation split only — the methods are compared on the report half, which must
    not have informed any of their settings."""
    return fit_alpha_law(*best_alpha(runs, loss="select_loss")[["rank", "alpha_star"]].to_numpy().T)["C_sqrt"]


# ------------------------------------------------------------------------------------------ methods

def layerwise_loss_fn(cfg: Config, base: torch.nn.Module, data: TaskData) -> Callable[[], torch.Tensor]:
    """The loss the layer-wise rule is measured on: the first ``layerwise_batches`` training batches."""
    la = section(cfg)
    n = la.methods.layerwise_batches * la.train.batch_size
    dev = next(base.parameters()).device
    batch = {k: v[:n].to(dev) for k, v in data.train.items()}
    if "lengths" in batch:
        width = int(batch["lengths"].max())
        batch = {k: (v[:, :width] if v.dim() == 2 else v) for k, v in batch.items()}
    return lambda: sft_loss(base, batch)[0]


def layerwise_choices(cfg: Config, base: torch.nn.Module, data: TaskData, r: int, fallback_alpha: float
                      ) -> tuple[Callable[[float], AlphaChoice], list[dict]]:
    """(multiplier ↦ AlphaChoice of the layer-wise rule at rank r, per-layer rows). Measured once per rank on
    the base model; layers without positive curvature keep ``fallback_alpha`` (the rank rule's α)."""
    import re

    la = section(cfg)
    was = base.training
    base.eval()
    try:
        report = layerwise_report(base, layerwise_loss_fn(cfg, base, data), la.target_modules, r, seed=la.seed)
    finally:
        base.train(was)
    rows = [{"task": data.name, "rank": r, "module": name, "q_full": lc.q_full, "q_adapter": lc.q_adapter,
             "scaling": lc.scaling, "alpha": lc.scaling * r if math.isfinite(lc.scaling) else math.nan,
             "fallback_alpha": fallback_alpha} for name, lc in report.items()]

    def choice(m: float) -> AlphaChoice:
        pattern = {re.escape(name): m * lc.scaling * r for name, lc in report.items() if math.isfinite(lc.scaling)}
        alpha = fallback_alpha * m
        return AlphaChoice(alpha, False, pattern, alpha / r, r, "layerwise")

    return choice, rows


def method_trials(cfg: Config, method: str, r: int, C: float,
                  layerwise: Callable[[float], AlphaChoice] | None = None) -> list[tuple[str, float, RunSpec]]:
    """(knob name, knob value, run) of every tuning trial of ``method`` at rank ``r``: the same number per
    method where the grids have equal length. LoRA-α keeps base_lr and tunes a multiplier of its α."""
    la = section(cfg)
    me, base_lr = la.methods, la.sweep.base_lr
    if method == "full":
        return [("lr", lr, RunSpec(lr, None)) for lr in me.lrs["full"]]
    if method == "lora_alpha_rank":
        return [("alpha_multiplier", m, RunSpec(base_lr, alpha_for("sqrt", r, C=C, multiplier=m)))
                for m in me.alpha_multipliers]
    if method == "lora_alpha_layerwise":
        return [("alpha_multiplier", m, RunSpec(base_lr, layerwise(m))) for m in me.alpha_multipliers]
    choice = {"lora_2r": lambda: alpha_for("2r", r), "lora_16": lambda: alpha_for("fixed", r, alpha=me.fixed_alpha),
              "rslora": lambda: alpha_for("rslora", r, alpha=me.rslora_alpha),
              "loraplus": lambda: alpha_for("2r", r)}[method]()
    ratio = me.loraplus_ratio if method == "loraplus" else None
    return [("lr", lr, RunSpec(lr, choice, ratio)) for lr in me.lrs[method]]


def methods(cfg: Config, base: torch.nn.Module, data: TaskData, C: float, tokenizer=None
            ) -> dict[str, list[dict]]:
    """Every method × rank × tuning trial; the best trial per (method, rank) by the select-half loss, its
    report-half loss, learning curve and (reasoning) exact-match accuracy. Full fine-tuning does not depend on
    the rank: it runs once (rank 0 in ``runs``) and its best trial appears at every rank in ``summary``.

    Returns dict(runs, curves, summary, layerwise)."""
    la = section(cfg)
    _require_base_lr(la)
    me = la.methods
    points = la.train.eval_points
    eval_every = max(1, la.train.steps[data.name] // points) if points else None
    pairs = [(method, r) for method in me.names for r in ([0] if method == "full" else me.ranks)]
    layerwise, layer_rows = {}, []
    for method, r in pairs:
        if method == "lora_alpha_layerwise" and r not in layerwise:
            layerwise[r], rows = layerwise_choices(cfg, base, data, r, fallback_alpha=C * math.sqrt(r))
            layer_rows += rows
    trials = {(method, r): method_trials(cfg, method, r, C, layerwise.get(r)) for method, r in pairs}
    # The trials are independent runs (lmrepro.pool); each returns its trained weights only where the
    # accuracy needs the model (an HF model is GBs).
    keep = bool(data.examples) and tokenizer is not None
    jobs = [(method, r, knob, value, spec, eval_every, keep) for (method, r), ts in trials.items()
            for knob, value, spec in ts]
    clock = Timer()

    def log(i: int, result: tuple) -> None:
        row = result[0]
        _log(f"[{clock():7.1f}s] {data.name} {row['method']} r={row['rank']} {row['knob']}={row['knob_value']:g}: "
             f"select {row['select_loss']:.4f} report {row['report_loss']:.4f}")

    results = run_jobs(method_trial, jobs, (cfg, base, data), threads=_threads(la), on_result=log, launch=cfg.launch)
    runs = [row for row, _, _ in results]
    curves = [c for _, cs, _ in results for c in cs]
    best_models: dict[tuple[str, int], Any] = {}
    for job, (row, _, weights) in zip(jobs, results):
        score = row["select_loss"] if math.isfinite(row["select_loss"]) else math.inf
        best = best_models.get(job[:2])
        if best is None or score < best[0]:
            best_models[job[:2]] = (score, row, (job[4], weights))
    for key, (_, row, _) in best_models.items():
        knobs = [value for _, value, _ in trials[key]]
        row["at_edge"] = len(knobs) > 1 and row["knob_value"] in (knobs[0], knobs[-1])
    summary = []
    for (method, r), (_, row, (spec, weights)) in best_models.items():
        out = {k: row[k] for k in ("task", "method", "rank", "knob", "knob_value", "at_edge", "lr", "alpha", "scaling",
                                   "trainable", "select_loss", "report_loss", "diverged")}
        out["accuracy"] = math.nan
        if weights is not None and not row["diverged"]:
            model = make_model(base, spec, la.target_modules, la.seed)
            unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
            assert not unexpected, f"trained weights the rebuilt model lacks: {unexpected[:3]}"
            out["accuracy"] = reasoning_accuracy(model, tokenizer, data.examples)
        for rank in (me.ranks if method == "full" else [r]):
            summary.append({**out, "rank": rank})
    # Mark the selected trial of every curve (the learning curves of the method table).
    chosen = {(s["method"], s["rank"] if s["method"] != "full" else 0, s["knob_value"]) for s in summary}
    for c in curves:
        c["selected"] = (c["method"], c["rank"], c["knob_value"]) in chosen
    return {"runs": runs, "curves": curves, "summary": summary, "layerwise": layer_rows}


def method_trial(cfg: Config, base: torch.nn.Module, data: TaskData, job: tuple) -> tuple[dict, list[dict], Any]:
    """One tuning trial: job = (method, rank, knob, knob value, RunSpec, eval_every, keep). Returns its row,
    learning curve and, with ``keep``, its trainable weights (name → tensor; None otherwise)."""
    method, r, knob, value, spec, eval_every, keep = job
    la = section(cfg)
    model, result = train_run(cfg, base, data, spec, eval_split="report", eval_every=eval_every)
    choice = spec.choice
    row = {"task": data.name, "method": method, "rank": r, "knob": knob, "knob_value": value, "lr": spec.lr,
           "alpha": choice.lora_alpha if choice else math.nan, "scaling": choice.scaling if choice else math.nan,
           "layer_alphas": len(choice.alpha_pattern or {}) if choice else 0,
           "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
           **run_summary(cfg, model, data, result)}
    curves = curve_rows(result, max(1, la.train.steps[data.name] // 50), task=data.name, method=method, rank=r,
                        knob_value=value)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad} if keep else None
    return row, curves, weights


# ------------------------------------------------------------------------------------------ mechanisms

#: The mechanisms stage's three independent measurements, in the order of its tables.
MECHANISMS = ("signal_drift", "curvature", "mlp")


def mechanism(cfg: Config, base: torch.nn.Module, data: TaskData, name: str) -> list[dict]:
    """Rows of one of ``MECHANISMS``. Module-level so :func:`lmrepro.pool.run_jobs` can run the three side by
    side; each seeds its own models and data, so the rows do not depend on which process runs it or after what."""
    if name not in MECHANISMS:
        raise ValueError(f"mechanism {name!r} is unknown; choose one of {list(MECHANISMS)}")
    return mlp(cfg) if name == "mlp" else {"signal_drift": signal_drift, "curvature": curvature}[name](cfg, base, data)


def mechanisms(cfg: Config, base: torch.nn.Module, data: TaskData) -> dict[str, list[dict]]:
    """Every mechanism's rows by name, computed side by side in :mod:`lmrepro.pool` workers (one thread each,
    the section's ``threads``): 60–72 s instead of 117 s serial on a 2-core laptop, 2026-12-06 (signal/drift alone
    is about half the work)."""
    rows = run_jobs(mechanism, MECHANISMS, (cfg, base, data), threads=_threads(section(cfg)))
    return dict(zip(MECHANISMS, rows))

def signal_drift(cfg: Config, base: torch.nn.Module, data: TaskData) -> list[dict]:
    """Per-step signal ‖S‖, drift ‖D‖, ρ = ‖D‖/‖S‖ and alignment cos(S, −∇_W L) (means over layers; ``total_ratio``
    over all layers together) along two axes from the base point (α = r, mechanisms.base_lr): raising lr only,
    raising α only."""
    la = section(cfg)
    sd = la.mechanisms.signal_drift
    r, rows, clock = sd.rank, [], Timer()
    axes = [("lr", m, la.mechanisms.base_lr * m, float(r)) for m in sd.lr_multipliers]
    axes += [("alpha", m, la.mechanisms.base_lr, float(r) * m) for m in sd.alpha_multipliers]
    for axis, m, lr, alpha in axes:
        spec = RunSpec(lr, alpha_for("fixed", r, alpha=alpha))
        model = make_model(base, spec, la.target_modules, la.seed)
        probe = _Probe(SignalDrift(model))
        _, result = train_run(cfg, base, data, spec, steps=sd.steps, callbacks=[probe], model=model)
        probe.probe.remove()
        for row, stats in zip(result.rows, probe.stats):
            rows.append({"task": data.name, "rank": r, "axis": axis, "multiplier": m, "lr": lr, "alpha": alpha,
                         "step": row["step"], "loss": row["loss"], **stats})
        _log(f"[{clock():7.1f}s] signal/drift {axis}×{m:g}: mean ratio "
             f"{np.nanmean([s['ratio'] for s in probe.stats[sd.skip_steps:]]):.4g}")
    return rows


class _Probe:
    """SignalDrift as a finetune callback, keeping per-step layer means and the all-layer ratio."""

    def __init__(self, probe: SignalDrift):
        self.probe, self.stats = probe, []

    def before_step(self):
        self.probe.before_step()

    def after_step(self):
        stats = self.probe.after_step()
        self.stats.append({**mean_over_layers(stats), "total_ratio": total_ratio(stats)})
        return None


def curvature(cfg: Config, base: torch.nn.Module, data: TaskData) -> list[dict]:
    """Top Hessian eigenvalue over the LoRA parameters versus over the base weights they adapt, at the standard
    α (``alpha_rule``), at init and at fractions of a short LoRA training run, on a fixed training batch."""
    la = section(cfg)
    cv = la.mechanisms.curvature
    dev = next(base.parameters()).device
    batch = {k: v[:cv.batch_size].to(dev) for k, v in data.train.items()}
    if "lengths" in batch:
        width = int(batch["lengths"].max())
        batch = {k: (v[:, :width] if v.dim() == 2 else v) for k, v in batch.items()}
    at = sorted({round(f * cv.steps) for f in cv.at_fractions})
    rows, clock = [], Timer()
    for r in cv.ranks:
        spec = RunSpec(la.mechanisms.base_lr * cv.lr_multiplier, alpha_for(cv.alpha_rule, r))
        model = make_model(base, spec, la.target_modules, la.seed)

        def measure(step: int, model=model, r=r) -> None:
            was = model.training
            model.eval()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                lam = lora_vs_full_curvature(model, lambda: sft_loss(model, batch)[0], iters=cv.iters, tol=cv.tol,
                                             seed=la.seed)
            model.train(was)
            converged = not any("not converged" in str(w.message) for w in caught)
            rows.append({"task": data.name, "rank": r, "alpha": spec.choice.lora_alpha, "step": step,
                         "lambda_lora": lam["lora"], "lambda_full": lam["full"],
                         "ratio": lam["lora"] / lam["full"] if lam["full"] > 0 else math.nan, "converged": converged})
            _log(f"[{clock():7.1f}s] curvature r={r} step {step}: λ_lora {lam['lora']:.4g} λ_full {lam['full']:.4g}")

        if 0 in at:
            measure(0)
        probe = _AtSteps([s for s in at if s > 0], measure)
        if probe.steps:
            train_run(cfg, base, data, spec, steps=cv.steps, callbacks=[probe], model=model)
    return rows


class _AtSteps:
    def __init__(self, steps, fn):
        self.steps, self.fn, self.count = set(steps), fn, 0

    def after_step(self):
        self.count += 1
        if self.count in self.steps:
            self.fn(self.count)
        return None


def mlp(cfg: Config) -> list[dict]:
    """The 5-layer synthetic MLP (claim 7) for every seed: lr ×lr_multiplier (α fixed) versus α ×alpha_multiplier
    (lr fixed), each next to its ×1 base run."""
    m = section(cfg).mechanisms.mlp
    rows = []
    for seed in m.seeds:
        for row in run_mlp_experiment((1, m.lr_multiplier), (1, m.alpha_multiplier), base_lr=m.base_lr,
                                      base_alpha=m.base_alpha, r=m.r, steps=m.steps, seed=seed,
                                      diverge_factor=m.diverge_factor, width=m.width):
            rows.append({"seed": seed, **row})
    return rows
