"""Each pipeline README maps every claim of its claims.yaml to figures that exist (no claim left out, no dead link)."""

import fnmatch
import re
from pathlib import Path

import pytest

from lmrepro import yaml12

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ("hybrid_attention", "xformer", "lora_alpha")


def figure_map(paper: str) -> list[tuple[list[str], list[str]]]:
    """(claim patterns, linked files) per row of the README's "Claim → figure map" table."""
    text = (ROOT / "pipelines" / paper / "README.md").read_text()
    section = text.split("## Claim → figure map", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        patterns = [p.strip() for p in cells[0].strip("`").split(",")]
        rows.append((patterns, re.findall(r"\]\(([^)]+)\)", cells[1])))
    return rows


@pytest.mark.parametrize("paper", PAPERS)
def test_every_claim_has_a_figure_that_exists(paper):
    claims = set(yaml12.load(ROOT / "pipelines" / paper / "claims.yaml"))
    rows = figure_map(paper)
    patterns = [p for ps, _ in rows for p in ps]
    assert {c for c in claims if not any(fnmatch.fnmatch(c, p) for p in patterns)} == set()
    assert [p for p in patterns if not fnmatch.filter(claims, p)] == []  # no row for a claim that is gone
    for _, links in rows:
        for link in links:
            assert (ROOT / "pipelines" / paper / link).resolve().is_file(), link
