"""CITATION.cff cites the project and every paper package's arXiv id; the LICENSE is the one it names."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

from lmrepro.config import paper_schemas

ROOT = Path(__file__).resolve().parents[1]


def test_citation_cites_every_paper_and_names_the_license():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["authors"]
    cited = {ident["value"] for ref in cff["references"] for ident in ref["identifiers"]}
    for paper in paper_schemas():
        doc = importlib.import_module(f"lmrepro.papers.{paper}").__doc__
        arxiv = re.search(r"arXiv (\d{4}\.\d{5})", doc).group(1)
        assert f"arXiv:{arxiv}" in cited, paper
    assert all(ref["title"] and ref["authors"] and ref["year"] == 2026 for ref in cff["references"])
    assert cff["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
