"""Claims ledger: each paper claim → a metric computed from our numbers → a verdict by a criterion
fixed in params.yaml before the run.

Verdicts: "reproduced" when the metric satisfies ``op threshold`` by more than ``margin``;
"not reproduced" when it fails by more than ``margin``; "inconclusive" inside the margin, or when the
metric could not be computed (NaN / missing), which is reported, never hidden.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

VERDICTS = ("reproduced", "not reproduced", "inconclusive")
OPS = {">": lambda d: d, ">=": lambda d: d, "<": lambda d: -d, "<=": lambda d: -d}


@dataclass(frozen=True)
class Claim:
    """One criterion. ``metric`` names the value the analysis computes; the claim holds when
    ``value op threshold`` with room ``margin`` (same units as the metric)."""

    statement: str
    metric: str
    op: str
    threshold: float
    margin: float = 0.0

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"op {self.op!r} is not allowed; choose one of {list(OPS)}")
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")


def verdict(value: float | None, claim: Claim) -> str:
    if value is None or not math.isfinite(value):
        return "inconclusive"
    signed = OPS[claim.op](value - claim.threshold)  # > 0: on the claim's side of the threshold
    if claim.op in (">=", "<=") and signed == 0 and claim.margin == 0:
        return "reproduced"
    if signed > claim.margin:
        return "reproduced"
    if signed < -claim.margin:
        return "not reproduced"
    return "inconclusive"


def build_ledger(claims: dict[str, Claim], values: dict[str, float | None],
                 evidence: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per claim: id, statement, metric, value, criterion, verdict, evidence (our numbers)."""
    missing = sorted(set(claims) - set(values))
    if missing:
        raise KeyError(f"no value computed for claims {missing}; every claim needs a value (use NaN if unmeasurable)")
    rows = []
    for cid, claim in claims.items():
        value = values[cid]
        value = None if value is None or not math.isfinite(float(value)) else float(value)
        rows.append({"id": cid, **asdict(claim), "value": value,
                     "criterion": f"{claim.metric} {claim.op} {claim.threshold:g}" + (f" ± {claim.margin:g}" if claim.margin else ""),
                     "verdict": verdict(value, claim), "evidence": (evidence or {}).get(cid, {})})
    return rows


def write_ledger(path: str | Path, paper: str, profile: str, rows: list[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"paper": paper, "profile": profile, "claims": rows}, indent=2, sort_keys=True) + "\n")
    return path


def render_markdown(ledger: dict[str, Any]) -> str:
    """A Markdown table of a ledger (as written by :func:`write_ledger`)."""
    lines = ["| # | claim | our value | criterion | verdict |", "| --- | --- | --- | --- | --- |"]
    for row in ledger["claims"]:
        value = "n/a" if row["value"] is None else f"{row['value']:.4g}"
        lines.append(f"| {row['id']} | {row['statement']} | {value} | `{row['criterion']}` | **{row['verdict']}** |")
    return "\n".join(lines)


def update_readme(readme: str | Path, ledgers: dict[str, str | Path]) -> bool:
    """Replace the text between ``<!-- claims:<paper> -->`` and ``<!-- /claims:<paper> -->`` markers in the
    README with each paper's rendered ledger. Returns True if the file changed."""
    readme = Path(readme)
    text = original = readme.read_text()
    for paper, path in ledgers.items():
        ledger = json.loads(Path(path).read_text())
        block = f"<!-- claims:{paper} -->\n_{ledger['profile']} profile_\n\n{render_markdown(ledger)}\n<!-- /claims:{paper} -->"
        pattern = re.compile(rf"<!-- claims:{re.escape(paper)} -->.*?<!-- /claims:{re.escape(paper)} -->", re.S)
        if not pattern.search(text):
            raise ValueError(f"{readme}: no <!-- claims:{paper} --> … <!-- /claims:{paper} --> markers")
        text = pattern.sub(lambda _: block, text)
    readme.write_text(text)
    return text != original


PAPERS = ("hybrid_attention", "xformer", "lora_alpha")


def main(argv: list[str] | None = None) -> int:
    """``python -m lmrepro.analysis.claims [--check]``: render every committed ledger into README.md
    (between its markers); with --check, only report whether README.md is up to date (exit 1 if not)."""
    import argparse
    import shutil
    import tempfile

    from ..paths import project_paths

    parser = argparse.ArgumentParser(prog="python -m lmrepro.analysis.claims")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    root = project_paths().root
    ledgers = {p: root / "results" / p / "claims.json" for p in PAPERS if (root / "results" / p / "claims.json").is_file()}
    readme = root / "README.md"
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "README.md"
            shutil.copy(readme, copy)
            stale = update_readme(copy, ledgers)
        print("README.md claims tables are " + ("stale: run python -m lmrepro.analysis.claims" if stale else "up to date"))
        return 1 if stale else 0
    changed = update_readme(readme, ledgers)
    print(f"README.md {'updated' if changed else 'already up to date'} from {sorted(ledgers)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
