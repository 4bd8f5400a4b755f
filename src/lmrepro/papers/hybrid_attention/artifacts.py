"""Every file and folder name paper 1 writes and reads, as functions of the project's :class:`Paths`.

pipelines/hybrid_attention/dvc.yaml declares the same paths (its deps and outs); the notebooks, ``runs``,
``evaluate`` and ``report`` take them from here.
"""

from __future__ import annotations

from pathlib import Path

from ...paths import Paths

PAPER = "hybrid_attention"
EVAL_TABLES = ("checkpoints", "restriction", "ruler", "probes")  # results/<paper>/eval/<arch>/<name>.csv
LAZINESS_TABLES = ("influence", "trace", "wu")  # results/<paper>/laziness/<name>.csv
SNAPSHOT_GLOB = "budget-*"  # the Trainer's token-budget snapshots inside a model folder
SNAPSHOT_META = "spec.json"  # save_model's metadata file of a snapshot (holds tokens_seen)


def results(paths: Paths) -> Path:
    return paths.results(PAPER)


def models(paths: Paths, arch: str) -> Path:
    """Final weights and budget snapshots of every size and seed of ``arch`` (one DVC output per architecture)."""
    return paths.paper_data(PAPER) / "models" / arch


def run_name(size: str, seed: int) -> str:
    """One training run of an architecture: a size and a seed."""
    return f"{size}-seed{seed}"


def run_dirs(paths: Paths, arch: str, size: str, seed: int) -> dict[str, Path]:
    """The Trainer's folders and files for one architecture at one size and seed."""
    name = run_name(size, seed)
    return {"out": models(paths, arch) / name,
            "ckpt": paths.paper_checkpoints(PAPER) / arch / name,
            "log": results(paths) / "train" / arch / f"{name}.csv",
            "provenance": results(paths) / "train" / arch / f"{name}.provenance.json",
            "live": paths.live(PAPER) / arch / name}


def key_tokens(paths: Paths) -> Path:
    """LongPPL documents and key-token mask of the fixed evaluator."""
    return paths.paper_data(PAPER) / "key_tokens.safetensors"


def key_tokens_summary(paths: Paths) -> Path:
    return results(paths) / "key_tokens.json"


def eval_root(paths: Paths) -> Path:
    return results(paths) / "eval"


def eval_dir(paths: Paths, arch: str) -> Path:
    return eval_root(paths) / arch


def eval_table(paths: Paths, arch: str, name: str) -> Path:
    """One of :data:`EVAL_TABLES` of one architecture."""
    return eval_dir(paths, arch) / f"{name}.csv"


def eval_tables(paths: Paths, name: str) -> list[Path]:
    """The ``name`` table of every evaluated architecture, in folder order."""
    return sorted(eval_root(paths).glob(f"*/{name}.csv"))


def laziness_dir(paths: Paths) -> Path:
    return results(paths) / "laziness"


def laziness_table(paths: Paths, name: str) -> Path:
    """One of :data:`LAZINESS_TABLES` (all listed architectures in one file)."""
    return laziness_dir(paths) / f"{name}.csv"


def scaling_fits(paths: Paths) -> Path:
    return results(paths) / "scaling_fits.csv"


def figures(paths: Paths) -> Path:
    return results(paths) / "figures"
