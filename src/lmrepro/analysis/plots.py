"""One plot style for every figure, and deterministic PNG files (no timestamps in metadata)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns


def set_style() -> None:
    """The project's plot style; also seeds numpy's global generator, which seaborn's strip plots draw their
    jitter from: a report run top to bottom then redraws byte-identical figures from the same tables (and
    `git status` stays clean after re-running one)."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 120, "figure.autolayout": True})
    np.random.seed(0)


def save(fig, path: str | Path) -> Path:
    """Save ``fig`` as PNG without volatile metadata, so unchanged figures give unchanged files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None}, bbox_inches="tight")
    return path


def log_ticks(ax, values, axis: str = "x") -> None:
    """Label a log axis at exactly ``values`` with plain numbers (1, 16, 256 rather than 10^0 · 1.6·10^1)."""
    values = sorted({float(v) for v in values if math.isfinite(float(v)) and float(v) > 0})  # log axis: > 0
    set_ticks, set_labels = (ax.set_xticks, ax.set_xticklabels) if axis == "x" else (ax.set_yticks, ax.set_yticklabels)
    getattr(ax, f"{axis}axis").set_minor_locator(plt.NullLocator())
    set_ticks(values)
    set_labels([f"{v:g}" for v in values])
