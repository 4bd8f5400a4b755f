"""Claims ledger: verdict rules, ledger rows, README rendering, and the committed README in sync."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmrepro.analysis import claims
from lmrepro.analysis.claims import Claim, build_ledger, render_markdown, update_readme, verdict

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value,op,threshold,margin,expected", [
    (0.5, ">", 0.0, 0.1, "reproduced"),
    (0.05, ">", 0.0, 0.1, "inconclusive"),
    (-0.05, ">", 0.0, 0.1, "inconclusive"),
    (-0.5, ">", 0.0, 0.1, "not reproduced"),
    (0.01, "<", 0.05, 0.01, "reproduced"),
    (0.055, "<", 0.05, 0.01, "inconclusive"),
    (0.2, "<", 0.05, 0.01, "not reproduced"),
    (1.0, ">=", 1.0, 0.0, "reproduced"),
    (1.0, "<=", 1.0, 0.0, "reproduced"),
    (math.nan, ">", 0.0, 0.0, "inconclusive"),
    (None, "<", 0.0, 0.0, "inconclusive"),
])
def test_verdict_rules(value, op, threshold, margin, expected):
    assert verdict(value, Claim("s", "m", op, threshold, margin)) == expected


def test_claim_rejects_bad_criteria():
    with pytest.raises(ValueError, match="choose one of"):
        Claim("s", "m", "==", 0.0)
    with pytest.raises(ValueError, match="margin"):
        Claim("s", "m", "<", 0.0, -1.0)


def test_ledger_rows_need_a_value_for_every_claim():
    crit = {"a": Claim("A holds", "ma", ">", 0.0), "b": Claim("B holds", "mb", "<", 1.0)}
    rows = build_ledger(crit, {"a": 1.0, "b": float("nan")}, {"a": {"x": 1}})
    assert [r["verdict"] for r in rows] == ["reproduced", "inconclusive"]
    assert rows[1]["value"] is None and rows[0]["evidence"] == {"x": 1}
    with pytest.raises(KeyError, match="no value computed"):
        build_ledger(crit, {"a": 1.0})


def test_readme_rendering_between_markers(tmp_path):
    ledger_path = claims.write_ledger(tmp_path / "claims.json", "xformer", "smoke",
                                      build_ledger({"c1": Claim("X wins", "gap", ">", 0.0)}, {"c1": 0.5}))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- claims:xformer -->\nold\n<!-- /claims:xformer -->\nend\n")
    assert update_readme(readme, {"xformer": ledger_path}) is True
    text = readme.read_text()
    assert "| c1 | X wins | 0.5 | `gap > 0` | **reproduced** |" in text and text.endswith("end\n")
    assert update_readme(readme, {"xformer": ledger_path}) is False
    with pytest.raises(ValueError, match="markers"):
        update_readme(readme, {"hybrid_attention": ledger_path})
    assert "| # | claim |" in render_markdown(json.loads(ledger_path.read_text()))


def test_committed_readme_shows_the_committed_ledgers(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert claims.main(["--check"]) == 0
