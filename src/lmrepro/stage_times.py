"""``python -m lmrepro.stage_times [--bench]``: every DVC stage's wall time, CPU use and fixed overhead, read from
the executed notebooks the stages wrote, as one JSON object — so README timings can be checked and scaled to
another machine.

A stage is found through the lock files (``dvc.lock``, ``pipelines/*/dvc.lock``): the executed notebook among its
outputs. Per stage: ``wall_s`` (papermill's duration), ``cells_s`` (sum of the cells' durations), ``overhead_s``
(wall − cells: kernel start, papermill), ``setup_s`` (the cells up to the one calling ``setup(``: parameters,
imports, configuration), and, when the stage ran through ``lmrepro.run_notebook`` since it records them, ``cpu_s``
and ``cpu_utilization`` (CPU seconds ÷ wall seconds ÷ cores: 1.0 = every core busy). ``--bench`` adds the machine's
training throughput (tokens/s of the laptop full-attention model, as ``make bench`` measures it) so timings from
two machines can be compared. Totals: ``wall_s`` (all stages), ``wall_s_by_lock`` (per pipeline), ``fixed_cost_s``
(overhead + setup over all stages: what every stage pays before its work starts).

``render_markdown`` turns this into the README's timing table (between ``<!-- timings -->`` markers, written by
``python -m lmrepro.analysis.claims`` with the ledgers), so every time the README states is read from the executed
notebooks and nowhere typed in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nbformat

from . import yaml12

LOCKS = ("dvc.lock", "pipelines/*/dvc.lock")


def notebook_stages(root: Path) -> dict[Path, tuple[str, str]]:
    """{executed notebook: (lock file, stage name)} from every lock file under ``root``."""
    found = {}
    for pattern in LOCKS:
        for lock in sorted(root.glob(pattern)):
            stages = (yaml12.load(lock) or {}).get("stages", {})
            for name, stage in stages.items():
                for out in stage.get("outs", []):
                    if str(out.get("path", "")).endswith(".ipynb"):
                        found[root / out["path"]] = (str(lock.relative_to(root)), name)
    return found


def stage_row(path: Path) -> dict:
    """Times of one executed notebook (module doc)."""
    nb = nbformat.read(str(path), as_version=4)
    pm = nb.metadata.get("papermill", {})
    durations = [float(c.metadata.get("papermill", {}).get("duration") or 0.0) for c in nb.cells]
    setup_end = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "setup(" in c.source),
                     len(nb.cells) - 1)
    wall = float(pm.get("duration") or 0.0)
    row = {"wall_s": round(wall, 2), "cells_s": round(sum(durations), 2),
           "overhead_s": round(wall - sum(durations), 2), "setup_s": round(sum(durations[:setup_end + 1]), 2),
           "finished": pm.get("end_time")}
    res = nb.metadata.get("lmrepro", {}).get("resources")
    if res:
        row.update(cpu_s=res["cpu_s"], cores=res["cores"],
                   cpu_utilization=round(res["cpu_s"] / res["wall_s"] / res["cores"], 3) if res["wall_s"] else None)
    return row


def collect(root: Path) -> dict:
    """Every stage with an executed notebook: rows, per-pipeline and overall totals."""
    rows = []
    for path, (lock, stage) in sorted(notebook_stages(root).items(), key=lambda kv: kv[1]):
        if path.is_file():
            rows.append({"lock": lock, "stage": stage, "notebook": str(path.relative_to(root)), **stage_row(path)})
    totals: dict[str, float] = {}
    for r in rows:
        totals[r["lock"]] = round(totals.get(r["lock"], 0.0) + r["wall_s"], 2)
    cpu = [r for r in rows if "cpu_s" in r]
    return {"stages": rows, "wall_s_by_lock": totals, "wall_s": round(sum(r["wall_s"] for r in rows), 2),
            "fixed_cost_s": round(sum(r["overhead_s"] + r["setup_s"] for r in rows), 2),
            "cpu_utilization": (round(sum(r["cpu_s"] for r in cpu) / sum(r["wall_s"] * r["cores"] for r in cpu), 3)
                                if cpu else None),
            "stages_with_cpu": len(cpu)}


def paper_of(lock: str) -> str:
    """``pipelines/<paper>/dvc.lock`` → paper; the root lock holds the foundation stages."""
    parts = Path(lock).parts
    return parts[1] if len(parts) == 3 and parts[0] == "pipelines" else "foundation"


def render_markdown(collected: dict) -> str:
    """Per paper: stages, wall minutes and when they last ran; then every stage in a collapsed table."""
    papers: dict[str, list[dict]] = {}
    for row in collected["stages"]:
        papers.setdefault(paper_of(row["lock"]), []).append(row)
    day = lambda r: (r["finished"] or "")[:10]  # noqa: E731
    lines = ["| paper | stages | wall time (min) | stages last ran |", "| --- | ---: | ---: | --- |"]
    for paper, rows in papers.items():
        days = sorted({day(r) for r in rows} - {""})
        ran = days[0] if len(days) == 1 else f"{days[0]} … {days[-1]}" if days else "?"
        lines.append(f"| {paper} | {len(rows)} | {sum(r['wall_s'] for r in rows) / 60:.1f} | {ran} |")
    lines.append(f"| **all** | {len(collected['stages'])} | **{collected['wall_s'] / 60:.1f}** | |")
    lines += ["", f"Fixed cost (kernel start, papermill, the notebooks' setup cells): "
                  f"{collected['fixed_cost_s'] / 60:.1f} min over all stages.", "",
              "<details><summary>every stage</summary>", "",
              "| paper | stage | wall (s) | CPU use (1 = every core) | finished |", "| --- | --- | ---: | ---: | --- |"]
    for paper, rows in papers.items():
        for r in rows:
            use = f"{r['cpu_utilization']:.2f}" if r.get("cpu_utilization") is not None else ""
            lines.append(f"| {paper} | `{r['stage']}` | {r['wall_s']:.0f} | {use} | {day(r)} |")
    return "\n".join(lines + ["", "</details>"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmrepro.stage_times", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--bench", action="store_true", help="also measure this machine's training tokens/s")
    args = parser.parse_args(argv)
    out = collect(args.root)
    if args.bench:
        from .bench import laptop_tokens_per_second

        out["bench_tokens_per_s"] = round(laptop_tokens_per_second(), 1)
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
