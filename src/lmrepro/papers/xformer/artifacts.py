"""Every file and folder name paper 2 writes and reads, as functions of the project's :class:`Paths`.

pipelines/xformer/dvc.yaml declares the same paths (its deps and outs); the notebooks, ``evaluate`` and
``report`` take them from here.
"""

from __future__ import annotations

from pathlib import Path

from ...paths import Paths

PAPER = "xformer"
ANALYSIS_TABLES = ("entropy", "density", "participation", "utilization", "logit_lens")  # results/<paper>/analysis/
FINAL = "final"  # the Trainer's folder of the final weights inside a run's model folder
MODEL_META = "spec.json"  # save_model's metadata file (holds tokens_seen)


def results(paths: Paths) -> Path:
    return paths.results(PAPER)


def models(paths: Paths, variant: str) -> Path:
    """Final weights of every run of ``variant`` (one DVC output per variant)."""
    return paths.paper_data(PAPER) / "models" / variant


def checkpoints(paths: Paths, variant: str) -> Path:
    """Resumable checkpoints of every run of ``variant`` (not a DVC output, so never removed by DVC)."""
    return paths.paper_checkpoints(PAPER) / variant


def train_dir(paths: Paths, variant: str) -> Path:
    """Training logs and provenance of every run of ``variant``."""
    return results(paths) / "train" / variant


def run_dirs(paths: Paths, variant: str, run: str) -> dict[str, Path]:
    """The Trainer's folders and files for one run of a variant (``run``: its name, ``config.Run.name``;
    the size for a variant's main run at that size)."""
    return {"out": models(paths, variant) / run,
            "ckpt": checkpoints(paths, variant) / run,
            "log": train_dir(paths, variant) / f"{run}.csv",
            "provenance": train_dir(paths, variant) / f"{run}.provenance.json",
            "live": paths.live(PAPER) / variant / run}


def final_model(paths: Paths, variant: str, run: str) -> Path:
    """The trained model of one run (a ``save_model`` folder)."""
    return run_dirs(paths, variant, run)["out"] / FINAL


def train_logs(paths: Paths) -> list[tuple[str, str, Path]]:
    """(variant, run name, training log) of every run that has one, in folder order."""
    return [(p.parent.name, p.stem, p) for p in sorted((results(paths) / "train").glob("*/*.csv"))]


def runs_table(paths: Paths) -> Path:
    """Validation loss and accounting of every run."""
    return results(paths) / "runs.csv"


def window_losses(paths: Paths) -> Path:
    """Per-window validation loss of every run (paired standard errors)."""
    return results(paths) / "window_losses.csv"


def evaluation(paths: Paths) -> Path:
    """The evaluate stage's flat metrics (dvc metrics; the report's are metrics.json)."""
    return results(paths) / "evaluation.json"


def analysis_dir(paths: Paths) -> Path:
    return results(paths) / "analysis"


def analysis_table(paths: Paths, name: str) -> Path:
    """One of :data:`ANALYSIS_TABLES`."""
    return analysis_dir(paths) / f"{name}.csv"


def loss_matched_fits(paths: Paths) -> Path:
    return results(paths) / "loss_matched_fits.csv"


def figures(paths: Paths) -> Path:
    return results(paths) / "figures"
