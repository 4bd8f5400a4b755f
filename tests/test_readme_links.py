"""The READMEs point only at files that exist: every relative Markdown link, and every path in backticks that
starts at a project folder (placeholders such as ``<paper>`` or globs are skipped; data/ is made by the pipeline)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", *sorted((ROOT / "pipelines").glob("*/README.md"))]
FOLDERS = "src|scripts|benchmarks|notebooks|pipelines|results|tests|profiles|requirements|\\.ci"
CODE_PATH = re.compile(rf"`((?:{FOLDERS})/[^`\s]*)`")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def references(readme: Path) -> list[tuple[str, Path]]:
    """(as written, resolved path) for each file reference in ``readme``."""
    text = readme.read_text()
    found = [(m, readme.parent / m) for m in LINK.findall(text) if not re.match(r"[a-z]+:", m)]
    found += [(m, ROOT / m) for m in CODE_PATH.findall(text)]
    return [(m, p) for m, p in found if not re.search(r"[<>*{}$]|\.\.\.|…", m)]


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_readme_references_exist(readme):
    refs = references(readme)
    assert refs  # the pattern finds this README's references
    dead = [m for m, p in refs if not p.resolve().exists()]
    assert dead == []
