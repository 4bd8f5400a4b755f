"""Paper 1 report: read the evaluation tables, fit scaling laws, compute each claim's metric.

Metrics (named in pipelines/hybrid_attention/claims.yaml; all from our own numbers, at the largest size):
  loss_spread            (max − min) / min of the final validation loss across architectures
  longppl_spread_ratio   spread of ln LongPPL across architectures at the last snapshot ÷ at the first
  swa_large_early_gap    ln LongPPL of swa-large − max over the other architectures, first snapshot
  restriction_gap        mean Δln LongPPL when restricting the full-attention layers − when restricting
                         the efficient layers (over the restricted architectures and windows)
  probe_gain_gap         mean probe-accuracy gain (residual, layer ℓ vs ℓ−1) at full-attention layers −
                         at efficient layers, over the hybrids whose best block output finds the needle
                         above chance (one-sided binomial test, 5%, Bonferroni over layers); NaN when none does
  qk_distance_gap        mean relative W_q/W_k distance from the final weights of the traced heads at the
                         middle snapshot: swa-large − swa-small (larger = slower Q/K convergence)
  nope_ruler_gain        mean RULER accuracy swa-small-nope − swa-small (all tasks and lengths)
  nope_loss_change       |final val loss swa-small-nope − swa-small| / swa-small
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy.stats import binom

from ...analysis.scaling import ScalingFitWarning, fit_scaling_law
from ...paths import Paths
from . import artifacts
from .config import ARCHITECTURES


def _read_all(paths: Paths, name: str) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in artifacts.eval_tables(paths, name)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_tables(paths: Paths) -> dict[str, pd.DataFrame]:
    """Every evaluation table (all architectures concatenated) and the laziness tables; empty when absent."""
    tables = {name: _read_all(paths, name) for name in artifacts.EVAL_TABLES}
    for name in artifacts.LAZINESS_TABLES:
        path = artifacts.laziness_table(paths, name)
        tables[name] = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    return tables


def largest(curves: pd.DataFrame) -> pd.DataFrame:
    """Rows of the largest size (by parameter count of the full model)."""
    size = curves.groupby("size")["parameters"].max().idxmax()
    return curves[curves["size"] == size]


def scaling_fits(curves: pd.DataFrame, **options) -> pd.DataFrame:
    """L(N, D) = b·N^−α + c·D^−β per architecture, for validation loss and ln LongPPL."""
    rows = []
    for arch, group in curves.groupby("arch"):
        for target in ("val_loss", "ln_longppl"):
            values = group["val_loss"] if target == "val_loss" else np.log(group["longppl"])
            ok = np.isfinite(values) & (values > 0)
            if ok.sum() < 4:
                rows.append({"arch": arch, "target": target, "n_points": int(ok.sum())})
                continue
            with warnings.catch_warnings():  # recorded per row instead (identifiable, at_bound)
                warnings.simplefilter("ignore", ScalingFitWarning)
                fit = fit_scaling_law(group["parameters"][ok], group["tokens"][ok], values[ok], **options)
            rows.append({"arch": arch, "target": target, "n_points": int(ok.sum()), "alpha": fit.alpha,
                         "beta": fit.beta, "b": fit.b, "c": fit.c, "r2": fit.r2, "rmse": fit.rmse,
                         "identifiable": fit.identifiable, "at_bound": " ".join(fit.at_bound)})
    return pd.DataFrame(rows)


def _spread(values: pd.Series) -> float:
    return float(values.max() - values.min()) if len(values) else math.nan


def claim_values(tables: dict[str, pd.DataFrame]) -> tuple[dict[str, float], dict[str, dict]]:
    """Each metric of the module docstring and the numbers behind it (evidence for the ledger)."""
    curves = largest(tables["checkpoints"])
    first, last = curves["tokens"].min(), curves["tokens"].max()
    final = curves[curves["tokens"] == last].set_index("arch")
    early = curves[curves["tokens"] == first].set_index("arch")
    ln_final, ln_early = np.log(final["longppl"]), np.log(early["longppl"])
    values, evidence = {}, {}

    values["loss_spread"] = _spread(final["val_loss"]) / float(final["val_loss"].min())
    evidence["loss_spread"] = {"final_val_loss": final["val_loss"].round(4).to_dict()}

    values["longppl_spread_ratio"] = _spread(ln_final) / _spread(ln_early) if _spread(ln_early) > 0 else math.nan
    evidence["longppl_spread_ratio"] = {"first_tokens": int(first), "last_tokens": int(last),
                                        "longppl_first": early["longppl"].round(3).to_dict(),
                                        "longppl_last": final["longppl"].round(3).to_dict()}
    others = ln_early.drop("swa-large", errors="ignore")
    values["swa_large_early_gap"] = float(ln_early.get("swa-large", math.nan) - others.max())
    evidence["swa_large_early_gap"] = evidence["longppl_spread_ratio"]

    r = tables["restriction"]
    if len(r):
        r = r.assign(dln=np.log(r["ratio"]))
        gap = r[r.target == "full"]["dln"].mean() - r[r.target == "efficient"]["dln"].mean()
        values["restriction_gap"] = float(gap)
        evidence["restriction_gap"] = r.groupby(["arch", "target"])["ratio"].mean().round(3).unstack().to_dict()
    else:
        values["restriction_gap"] = math.nan

    values["probe_gain_gap"], evidence["probe_gain_gap"] = _probe_gap(tables["probes"])
    values["qk_distance_gap"], evidence["qk_distance_gap"] = _qk_gap(tables["trace"])

    ruler = tables["ruler"]
    acc = ruler.groupby("arch")["accuracy"].mean() if len(ruler) else pd.Series(dtype=float)
    values["nope_ruler_gain"] = float(acc.get("swa-small-nope", math.nan) - acc.get("swa-small", math.nan))
    evidence["nope_ruler_gain"] = {"mean_accuracy": acc.round(3).to_dict()}
    loss = final["val_loss"]
    values["nope_loss_change"] = float(abs(loss.get("swa-small-nope", math.nan) - loss.get("swa-small", math.nan))
                                       / loss.get("swa-small", math.nan))
    evidence["nope_loss_change"] = {"val_loss": loss.reindex(["swa-small", "swa-small-nope"]).round(4).to_dict()}
    return values, evidence


def _probe_gap(probes: pd.DataFrame) -> tuple[float, dict]:
    if not len(probes):
        return math.nan, {}
    residual = probes[probes.feature == "residual"]
    if "n_test" not in residual.columns or residual["n_test"].isna().any():
        raise ValueError("probe tables lack n_test (written before it was recorded): re-run the evaluate stage")
    blocks = residual[residual.layer >= 0]  # block outputs; the embedding (layer −1) cannot hold the needle
    best = blocks.groupby("arch")["accuracy"].max()
    bar = pd.Series({arch: _chance_bar(layers) for arch, layers in blocks.groupby("arch")}, dtype=float)
    informative = sorted(a for a in best.index if a != "full" and best[a] > bar[a])
    evidence = {"best_layer_accuracy": best.round(3).to_dict(), "above_chance_bar": bar.round(3).to_dict(),
                "informative_hybrids": informative}
    res = residual[residual.arch.isin(informative)].sort_values(["arch", "layer"])
    res = res.assign(gain=res.groupby("arch")["accuracy"].diff())
    res = res[res.layer >= 0].dropna(subset=["gain"])
    if not len(res):
        return math.nan, evidence
    full_gain, eff_gain = res[res.full_attention]["gain"].mean(), res[~res.full_attention]["gain"].mean()
    evidence.update(mean_gain_full_layers=round(float(full_gain), 4),
                    mean_gain_efficient_layers=round(float(eff_gain), 4))
    return float(full_gain - eff_gain), evidence


def _chance_bar(layers: pd.DataFrame) -> float:
    """Probe accuracy that chance exceeds with probability < 5% at any of ``layers`` (rows of one
    architecture): a one-sided binomial test on the n_test held-out prompts, Bonferroni over the layers."""
    n, p = int(layers.n_test.iloc[0]), float(layers.chance.iloc[0])
    return float(binom.ppf(1 - 0.05 / len(layers), n, p)) / n


def _qk_gap(trace: pd.DataFrame) -> tuple[float, dict]:
    if not len(trace) or not {"swa-large", "swa-small"} <= set(trace.arch):
        return math.nan, {}
    trace = trace.assign(qk=(trace.wq_relative + trace.wk_relative) / 2)
    by = trace.groupby(["arch", "tokens"])["qk"].mean()
    mid = {}
    for arch in ("swa-small", "swa-large"):
        series = by[arch]
        mid[arch] = float(series.iloc[len(series) // 2 - 1 if len(series) > 1 else 0])
    curves = {arch: {int(t): round(float(v), 4) for t, v in by[arch].items()}
              for arch in by.index.get_level_values(0).unique()}
    return mid["swa-large"] - mid["swa-small"], {"qk_relative_distance_by_tokens": curves}


def architecture_order() -> list[str]:
    return list(ARCHITECTURES)
