"""Paper 1 report: read the evaluation tables, fit scaling laws, compute each claim's metric.

Every table carries the run's ``seed``. Each metric below is computed within each seed, and the ledger value is
its mean over the seeds; ``<metric>_seed_se`` is that mean's standard error (sample standard deviation over
seeds ÷ √seeds; NaN with one seed), the noise the claims' margins are multiples of (scaling fits too: one per
seed; ``scaling_fits.csv`` holds them all). Preconditions (:data:`PRECONDITIONS`) take the *smallest* value over
the seeds: every seed must meet them. Two choices are shared by the seeds so that their values are comparable:
"early" comes from the seed-mean loss curves, and the probe gap averages over the hybrids informative in every
seed.

Metrics (named in pipelines/hybrid_attention/claims.yaml; all from our own numbers, at the largest size):
  loss_spread             (max − min) / min of the final validation loss across architectures
  longppl_spread_ratio    spread of ln LongPPL across architectures at the last snapshot ÷ at the early one
  swa_large_early_gap     ln LongPPL of swa-large − max over the other architectures, early snapshot
  restriction_gap         mean Δln LongPPL when restricting the full-attention layers − when restricting
                          the efficient layers (over the restricted architectures and the windows that
                          restrict anything: a window at or above a layer's own changes nothing)
  probe_gain_gap          mean probe-accuracy gain (residual, layer ℓ vs ℓ−1) at full-attention layers −
                          at efficient layers, over the hybrids whose best block output finds the needle
                          above chance in every seed (one-sided binomial test, 5%, Bonferroni over layers); NaN
                          when none does
  qk_half_tokens_log_ratio  ln(tokens at which the traced heads' relative W_q/W_k distance from the final
                          weights first falls to half its first-snapshot value: swa-large ÷ swa-small),
                          log-linear between snapshots (> 0: large windows converge later)
  nope_ruler_gain         mean RULER accuracy swa-small-nope − swa-small (all tasks and lengths)
  nope_loss_change        |final val loss swa-small-nope − swa-small| / swa-small
  exponent_spread_ratio   spread across architectures of the data exponent β of ln LongPPL ÷ that of the
                          validation loss, fits with the largest size held out (α is boxed to the paper's
                          [0.2, 0.3], so β carries the architecture differences)

Preconditions (the claims that presuppose long-context use are "not testable" when they fail):
  full_needle_accuracy    Full's greedy single-needle accuracy at 1× the training context (final model)
  probe_informative_hybrids  hybrids whose probes find the needle above chance in every seed
  retrieval_head_score    the weaker of swa-small and swa-large: the best Wu et al. retrieval score of any
                          attention head of its final model (their threshold: 0.1)
  size_span               largest ÷ smallest parameter count when there are at least 3 sizes, else 0

"Early" (claim 2) is the first snapshot after the loss knee: the first at which every architecture has made
EARLY_PROGRESS of its loss drop from ln(vocabulary) (an untrained model) to its final loss.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import seaborn as sns
from scipy.stats import binom

from ...analysis.scaling import ScalingFitWarning, fit_scaling_law
from ...paths import Paths
from . import artifacts
from .config import ARCHITECTURES, HybridConfig

EARLY_PROGRESS = 0.8
PRECONDITIONS = ("full_needle_accuracy", "probe_informative_hybrids", "retrieval_head_score", "size_span")
NEEDLE_TASK, NEEDLE_LENGTH = "single_needle", 1.0


@dataclass(frozen=True)
class Context:
    """What the metrics need from the profile: the vocabulary (an untrained model's loss is ln V), the
    training context and each architecture's sliding window (None: no SWA layers)."""

    vocab_size: int
    seq_len: int
    windows: dict[str, int | None]

    @classmethod
    def of(cls, vocab_size: int, h: HybridConfig) -> "Context":
        return cls(vocab_size, h.seq_len, {a: h.window(a) for a in ARCHITECTURES})


def palette() -> dict[str, tuple]:
    """One colour per architecture, the same in every figure."""
    return dict(zip(ARCHITECTURES, sns.color_palette("tab10", len(ARCHITECTURES))))


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
    """L(N, D) = b·N^−α + c·D^−β per architecture, for validation loss and ln LongPPL, fitted without the
    largest size (``heldout_rmse``: its log-space prediction error) when there are at least 3 sizes and 4 points
    without it."""
    rows = []
    for arch, group in curves.groupby("arch"):
        for target in ("val_loss", "ln_longppl"):
            values = group["val_loss"] if target == "val_loss" else np.log(group["longppl"])
            ok = np.isfinite(values) & (values > 0)
            # Hold out the largest size when at least 4 points (the fit's parameters) remain without it.
            rest = ok & (group["parameters"] < group["parameters"][ok].max()) if ok.any() else ok
            holdout = group["parameters"][ok].nunique() >= 3 and rest.sum() >= 4
            if ok.sum() < 4:
                rows.append({"arch": arch, "target": target, "n_points": int(ok.sum())})
                continue
            with warnings.catch_warnings():  # recorded per row instead (identifiable, at_bound)
                warnings.simplefilter("ignore", ScalingFitWarning)
                fit = fit_scaling_law(group["parameters"][ok], group["tokens"][ok], values[ok],
                                      holdout_largest=holdout, **options)
            rows.append({"arch": arch, "target": target, "n_points": int(ok.sum()), "alpha": fit.alpha,
                         "beta": fit.beta, "b": fit.b, "c": fit.c, "r2": fit.r2, "rmse": fit.rmse,
                         "heldout_rmse": fit.holdout_rmse, "identifiable": fit.identifiable,
                         "at_bound": " ".join(fit.at_bound)})
    return pd.DataFrame(rows)


def _spread(values: pd.Series) -> float:
    return float(values.max() - values.min()) if len(values) else math.nan


def early_snapshot(curves: pd.DataFrame, vocab_size: int) -> int:
    """Tokens of the first snapshot at which every architecture has made EARLY_PROGRESS of its validation-loss
    drop from ln(vocab_size) to its final loss (rows: one size; columns arch, tokens, val_loss)."""
    start = math.log(vocab_size)
    wide = curves.pivot_table(index="tokens", columns="arch", values="val_loss").sort_index()
    progress = (start - wide) / (start - wide.iloc[-1])
    reached = progress.ge(EARLY_PROGRESS).all(axis=1)
    return int(reached.idxmax()) if reached.any() else int(wide.index[-1])


def half_distance_tokens(tokens, distance) -> float:
    """Tokens at which ``distance`` (one value per snapshot, ascending tokens) first falls to half its first
    value, interpolated linearly in log tokens; NaN when it starts at 0 or never gets there."""
    t, d = np.asarray(tokens, dtype=float), np.asarray(distance, dtype=float)
    if len(t) == 0 or not d[0] > 0:
        return math.nan
    half = d[0] / 2
    below = np.nonzero(d <= half)[0]
    if not len(below):
        return math.nan
    i = int(below[0])
    frac = (d[i - 1] - half) / (d[i - 1] - d[i])
    return float(np.exp(np.log(t[i - 1]) + frac * (np.log(t[i]) - np.log(t[i - 1]))))


def seeds_of(tables: dict[str, pd.DataFrame]) -> list[int]:
    """The seeds of the checkpoint table (every evaluated run has rows there)."""
    return sorted(int(s) for s in tables["checkpoints"]["seed"].unique())


def one_seed(tables: dict[str, pd.DataFrame], seed: int) -> dict[str, pd.DataFrame]:
    """The rows of ``seed`` in every (non-empty) table."""
    return {name: t[t["seed"] == seed] if len(t) else t for name, t in tables.items()}


def claim_values(tables: dict[str, pd.DataFrame], ctx: Context,
                 fits: pd.DataFrame | None = None) -> tuple[dict[str, float], dict[str, dict]]:
    """Each metric and precondition of the module docstring (mean over seeds), its ``<metric>_seed_se``, and the
    numbers behind it (ledger evidence, with every seed's value). ``fits``: :func:`seed_scaling_fits` of
    ``tables["checkpoints"]`` when the caller has them (else fitted here)."""
    seeds = seeds_of(tables)
    fits = seed_scaling_fits(tables["checkpoints"]) if fits is None else fits
    shared = {"early_tokens": early_snapshot(largest(tables["checkpoints"]), ctx.vocab_size),  # seed-mean curves
              "probe_hybrids": sorted(set.intersection(*(set(informative_hybrids(one_seed(tables, s)["probes"]))
                                                          for s in seeds)))}
    per_seed = {seed: seed_values(one_seed(tables, seed), ctx, fits[fits["seed"] == seed] if len(fits) else fits,
                                  **shared) for seed in seeds}
    values, evidence = {}, {}
    for metric in per_seed[seeds[0]][0]:
        xs = np.array([per_seed[s][0][metric] for s in seeds], dtype=float)
        values[metric] = float(xs.min() if metric in PRECONDITIONS else xs.mean())
        values[f"{metric}_seed_se"] = float(xs.std(ddof=1) / math.sqrt(len(xs))) if len(xs) > 1 else math.nan
        evidence[metric] = {"by_seed": {s: _finite_or_none(x) for s, x in zip(seeds, xs)},
                            **{f"seed{s}": per_seed[s][1].get(metric, {}) for s in seeds}}
    return values, evidence


def seed_scaling_fits(curves: pd.DataFrame) -> pd.DataFrame:
    """:func:`scaling_fits` of each seed's checkpoints (column ``seed``); empty with fewer than 3 sizes, where
    no size can be held out (such fits test nothing, and cost seconds)."""
    if curves["size"].nunique() < 3:
        return pd.DataFrame()
    return pd.concat([scaling_fits(g).assign(seed=seed) for seed, g in curves.groupby("seed")], ignore_index=True)


def _finite_or_none(x: float) -> float | None:
    return round(float(x), 4) if math.isfinite(x) else None


def seed_values(tables: dict[str, pd.DataFrame], ctx: Context, fits: pd.DataFrame, early_tokens: int,
                probe_hybrids: list[str]) -> tuple[dict[str, float], dict[str, dict]]:
    """The metrics and preconditions of the module docstring for the runs of one seed, and their evidence.
    fits: that seed's :func:`scaling_fits` (empty with fewer than 3 sizes); early_tokens: claim 2's early
    snapshot; probe_hybrids: the hybrids whose probes beat chance in every seed (claim 4's average)."""
    curves = largest(tables["checkpoints"])
    last = curves["tokens"].max()
    final = curves[curves["tokens"] == last].set_index("arch")
    early = curves[curves["tokens"] == early_tokens].set_index("arch")
    ln_final, ln_early = np.log(final["longppl"]), np.log(early["longppl"])
    values, evidence = {}, {}

    values["loss_spread"] = _spread(final["val_loss"]) / float(final["val_loss"].min())
    evidence["loss_spread"] = {"final_val_loss": final["val_loss"].round(4).to_dict()}

    testable = early_tokens < last and _spread(ln_early) > 0
    values["longppl_spread_ratio"] = _spread(ln_final) / _spread(ln_early) if testable else math.nan
    evidence["longppl_spread_ratio"] = {"early_tokens": early_tokens, "last_tokens": int(last),
                                        "early_rule": f"every architecture past {EARLY_PROGRESS:.0%} of its loss drop",
                                        "longppl_early": early["longppl"].round(3).to_dict(),
                                        "longppl_last": final["longppl"].round(3).to_dict()}
    others = ln_early.drop("swa-large", errors="ignore")
    values["swa_large_early_gap"] = float(ln_early.get("swa-large", math.nan) - others.max())
    evidence["swa_large_early_gap"] = evidence["longppl_spread_ratio"]

    values["restriction_gap"], evidence["restriction_gap"] = _restriction_gap(tables["restriction"], ctx)
    values["probe_gain_gap"], evidence["probe_gain_gap"] = _probe_gap(tables["probes"], probe_hybrids)
    values["probe_informative_hybrids"] = float(len(probe_hybrids))
    values["qk_half_tokens_log_ratio"], evidence["qk_half_tokens_log_ratio"] = _qk_half(tables["trace"])
    values["retrieval_head_score"], evidence["retrieval_head_score"] = _retrieval_score(tables["wu"])

    ruler = tables["ruler"]
    acc = ruler.groupby("arch")["accuracy"].mean() if len(ruler) else pd.Series(dtype=float)
    values["nope_ruler_gain"] = float(acc.get("swa-small-nope", math.nan) - acc.get("swa-small", math.nan))
    evidence["nope_ruler_gain"] = {"mean_accuracy": acc.round(3).to_dict()}
    values["full_needle_accuracy"] = _needle_accuracy(ruler, "full")
    loss = final["val_loss"]
    values["nope_loss_change"] = float(abs(loss.get("swa-small-nope", math.nan) - loss.get("swa-small", math.nan))
                                       / loss.get("swa-small", math.nan))
    evidence["nope_loss_change"] = {"val_loss": loss.reindex(["swa-small", "swa-small-nope"]).round(4).to_dict()}

    sizes = tables["checkpoints"].groupby("size")["parameters"].max()
    values["size_span"] = float(sizes.max() / sizes.min()) if len(sizes) >= 3 else 0.0
    values["exponent_spread_ratio"], evidence["exponent_spread_ratio"] = _exponent_spread(fits)
    evidence["exponent_spread_ratio"]["parameters_by_size"] = sizes.astype(int).to_dict()
    return values, evidence


def _needle_accuracy(ruler: pd.DataFrame, arch: str) -> float:
    if not len(ruler) or not {"task", "length_multiplier"} <= set(ruler.columns):
        return math.nan
    rows = ruler[(ruler.arch == arch) & (ruler.task == NEEDLE_TASK) & (ruler.length_multiplier == NEEDLE_LENGTH)]
    return float(rows["accuracy"].mean()) if len(rows) else math.nan


def no_op_window(arch: str, target: str, window: int, ctx: Context) -> bool:
    """Whether restricting ``target`` layers of ``arch`` to ``window`` tokens changes nothing: the window is
    at or above what the layer already sees (its own SWA window; the context for full attention)."""
    own = ctx.seq_len if target == "full" else ctx.windows.get(arch)
    return own is not None and window >= own


def _restriction_gap(r: pd.DataFrame, ctx: Context) -> tuple[float, dict]:
    if not len(r):
        return math.nan, {}
    r = r[r.target != "none"]
    no_op = np.array([no_op_window(a, t, w, ctx) for a, t, w in zip(r.arch, r.target, r.window)], dtype=bool)
    used = r[~no_op].assign(dln=lambda d: np.log(d["ratio"]))
    evidence = {"ratio_by_arch_target": used.groupby(["arch", "target"])["ratio"].mean().round(3).unstack().to_dict(),
                "excluded_no_op": [f"{a} {t} {w}" for a, t, w in zip(r.arch[no_op], r.target[no_op], r.window[no_op])]}
    full, eff = used[used.target == "full"]["dln"], used[used.target == "efficient"]["dln"]
    if not len(full) or not len(eff):
        return math.nan, evidence
    return float(full.mean() - eff.mean()), evidence


def _exponent_spread(fits: pd.DataFrame) -> tuple[float, dict]:
    if not len(fits) or "beta" not in fits.columns:
        return math.nan, {}
    fits = fits.dropna(subset=["beta"])
    beta = fits.pivot(index="arch", columns="target", values="beta")
    evidence = {"beta": beta.round(4).to_dict(),
                "heldout_rmse": fits.pivot(index="arch", columns="target", values="heldout_rmse").round(4).to_dict(),
                "exponent_at_bound": fits[fits.at_bound != ""][["arch", "target", "at_bound"]].values.tolist()}
    if len(beta) < 2 or beta.isna().any().any() or _spread(beta["val_loss"]) == 0:
        return math.nan, evidence
    return _spread(beta["ln_longppl"]) / _spread(beta["val_loss"]), evidence


def informative_hybrids(probes: pd.DataFrame) -> list[str]:
    """Hybrids whose best block output finds the needle above chance (:func:`_chance_bar`); [] without probes."""
    if not len(probes):
        return []
    best, bar = _probe_bars(probes)
    return sorted(a for a in best.index if a != "full" and best[a] > bar[a])


def _probe_bars(probes: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(best block-output accuracy, above-chance bar) per architecture."""
    residual = probes[probes.feature == "residual"]
    if "n_test" not in residual.columns or residual["n_test"].isna().any():
        raise ValueError("probe tables lack n_test (written before it was recorded): re-run the evaluate stage")
    blocks = residual[residual.layer >= 0]  # block outputs; the embedding (layer −1) cannot hold the needle
    best = blocks.groupby("arch")["accuracy"].max()
    bar = pd.Series({arch: _chance_bar(layers) for arch, layers in blocks.groupby("arch")}, dtype=float)
    return best, bar


def _probe_gap(probes: pd.DataFrame, hybrids: list[str]) -> tuple[float, dict]:
    """Mean residual gain at full-attention layers − at efficient layers over ``hybrids``; NaN without any."""
    if not len(probes):
        return math.nan, {}
    best, bar = _probe_bars(probes)
    evidence = {"best_layer_accuracy": best.round(3).to_dict(), "above_chance_bar": bar.round(3).to_dict(),
                "informative_hybrids": informative_hybrids(probes), "averaged_over": list(hybrids)}
    residual = probes[probes.feature == "residual"]
    res = residual[residual.arch.isin(hybrids)].sort_values(["arch", "layer"])
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


def _qk_half(trace: pd.DataFrame) -> tuple[float, dict]:
    if not len(trace) or not {"swa-large", "swa-small"} <= set(trace.arch):
        return math.nan, {}
    by = trace.assign(qk=(trace.wq_relative + trace.wk_relative) / 2).groupby(["arch", "tokens"])["qk"].mean()
    half = {arch: half_distance_tokens(by[arch].index, by[arch].values)
            for arch in by.index.get_level_values(0).unique()}
    evidence = {"half_distance_tokens": {a: round(v, 1) for a, v in half.items()},
                "qk_relative_distance_by_tokens": {a: {int(t): round(float(v), 4) for t, v in by[a].items()}
                                                   for a in half}}
    return float(np.log(half["swa-large"] / half["swa-small"])), evidence


def _retrieval_score(wu: pd.DataFrame) -> tuple[float, dict]:
    if not len(wu):
        return math.nan, {}
    best = wu.groupby("arch")["score"].max()
    evidence = {"best_head_score": best.round(3).to_dict()}
    if not {"swa-small", "swa-large"} <= set(best.index):
        return math.nan, evidence
    return float(min(best["swa-small"], best["swa-large"])), evidence


def architecture_order() -> list[str]:
    return list(ARCHITECTURES)
