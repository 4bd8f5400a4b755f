"""Comparing two runs' ledgers (lmrepro.analysis.ledger_diff) on ledgers written by the real publish()."""

import json
import subprocess
import sys

import pytest

from lmrepro.analysis.claims import Claim, publish
from lmrepro.analysis.ledger_diff import diff_results

CRITERIA = {
    "gap": Claim(statement="X beats the baseline", metric="gap", op="<", threshold=0.0, margin=0.05),
    "ratio": Claim(statement="ratio above one", metric="ratio", op=">", threshold=1.0, margin=0.1),
}


def run(root, gap, ratio, paper="paper_a"):
    publish(root / paper, paper, "laptop", CRITERIA, {"gap": gap, "ratio": ratio})
    return root


def test_flips_and_shifts_against_the_first_runs_margin(tmp_path):
    a = run(tmp_path / "a", gap=-0.08, ratio=1.5)
    b = run(tmp_path / "b", gap=-0.04, ratio=1.52)  # gap moves 0.04 = 0.8 margins: reproduced -> inconclusive
    out = diff_results(a, b)
    paper = out["papers"]["paper_a"]
    assert out["flips"] == 1 and paper["flips"] == ["gap"]
    gap = paper["claims"]["gap"]
    assert (gap["verdict_a"], gap["verdict_b"]) == ("reproduced", "inconclusive")
    assert gap["shift_in_margins"] == pytest.approx(0.04 / 0.05)
    assert paper["claims"]["ratio"]["shift_in_margins"] == pytest.approx(0.02 / 0.1)
    assert paper["max_shift_in_margins"] == pytest.approx(0.8)
    # metrics.json numbers: the largest relative difference is the gap's (0.04 / 0.08).
    assert paper["metrics"]["max_relative_difference"] == pytest.approx(0.5)
    assert paper["metrics"]["at"] == "gap"


def test_identical_runs_and_the_command_line(tmp_path):
    a, b = run(tmp_path / "a", -0.08, 1.5), run(tmp_path / "b", -0.08, 1.5)
    cli = subprocess.run([sys.executable, "-m", "lmrepro.analysis.ledger_diff", str(a), str(b), "--out",
                          str(tmp_path / "diff.json")], capture_output=True, text=True, check=True)
    out = json.loads(cli.stdout)
    assert out == json.loads((tmp_path / "diff.json").read_text())
    assert out["flips"] == 0 and out["papers"]["paper_a"]["max_shift_in_margins"] == 0.0


def test_papers_limits_the_comparison(tmp_path):
    a, b = run(tmp_path / "a", -0.08, 1.5), run(tmp_path / "b", -0.04, 1.5)
    for root, gap in ((a, -0.08), (b, -0.08)):
        run(root, gap, 1.5, paper="paper_b")
    assert set(diff_results(a, b)["papers"]) == {"paper_a", "paper_b"}
    only = diff_results(a, b, papers=["paper_b"])
    assert set(only["papers"]) == {"paper_b"} and only["flips"] == 0  # paper_a's flip is left out
    with pytest.raises(ValueError, match=r"--papers \['paper_c'\]: no ledger .* are \['paper_a', 'paper_b'\]"):
        diff_results(a, b, papers=["paper_b", "paper_c"])


def test_mismatched_or_missing_ledgers_are_refused(tmp_path):
    a = run(tmp_path / "a", -0.08, 1.5)
    with pytest.raises(FileNotFoundError, match="no paper has a claims.json in both"):
        diff_results(a, tmp_path / "empty")
    b = tmp_path / "b"
    publish(b / "paper_a", "paper_a", "laptop", {"gap": CRITERIA["gap"]}, {"gap": -0.08})
    with pytest.raises(ValueError, match=r"only in A: \['ratio'\]"):
        diff_results(a, b)


def test_training_curves_are_compared_step_by_step(tmp_path):
    a, b = run(tmp_path / "a", -0.08, 1.5), run(tmp_path / "b", -0.08, 1.5)
    for root, last in ((a, 2.0), (b, 2.02)):
        curve = root / "paper_a" / "train" / "x" / "s1.csv"
        curve.parent.mkdir(parents=True)
        curve.write_text(f"step,loss\n1,4.0\n2,{last}\n")
        (root / "paper_a" / "train" / "x" / "notes.csv").write_text("step,other\n1,0\n")  # no loss column: skipped
    curves = diff_results(a, b)["papers"]["paper_a"]["training_curves"]
    assert curves["curves"] == 1 and curves["at"]["last_step"] == "train/x/s1.csv"
    assert curves["max_relative_difference"]["last_step"] == pytest.approx(0.01)
    assert curves["max_relative_difference"]["any_step"] == pytest.approx(0.01)


def test_committed_cross_cpu_record_matches_the_committed_ledgers():
    """results/cross_cpu/avx2_rerun.json (a rerun on another CPU path) must describe the committed verdicts —
    a criteria change that is not carried into it makes it stale — and, with noise margins on the noise's upper
    confidence bound, it flips none of them."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    record = json.loads((root / "results/cross_cpu/avx2_rerun.json").read_text())
    for paper, diff in record["papers"].items():
        rows = json.loads((root / "results" / paper / "claims.json").read_text())["claims"]
        ledger = {r["id"]: r["verdict"] for r in rows}
        assert {c: d["verdict_a"] for c, d in diff["claims"].items()} == ledger, paper
    assert record["flips"] == 0
