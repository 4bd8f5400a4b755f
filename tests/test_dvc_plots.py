"""Every committed training curve is a DVC plot, and the LoRA α* plot draws a line per task: checked with the real
`dvc plots show` on the committed results (no data/ needed: the CSVs are in git)."""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

from lmrepro import yaml12

ROOT = Path(__file__).resolve().parents[1]


def shown(tmp_path) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run(["dvc", "plots", "show", "--json", "-o", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)["data"]


def declared_curves() -> dict[str, list[str]]:
    """Top-level plots of the pipelines' dvc.yaml files: plot id → its CSVs (relative to the project root)."""
    out = {}
    for paper in ("hybrid_attention", "xformer"):
        folder = ROOT / "pipelines" / paper
        for entry in yaml12.load(folder / "dvc.yaml")["plots"]:
            (plot_id, spec), = entry.items()
            out[plot_id] = [os.path.relpath((folder / f).resolve(), ROOT) for f in spec["y"]]
    return out


def test_training_curves_and_alpha_star_plots(tmp_path):
    curves = declared_curves()
    committed = set(glob.glob("results/hybrid_attention/train/*/*.csv", root_dir=ROOT)
                    + glob.glob("results/xformer/train/*/*.csv", root_dir=ROOT))
    assert committed and {f for files in curves.values() for f in files} == committed  # none left out or stale
    data = shown(tmp_path)
    for plot_id, files in curves.items():
        rows = sum(len((ROOT / f).read_text().splitlines()) - 1 for f in files)
        assert len(data[plot_id][0]["content"]["data"]["values"]) == rows, plot_id  # DVC read every curve
    stars = data["results/lora_alpha/alpha_star.csv"][0]["content"]
    assert stars["encoding"]["color"]["field"] == "task"  # a line per task, not one zig-zag through both
    assert {v["task"] for v in stars["data"]["values"]} == {"domain", "reasoning"}
