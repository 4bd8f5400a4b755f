"""Where pipeline artifacts live, relative to the project root (the folder holding params.yaml).

The lowest layer of the package: it imports nothing from lmrepro, so config, papers and analysis can all
use it. Each paper's own artifact names live in its package (``lmrepro.papers.<paper>.artifacts``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PARAMS_FILE = "params.yaml"
CHECKPOINT_ROOT_ENV = "LMREPRO_CHECKPOINT_ROOT"


class ProjectNotFound(FileNotFoundError):
    """No params.yaml in the working directory or any parent."""


def find_params(start: str | Path | None = None) -> Path:
    """Locate params.yaml in ``start`` or its parents (notebooks may run from notebooks/<paper>/)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PARAMS_FILE).is_file():
            return folder / PARAMS_FILE
    raise ProjectNotFound(f"params.yaml: not found in {here} or any parent folder")


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def manifest(self) -> Path:
        return self.data / "corpus" / "manifest.json"

    @property
    def corpus(self) -> Path:
        return self.data / "corpus"

    @property
    def tokenizer(self) -> Path:
        return self.data / "tokenizer" / "tokenizer.json"

    def tokens(self, split: str) -> Path:
        return self.data / "tokens" / split

    def model(self, run: str) -> Path:
        return self.data / "models" / run

    @property
    def checkpoint_root(self) -> Path:
        """data/checkpoints/, or ``LMREPRO_CHECKPOINT_ROOT``: the main checkout's folder for a run in a temporary copy
        (``dvc exp run --temp`` deletes its copy when the run stops, checkpoints included). Sharing one folder is
        safe: checkpoints are keyed by run fingerprint, and a run folder is locked while it trains."""
        override = os.environ.get(CHECKPOINT_ROOT_ENV)
        return Path(override) if override else self.data / "checkpoints"

    def checkpoints(self, run: str) -> Path:
        return self.checkpoint_root / run

    def results(self, paper: str) -> Path:
        return self.root / "results" / paper

    def paper_data(self, paper: str) -> Path:
        """A paper's DVC-tracked data (models, key tokens, task tensors): data/<paper>/."""
        return self.data / paper

    def paper_checkpoints(self, paper: str) -> Path:
        """A paper's resumable checkpoints: data/checkpoints/<paper>/ (not a DVC output, so never removed by DVC;
        see :attr:`checkpoint_root`)."""
        return self.checkpoint_root / paper

    def live(self, paper: str) -> Path:
        """Where a paper's runs log while they train (``train.trackers``; DVCLive: live/<paper>/<run>/metrics.json,
        declared as DVC metrics in dvc.yaml, so ``dvc exp show`` lists a running stage's runs). Not versioned: a
        run's curve is in its CSV under results/."""
        return self.root / "live" / paper

    def pipeline(self, paper: str) -> Path:
        """A paper's pipeline folder: its dvc.yaml, README and claims criteria."""
        return self.root / "pipelines" / paper


def shown(path: str | Path) -> str:
    """``path`` as logs and notebooks print it: relative to the project root when inside the project (executed
    notebooks are committed, and the machine's folder layout is noise there), else as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(find_params().parent.resolve()))
    except (ProjectNotFound, ValueError):
        return str(path)


def project_paths(root: str | Path | None = None) -> Paths:
    """Paths for the project whose params.yaml is in ``root`` or a parent of the working directory."""
    return Paths(Path(root).resolve() if root is not None else find_params().parent)
