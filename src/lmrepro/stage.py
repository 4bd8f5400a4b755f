"""The one setup call of every pipeline notebook: validated config, project paths, the paper's results folder
and its claim criteria, process settings and logging.

A notebook's first code cell is::

    from lmrepro.stage import setup
    st = setup("xformer", profile)          # "foundation" for the root pipeline
    cfg, paths, results = st.cfg, st.paths, st.results

and a report ends with ``st.publish(values, evidence)`` (claims.json, claims.md, metrics.json).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .analysis.claims import CLAIMS_FILE, Claim, load_criteria, publish
from .config import Config, ConfigError, load_config
from .paths import Paths, project_paths
from .train.mirror import activate_for_project

FOUNDATION = "foundation"


@dataclass(frozen=True)
class Stage:
    paper: str
    cfg: Config
    paths: Paths
    results: Path

    @property
    def section(self) -> Any:
        """The paper's validated params section (``cfg.<paper>``); None for the foundation."""
        return None if self.paper == FOUNDATION else self.cfg.papers[self.paper]

    @property
    def criteria(self) -> dict[str, Claim]:
        """The paper's claim criteria, from pipelines/<paper>/claims.yaml."""
        return load_criteria(self.paths.pipeline(self.paper) / CLAIMS_FILE)

    def publish(self, values: dict[str, float | None], evidence: dict[str, dict] | None = None):
        """Judge every claim and write the ledger, its Markdown and metrics.json; returns a Markdown display."""
        from IPython.display import Markdown

        return Markdown(publish(self.results, self.paper, self.cfg.profile, self.criteria, values, evidence))


def setup(paper: str, profile: str | None = None) -> Stage:
    """Validate params.yaml, every profile file and the paper's claim criteria before any work; apply the
    section's process settings (``threads``: torch CPU threads); log to the notebook's output."""
    cfg = load_config(profile=profile)
    if paper != FOUNDATION and paper not in cfg.papers:
        raise ConfigError(f"paper {paper!r} is unknown; choose one of {[FOUNDATION, *cfg.papers]}")
    paths = project_paths()
    stage = Stage(paper, cfg, paths, paths.results(paper))
    if paper != FOUNDATION:
        stage.criteria  # noqa: B018 — validated now, not at the end of a long stage
        threads = getattr(stage.section, "threads", None)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
    stage.results.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    print(f"profile: {cfg.profile}   paper: {paper}   results: {stage.results.relative_to(paths.root)}")
    mirror = activate_for_project(paths.root)
    if mirror:
        print(f"resumable checkpoints are mirrored to {mirror} (LMREPRO_CHECKPOINT_MIRROR; off: =off)")
    return stage
