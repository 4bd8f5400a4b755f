"""Claims ledger: verdict rules, ledger rows, README rendering, and the committed README in sync."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lmrepro.analysis import claims
from lmrepro.analysis.claims import (Claim, Precondition, Revision, build_ledger, load_criteria,
                                     noise_upper_factor, publish, render_markdown, update_readme, verdict)
from lmrepro.config import ConfigError, paper_schemas

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
    rows = build_ledger(crit, {"ma": 1.0, "mb": float("nan")}, {"ma": {"x": 1}})
    assert [r["verdict"] for r in rows] == ["reproduced", "inconclusive"]
    assert rows[1]["value"] is None and rows[0]["evidence"] == {"x": 1}
    with pytest.raises(KeyError, match="no value computed"):
        build_ledger(crit, {"ma": 1.0})


def test_readme_rendering_between_markers(tmp_path):
    ledger_path = claims.write_ledger(tmp_path / "claims.json", "xformer", "smoke",
                                      build_ledger({"c1": Claim("X wins", "gap", ">", 0.0)}, {"gap": 0.5}))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- claims:xformer -->\nold\n<!-- /claims:xformer -->\nend\n")
    assert update_readme(readme, {"xformer": ledger_path}) is True
    text = readme.read_text()
    assert "| c1 | X wins | 0.5 | `gap > 0` |" in text and "| **reproduced** |" in text and text.endswith("end\n")
    assert update_readme(readme, {"xformer": ledger_path}) is False
    with pytest.raises(ValueError, match="markers"):
        update_readme(readme, {"hybrid_attention": ledger_path})
    assert "| # | claim |" in render_markdown(json.loads(ledger_path.read_text()))


def test_committed_readme_shows_the_committed_ledgers(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert claims.main(["--check"]) == 0


PRE = Precondition(statement="Full retrieves", metric="needle_acc", op=">=", threshold=0.8)


@pytest.mark.parametrize("pre_value,value,expected", [
    (0.9, 1.0, "reproduced"),
    (0.8, -1.0, "not reproduced"),  # >= holds at the threshold
    (0.5, 1.0, "not testable at this scale"),
    (math.nan, 1.0, "not testable at this scale"),  # a precondition that could not be computed did not hold
])
def test_precondition_gates_the_verdict(pre_value, value, expected):
    crit = {"c": Claim("long context helps", "gap", ">", 0.0, 0.1, precondition=PRE)}
    (row,) = build_ledger(crit, {"gap": value, "needle_acc": pre_value})
    assert row["verdict"] == expected
    assert row["precondition"]["held"] is (expected != "not testable at this scale")
    assert row["precondition"]["metric"] == "needle_acc"


def test_by_construction_and_noise_and_revisions_are_recorded(tmp_path):
    rev = Revision(date="2026-11-28", old_criterion="d > 0 ± 0.02", old_verdict="reproduced", why="clamped at 0")
    crit = {"flops": Claim("X needs fewer FLOPs", "ratio", "<", 1.0, 0.005, by_construction=True),
            "loss": Claim("X wins", "gap", "<", 0.0, 0.02, margin_source="3 seeds", noise_metric="seed_se",
                          revisions=[rev])}
    rows = build_ledger(crit, {"ratio": 0.98, "gap": -0.05, "seed_se": 0.007})
    assert [r["verdict"] for r in rows] == ["holds by construction", "reproduced"]
    # an identity that fails is reported as failing, never as "by construction"
    assert build_ledger(crit, {"ratio": 1.2, "gap": 0.0})[0]["verdict"] == "not reproduced"
    assert rows[1]["noise"] == {"source": "3 seeds", "metric": "seed_se", "value": 0.007, "multiple": None}
    assert rows[1]["revisions"][0]["old_verdict"] == "reproduced"
    table = render_markdown({"claims": rows})
    assert "3 seeds (measured 0.007)" in table and "1 revision(s)" in table


@pytest.mark.parametrize("gap,noise,expected", [
    (-0.05, 0.01, "reproduced"),         # beyond 2 × 0.01
    (-0.015, 0.01, "inconclusive"),      # inside 2 × 0.01
    (-0.015, 0.005, "reproduced"),       # the same gap against a quieter measurement
    (0.05, 0.01, "not reproduced"),
    (-0.05, math.nan, "inconclusive"),   # no noise measured: no margin, no verdict
])
def test_margin_is_a_multiple_of_the_measured_noise(gap, noise, expected):
    crit = {"loss": Claim("X wins", "gap", "<", 0.0, margin_source="2 seed standard errors", noise_metric="se",
                          margin_noise_multiple=2.0)}
    (row,) = build_ledger(crit, {"gap": gap, "se": noise})
    assert row["verdict"] == expected
    assert row["margin"] == (None if math.isnan(noise) else pytest.approx(2 * noise))
    assert row["noise"]["multiple"] == 2.0
    assert row["criterion"].startswith("gap < 0 ± 2·se (= ")


@pytest.mark.parametrize("gap,noise,margin,expected", [
    (0.01, 0.0, 0.02, "inconclusive"),     # two seeds that agree exactly: the floor, not a zero margin
    (0.03, 0.0, 0.02, "reproduced"),
    (0.03, 0.02, 0.04, "inconclusive"),    # a larger measured noise wins over the floor
])
def test_noise_margin_has_a_floor(gap, noise, margin, expected):
    crit = {"c": Claim("X helps", "gap", ">", 0.0, noise_metric="se", margin_noise_multiple=2.0, margin_floor=0.02)}
    (row,) = build_ledger(crit, {"gap": gap, "se": noise})
    assert row["margin"] == pytest.approx(margin) and row["verdict"] == expected
    assert row["criterion"] == f"gap > 0 ± max(0.02, 2·se) (= {margin:.3g})"


def test_noise_multiple_needs_a_noise_metric():
    with pytest.raises(ValueError, match="needs a noise_metric"):
        Claim("s", "m", "<", 0.0, margin_noise_multiple=2.0)
    with pytest.raises(ValueError, match="noise_dof 'nu' needs margin_noise_multiple"):
        Claim("s", "m", "<", 0.0, noise_metric="sd", noise_dof="nu")


@pytest.mark.parametrize("dof", [2, 4, 10])
def test_noise_upper_bound_covers_the_true_sigma_95_percent_of_the_time(dof):
    """Simulation as the reference: sample standard deviations of dof + 1 normal draws (σ = 1) times u95(dof)
    stay at or above σ in 95% of 40000 samples (binomial SE 0.0011)."""
    rng = np.random.default_rng(dof)
    s = rng.normal(size=(40_000, dof + 1)).std(axis=1, ddof=1)
    assert (s * noise_upper_factor(dof) >= 1.0).mean() == pytest.approx(0.95, abs=0.005)


def test_noise_upper_factor_needs_a_degree_of_freedom():
    assert noise_upper_factor(1000) == pytest.approx(1.0, abs=0.06)  # a well-measured σ is hardly widened
    for dof in (None, 0, 0.5, math.nan):
        assert math.isnan(noise_upper_factor(dof))


@pytest.mark.parametrize("gap,dof,expected", [
    (-0.05, 10, "reproduced"),     # margin 2 · 0.01 · 1.59 = 0.032
    (-0.03, 10, "inconclusive"),   # beyond 2σ, inside 2 × the upper bound
    (-0.05, 2, "inconclusive"),    # 3 seeds: u95 = 4.4, margin 0.088
    (-0.05, math.nan, "inconclusive"),  # degrees of freedom unknown: no margin, no verdict
])
def test_margin_with_noise_dof_uses_the_upper_confidence_bound(gap, dof, expected):
    crit = {"c": Claim("X wins", "gap", "<", 0.0, noise_metric="sd", margin_noise_multiple=2.0, noise_dof="nu")}
    (row,) = build_ledger(crit, {"gap": gap, "sd": 0.01, "nu": dof})
    assert row["verdict"] == expected
    upper = 0.01 * noise_upper_factor(dof)
    assert row["margin"] == (None if math.isnan(dof) else pytest.approx(2 * upper))
    assert row["criterion"].startswith("gap < 0 ± 2·sd·u95(nu) (= ")
    if not math.isnan(dof):
        assert row["noise"]["dof"] == dof and row["noise"]["upper_95"] == pytest.approx(upper)
        assert f"(measured 0.01, ν = {dof:g}, upper bound {upper:.3g})" in render_markdown({"claims": [row]})


def test_publish_writes_ledger_markdown_and_flat_metrics(tmp_path):
    crit = {"c1": Claim("X wins", "gap", "<", 0.0, 0.01), "c2": Claim("Y", "other", ">", 0.0)}
    table = publish(tmp_path, "xformer", "smoke", crit, {"gap": -0.5, "other": math.nan}, {"gap": {"se": math.inf}})
    ledger = json.loads((tmp_path / "claims.json").read_text())
    assert ledger["paper"] == "xformer" and ledger["profile"] == "smoke"
    assert ledger["claims"][0]["evidence"] == {"se": None}  # strict JSON: no NaN / inf
    assert (tmp_path / "claims.md").read_text() == f"_smoke profile_\n\n{table}\n"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == {"gap": -0.5, "c1_reproduced": 1, "c2_reproduced": 0}


def test_load_criteria_names_the_file_and_key(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text("c1: {statement: s, metric: m, op: '==', threshold: 0}\n")
    with pytest.raises(ConfigError, match=r"^claims\.yaml:c1\.op: '==' is not allowed"):
        load_criteria(path)
    path.write_text("c1: {statement: s, metric: m, op: '<', threshold: 0, revisions: [{date: x}]}\n")
    with pytest.raises(ConfigError, match=r"revisions\[0\]\.old_criterion: missing"):
        load_criteria(path)
    with pytest.raises(ConfigError, match="not found"):
        load_criteria(tmp_path / "none.yaml")


@pytest.mark.parametrize("paper", list(paper_schemas()))
def test_committed_ledger_follows_its_criteria_file(paper):
    """The committed ledger was judged by the committed criteria: same ids, criteria, preconditions, revisions."""
    criteria = load_criteria(ROOT / "pipelines" / paper / "claims.yaml")
    ledger = json.loads((ROOT / "results" / paper / "claims.json").read_text())
    assert [r["id"] for r in ledger["claims"]] == list(criteria)
    for row in ledger["claims"]:
        claim = criteria[row["id"]].with_noise(row["noise"]["value"], row["noise"].get("dof"))  # measured in the run
        assert row["criterion"] == claim.criterion and row["statement"] == claim.statement
        assert len(row["revisions"]) == len(claim.revisions)
        assert row["noise"]["source"] == claim.margin_source
        assert row["verdict"] in claims.VERDICTS


@pytest.mark.parametrize("gap,expected", [
    (-0.05, 3.0),    # 0.03 beyond the reproduced edge (-0.02): 3 noise SDs
    (-0.025, 0.5),   # just past it: a seed or a rounding change can flip it
    (0.0, 2.0),      # mid-band, 0.02 from both edges
    (0.025, 0.5),    # just past the not-reproduced edge
])
def test_edge_distance_marks_fragile_verdicts(gap, expected):
    crit = {"loss": Claim("X wins", "gap", "<", 0.0, margin_noise_multiple=2.0, noise_metric="seed_sd")}
    row = build_ledger(crit, {"gap": gap, "seed_sd": 0.01})[0]
    assert row["edge_distance_noise"] == pytest.approx(expected)
    assert ("fragile" in render_markdown({"claims": [row]})) == (expected < 1)


def test_edge_distance_needs_a_measured_noise_and_a_held_precondition():
    pre = Precondition(statement="learns", metric="acc", op=">=", threshold=0.8)
    crit = {"plain": Claim("round margin", "gap", "<", 0.0, 0.02),
            "gated": Claim("gated", "gap", "<", 0.0, margin_noise_multiple=2.0, noise_metric="sd", precondition=pre)}
    rows = build_ledger(crit, {"gap": -0.021, "sd": 0.01, "acc": 0.1})
    assert [r["edge_distance_noise"] for r in rows] == [None, None]
