"""Two runs of the same pipelines side by side: which verdicts differ, and how far each value moved against its
margin (e.g. the committed results against a rerun on another machine).

``python -m lmrepro.analysis.ledger_diff RESULTS_A RESULTS_B [--out FILE]`` prints (and writes) JSON: for every
paper with a ``claims.json`` in both ``results/`` folders, each claim's values, verdicts and
``shift_in_margins`` = |value_b − value_a| / margin_a (below 1: the move fits inside the claim's own noise band),
the largest relative difference of the paper's ``metrics.json`` numbers, and how far the training curves
(the ``loss`` column of every CSV under ``results/<paper>/train/``, of LoRA-α's ``<stage>/<task>/curves.csv`` and of
the foundation's ``train_log.csv``) moved:
the largest relative difference at any step and at the last step.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def claim_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One claim row of each run → their comparison (values None when a run could not compute one)."""
    va, vb, margin = _number(a.get("value")), _number(b.get("value")), _number(a.get("margin"))
    delta = None if va is None or vb is None else vb - va
    shift = None if delta is None or not margin else abs(delta) / margin
    return {"verdict_a": a["verdict"], "verdict_b": b["verdict"], "flipped": a["verdict"] != b["verdict"],
            "value_a": va, "value_b": vb, "delta": delta, "margin_a": margin, "shift_in_margins": shift}


def metrics_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Largest relative difference over the numbers both ``metrics.json`` files hold (not the 0/1
    ``<claim>_reproduced`` flags: verdicts are compared row by row)."""
    shared = sorted(k for k in set(a) & set(b) if not k.endswith("_reproduced"))
    worst, key = 0.0, None
    for k in shared:
        x, y = _number(a[k]), _number(b[k])
        if x is None or y is None:
            continue
        rel = abs(y - x) / max(abs(x), 1e-12)
        if rel > worst:
            worst, key = rel, k
    return {"compared": len(shared), "max_relative_difference": worst, "at": key}


def curves_diff(folder_a: Path, folder_b: Path) -> dict[str, Any] | None:
    """Training-loss curves present in both folders (same relative path, same steps): the largest relative
    difference at any step and at the last step, and which curve has it. None when there are none."""
    import pandas as pd

    found = sorted({*folder_a.glob("train/**/*.csv"), *folder_a.glob("*/*/curves.csv")})  # LoRA: <stage>/<task>/
    names = [p.relative_to(folder_a) for p in found]
    names += [Path("train_log.csv")] if (folder_a / "train_log.csv").is_file() else []
    worst = {"any_step": 0.0, "last_step": 0.0}
    where = {"any_step": None, "last_step": None}
    compared = 0
    for name in names:
        if not (folder_b / name).is_file():
            continue
        a, b = pd.read_csv(folder_a / name), pd.read_csv(folder_b / name)
        if "loss" not in a or "loss" not in b or len(a) != len(b) or len(a) == 0:
            continue
        rel = ((b["loss"] - a["loss"]).abs() / a["loss"].abs().clip(lower=1e-12)).to_numpy()
        compared += 1
        for key, value in (("any_step", float(rel.max())), ("last_step", float(rel[-1]))):
            if value > worst[key]:
                worst[key], where[key] = value, str(name)
    if not compared:
        return None
    return {"curves": compared, "max_relative_difference": worst, "at": where}


def diff_results(results_a: Path, results_b: Path, papers: list[str] | None = None) -> dict[str, Any]:
    """Compare every paper ledger found in both folders, or only ``papers`` (raises FileNotFoundError when there
    is none)."""
    out: dict[str, Any] = {"a": str(results_a), "b": str(results_b), "papers": {}}
    found = sorted(p.parent.name for p in Path(results_a).glob("*/claims.json"))
    unknown = sorted(set(papers or ()) - set(found))
    if unknown:
        raise ValueError(f"--papers {unknown}: no ledger in {results_a}; its papers are {found}")
    for ledger_a in sorted(Path(results_a).glob("*/claims.json")):
        paper = ledger_a.parent.name
        if papers is not None and paper not in papers:
            continue
        ledger_b = Path(results_b) / paper / "claims.json"
        if not ledger_b.is_file():
            continue
        rows_a = {r["id"]: r for r in json.loads(ledger_a.read_text())["claims"]}
        rows_b = {r["id"]: r for r in json.loads(ledger_b.read_text())["claims"]}
        if set(rows_a) != set(rows_b):
            raise ValueError(f"{paper}: the two ledgers have different claims "
                             f"(only in A: {sorted(set(rows_a) - set(rows_b))}, only in B: "
                             f"{sorted(set(rows_b) - set(rows_a))}); compare runs of the same code")
        claims = {cid: claim_diff(rows_a[cid], rows_b[cid]) for cid in rows_a}
        shifts = [c["shift_in_margins"] for c in claims.values() if c["shift_in_margins"] is not None]
        paper_out = {"claims": claims, "flips": sorted(c for c, d in claims.items() if d["flipped"]),
                     "max_shift_in_margins": max(shifts, default=None)}
        metrics_a, metrics_b = ledger_a.parent / "metrics.json", ledger_b.parent / "metrics.json"
        if metrics_a.is_file() and metrics_b.is_file():
            paper_out["metrics"] = metrics_diff(json.loads(metrics_a.read_text()), json.loads(metrics_b.read_text()))
        curves = curves_diff(ledger_a.parent, ledger_b.parent)
        if curves:
            paper_out["training_curves"] = curves
        out["papers"][paper] = paper_out
    foundation = curves_diff(Path(results_a) / "foundation", Path(results_b) / "foundation")
    if foundation:
        out["foundation_training_curves"] = foundation
    if not out["papers"]:
        raise FileNotFoundError(f"no paper has a claims.json in both {results_a} and {results_b}")
    out["flips"] = sum(len(p["flips"]) for p in out["papers"].values())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmrepro.analysis.ledger_diff", description=__doc__.split("\n")[0])
    parser.add_argument("results_a", type=Path)
    parser.add_argument("results_b", type=Path)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--papers", nargs="+", metavar="PAPER", help="compare only these papers (default: every "
                        "paper with a ledger in both; e.g. when run B reran some pipelines only)")
    args = parser.parse_args(argv)
    text = json.dumps(diff_results(args.results_a, args.results_b, args.papers), indent=1, sort_keys=True) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
