"""Where pipeline artifacts live, relative to the project root (the folder holding params.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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

    def checkpoints(self, run: str) -> Path:
        return self.data / "checkpoints" / run

    def results(self, paper: str) -> Path:
        return self.root / "results" / paper


def project_paths(root: str | Path | None = None) -> Paths:
    """Paths for the project whose params.yaml is in ``root`` or a parent of the working directory."""
    if root is None:
        from .config import find_params

        root = find_params().parent
    return Paths(Path(root).resolve())
