"""Merge per-paper pipeline fragments into params.yaml and dvc.yaml, as text (formatting kept).

  pipelines/<paper>/params.<profile>.yaml  the paper's section for one profile, at column 0
                                           (e.g. "xformer:\n  sizes: ..."); indented under profiles.<profile>
  pipelines/<paper>/claims.yaml            "<paper>:\n  c1: {...}"; indented under the top-level claims:
  pipelines/<paper>/dvc.yaml               "<stage>:\n  cmd: ..." stages at column 0; indented under stages:

A section, claims block or stage that is already present is replaced. Usage:
  python scripts/merge_fragments.py [ROOT] [--papers xformer lora_alpha]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

PROFILES = ("smoke", "laptop", "paper")


def indent(text: str, n: int) -> str:
    return "".join((" " * n + line) if line.strip() else line for line in text.strip("\n").splitlines(True)) + "\n"


def top_keys(text: str) -> list[str]:
    return re.findall(r"^([A-Za-z0-9_@.-]+):", text, flags=re.M)


def replace_block(doc: str, start: int, end: int, key: str, level: int, block: str) -> str:
    """Within doc[start:end], replace the block of ``key`` at indentation ``level`` (or append it)."""
    region = doc[start:end]
    m = re.search(rf"^{' ' * level}{re.escape(key)}:.*\n(?:(?:{' ' * (level + 1)}.*|\s*)\n)*", region, flags=re.M)
    if m:
        region = region[:m.start()] + block + region[m.end():]
    else:
        region = region.rstrip("\n") + "\n" + block
        if end < len(doc):
            region += "\n"
    return doc[:start] + region + doc[end:]


def profile_span(doc: str, profile: str) -> tuple[int, int]:
    m = re.search(rf"^  {profile}:\n", doc, flags=re.M)
    if not m:
        raise SystemExit(f"params.yaml: profile {profile} not found")
    nxt = re.search(r"^(?:  \S|\S)", doc[m.end():], flags=re.M)
    end = m.end() + nxt.start() if nxt else len(doc)
    while end > m.end() and doc[end - 2:end] == "\n\n":
        end -= 1
    return m.end(), end


def section_span(doc: str, header: str) -> tuple[int, int]:
    m = re.search(rf"^{header}:\n", doc, flags=re.M)
    if not m:
        raise SystemExit(f"no top-level '{header}:' section")
    nxt = re.search(r"^\S", doc[m.end():], flags=re.M)
    end = m.end() + nxt.start() if nxt else len(doc)
    while end > m.end() and doc[end - 2:end] == "\n\n":
        end -= 1
    return m.end(), end


def merge(root: Path, papers: list[str] | None) -> None:
    params, dvc = (root / "params.yaml").read_text(), (root / "dvc.yaml").read_text()
    for folder in sorted(p for p in (root / "pipelines").iterdir() if p.is_dir()):
        if papers is not None and folder.name not in papers:
            continue
        for profile in PROFILES:
            frag = folder / f"params.{profile}.yaml"
            if frag.is_file():
                text = frag.read_text()
                for key in top_keys(text):
                    start, end = profile_span(params, profile)
                    params = replace_block(params, start, end, key, 4, indent(text, 4))
        if (folder / "claims.yaml").is_file():
            text = (folder / "claims.yaml").read_text()
            for key in top_keys(text):
                start, end = section_span(params, "claims")
                params = replace_block(params, start, end, key, 2, indent(text, 2))
        if (folder / "dvc.yaml").is_file():
            text = (folder / "dvc.yaml").read_text()
            chunks = re.split(r"(?m)^(?=[A-Za-z0-9_@.-]+:)", text.strip("\n") + "\n")
            for chunk in filter(str.strip, chunks):
                key = top_keys(chunk)[0]
                start, end = section_span(dvc, "stages")
                dvc = replace_block(dvc, start, end, key, 2, "\n" + indent(chunk, 2))
        print(f"merged {folder.name}")
    (root / "params.yaml").write_text(params)
    (root / "dvc.yaml").write_text(dvc)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("root", nargs="?", default=".")
    parser.add_argument("--papers", nargs="*", default=None)
    args = parser.parse_args()
    merge(Path(args.root), args.papers)
