"""Every file and folder name of paper 3 (LoRA-α), as functions of the project :class:`~lmrepro.paths.Paths`.

pipelines/lora_alpha/dvc.yaml declares the same paths (deps and outs); change them together.

  data/lora_alpha/                 task tensors (``data`` stage): <task>.safetensors, the domain manifest,
                                   the reasoning problems scored by exact match
  results/lora_alpha/sweep/<task>/     runs.csv, curves.csv, provenance.json (``sweep`` stage)
  results/lora_alpha/methods/<task>/   runs.csv, curves.csv, summary.csv, layerwise.csv, provenance.json
  results/lora_alpha/mechanisms/       signal_drift.csv, curvature.csv, mlp.csv, provenance.json
  results/lora_alpha/                  data_summary.json, provenance/data.json, alpha_star.csv, alpha_fits.csv,
                                       figures/ (``report`` stage; claims.json, claims.md, metrics.json are
                                       written by lmrepro.analysis.claims.publish)
"""

from __future__ import annotations

from pathlib import Path

from ...config.schema_tools import ConfigError
from ...paths import Paths
from .config import TASKS

PAPER = "lora_alpha"
#: The tables of a sweep and of a methods stage (one folder per task), and of the mechanisms stage.
FULL_FT_TABLES = ("runs", "curves")
SWEEP_TABLES = ("runs", "curves")
METHODS_TABLES = ("runs", "curves", "summary", "layerwise")
MECHANISMS_TABLES = ("signal_drift", "curvature", "mlp")


def results(paths: Paths) -> Path:
    return paths.results(PAPER)


# ------------------------------------------------------------------------------------------ base model

def base_model(paths: Paths, base: str) -> Path:
    """Our pretrained foundation model used as the base (smoke/laptop): data/models/<base>/final."""
    return paths.model(base) / "final"


def base_model_id(paths: Paths, base: str) -> str:
    """:func:`base_model` relative to the project root (recorded in summaries and provenance)."""
    return base_model(paths, base).relative_to(paths.root).as_posix()


# ------------------------------------------------------------------------------------------ task data

def task_dir(paths: Paths) -> Path:
    return paths.paper_data(PAPER)


def check_task(task: str) -> str:
    """``task`` itself, if it is one of TASKS (a notebook parameter names files and folders)."""
    if task not in TASKS:
        raise ConfigError(f"task: {task!r} is not a task; choose one of {list(TASKS)}")
    return task


def task_file(paths: Paths, task: str) -> Path:
    """A task's tensors (keys ``<split>.<tensor>``)."""
    return task_dir(paths) / f"{check_task(task)}.safetensors"


def domain_manifest(paths: Paths) -> Path:
    return task_dir(paths) / "domain_manifest.json"


def report_examples(paths: Paths) -> Path:
    """The reasoning task's report-half problems scored by exact match (synthetic task only)."""
    return task_dir(paths) / "reasoning_report_examples.json"


def data_summary(paths: Paths) -> Path:
    return results(paths) / "data_summary.json"


def data_provenance(paths: Paths) -> Path:
    return results(paths) / "provenance" / "data.json"


# ------------------------------------------------------------------------------------------ stage tables

def full_ft_dir(paths: Paths, task: str) -> Path:
    return results(paths) / "full_ft" / check_task(task)


def base_lr_file(paths: Paths, task: str) -> Path:
    """The full_ft stage's pre-registered learning rate of ``task`` (JSON), which the sweep and methods read."""
    return full_ft_dir(paths, task) / "base_lr.json"


def sweep_dir(paths: Paths, task: str) -> Path:
    return results(paths) / "sweep" / check_task(task)


def methods_dir(paths: Paths, task: str) -> Path:
    return results(paths) / "methods" / check_task(task)


def mechanisms_dir(paths: Paths) -> Path:
    return results(paths) / "mechanisms"


def table(folder: Path, name: str) -> Path:
    """A stage table (``runs``, ``summary``, ``signal_drift``, ...) in one of the folders above."""
    return folder / f"{name}.csv"


def provenance(folder: Path) -> Path:
    """The provenance record of the stage that wrote ``folder``."""
    return folder / "provenance.json"


# ------------------------------------------------------------------------------------------ report

def figures(paths: Paths) -> Path:
    return results(paths) / "figures"


def alpha_star(paths: Paths) -> Path:
    """α* per task, lr multiplier and rank (the pipeline's plot)."""
    return results(paths) / "alpha_star.csv"


def alpha_fits(paths: Paths) -> Path:
    return results(paths) / "alpha_fits.csv"
