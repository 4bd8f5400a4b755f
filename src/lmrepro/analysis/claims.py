"""Claims ledger: each paper claim → a metric computed from our numbers → a verdict by a criterion fixed in
``pipelines/<paper>/claims.yaml`` before the run.

Verdicts (:data:`VERDICTS`):

* ``reproduced`` — the metric satisfies ``op threshold`` by more than ``margin``;
* ``not reproduced`` — it fails by more than ``margin``;
* ``inconclusive`` — inside the margin, or the metric could not be computed (NaN / missing);
* ``not testable at this scale`` — the claim's precondition, stated before the run, failed (or could not be
  computed): the setup could not have shown the effect, so neither verdict above would be evidence;
* ``holds by construction`` — the claim is an identity of our design (e.g. an accounting ratio that parameter
  matching forces); it is reported, and checked, but it is not evidence.

Each row also records where its margin comes from (``margin_source``, and the measured noise value when the
report computes one: ``noise_metric``; with ``noise_dof``, the margin uses the noise's 95% upper confidence
bound, :func:`noise_upper_factor`) and every criterion changed after results were seen (``revisions``:
date, old criterion, old verdict, why) and how robust its verdict is (``edge_distance_noise``: the distance to the
nearest band edge in measured noise units; below 1 the table marks the verdict *fragile*: another seed or CPU type
can flip it). :func:`publish` writes ``claims.json``, ``claims.md`` and
``metrics.json`` the same way for every paper.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import yaml12

from ..config.schema_tools import ConfigError, bounded, build

VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not testable at this scale", "holds by construction")
OPS = {">": lambda d: d, ">=": lambda d: d, "<": lambda d: -d, "<=": lambda d: -d}
CLAIMS_FILE = "claims.yaml"


@dataclass(frozen=True, kw_only=True)
class Precondition:
    """What must hold before the claim can be tested at all (e.g. Full's needle accuracy ≥ 0.8)."""

    statement: str
    metric: str
    op: str = bounded(choices=tuple(OPS))
    threshold: float

    def holds(self, value: float | None) -> bool:
        """No margin: a precondition either held or it did not (a missing value did not)."""
        if value is None or not math.isfinite(value):
            return False
        signed = OPS[self.op](value - self.threshold)
        return signed > 0 or (self.op in (">=", "<=") and signed == 0)


@dataclass(frozen=True, kw_only=True)
class Revision:
    """A criterion changed after its results were seen: what it was, what it gave, and why it changed."""

    date: str
    old_criterion: str
    old_verdict: str = bounded(choices=VERDICTS)
    why: str


@dataclass(frozen=True)
class Claim:
    """One criterion. ``metric`` names the value the paper's report computes; the claim holds when
    ``value op threshold`` with room ``margin`` (same units as the metric)."""

    statement: str
    metric: str
    op: str = bounded(choices=tuple(OPS))
    threshold: float
    margin: float = bounded(0.0, min=0.0)
    margin_source: str = "fixed before the first run as a round number (no noise estimate)"
    noise_metric: str | None = None
    margin_noise_multiple: float | None = bounded(None, min=0.0, doc="margin = this × the measured noise_metric")
    margin_floor: float = bounded(0.0, min=0.0, doc="the smallest noise-based margin (a metric measured on few "
                                  "samples can agree exactly across seeds)")
    noise_dof: str | None = bounded(None, doc="metric holding the degrees of freedom of noise_metric (a standard "
                                    "deviation from few seeds); the margin then uses the noise's one-sided 95% upper "
                                    "confidence bound, noise × noise_upper_factor(dof)")
    precondition: Precondition | None = None
    by_construction: bool = False
    revisions: list[Revision] = field(default_factory=list)

    def __post_init__(self):
        # Built in code (tests, notebooks) as well as from YAML: the same rules either way.
        if self.op not in OPS:
            raise ValueError(f"op {self.op!r} is not allowed; choose one of {list(OPS)}")
        if not (self.margin >= 0 or math.isnan(self.margin)):
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.margin_noise_multiple is not None and (self.noise_metric is None or self.margin_noise_multiple <= 0):
            raise ValueError("margin_noise_multiple needs a noise_metric and must be > 0 (the margin is that "
                             f"multiple of the measured noise); got {self.margin_noise_multiple!r}")
        if self.noise_dof is not None and self.margin_noise_multiple is None:
            raise ValueError(f"noise_dof {self.noise_dof!r} needs margin_noise_multiple (a noise-based margin)")

    def with_noise(self, noise: float | None, dof: float | None = None) -> "Claim":
        """This claim with its margin taken from the measured ``noise`` when ``margin_noise_multiple`` is set
        (NaN when the noise could not be measured: the verdict is then inconclusive). With ``noise_dof`` set,
        ``dof`` is the noise estimate's degrees of freedom and the margin uses its upper confidence bound (NaN
        without a usable ``dof``)."""
        if self.margin_noise_multiple is None:
            return self
        if self.noise_dof is not None:
            noise = None if noise is None else noise * noise_upper_factor(dof)
        if noise is None or not math.isfinite(noise):
            return replace(self, margin=math.nan)
        return replace(self, margin=max(self.margin_floor, self.margin_noise_multiple * noise))

    @property
    def criterion(self) -> str:
        head = f"{self.metric} {self.op} {self.threshold:g}"
        if self.margin_noise_multiple is not None:
            noise = f"{self.margin_noise_multiple:g}·{self.noise_metric}"
            if self.noise_dof is not None:
                noise += f"·u95({self.noise_dof})"
            if self.margin_floor:
                noise = f"max({self.margin_floor:g}, {noise})"
            return head + f" ± {noise} (= {self.margin:.3g})"
        return head + (f" ± {self.margin:g}" if self.margin else "")


def noise_upper_factor(dof: float | None) -> float:
    """u95(ν) = √(ν / χ²₀.₀₅(ν)): a standard deviation ``s`` estimated with ν degrees of freedom (e.g. 3 seeds: ν = 2;
    k pooled groups of n: ν = k(n − 1)) lies below the true σ by more than this factor with only 5% probability
    (νs²/σ² ~ χ²(ν)), so ``s·u95(ν)`` is σ's one-sided 95% upper confidence bound (u95(2) = 4.4, u95(4) = 2.4,
    u95(10) = 1.6). A margin built on it still scales with ``s``; it is wider, so that it covers the noise levels
    ``s``'s own sampling error allows. ν may be fractional; NaN when it is missing or below 1."""
    if dof is None or not math.isfinite(dof) or dof < 1:
        return math.nan
    from scipy.stats import chi2

    return math.sqrt(dof / chi2.ppf(0.05, dof))


def verdict(value: float | None, claim: Claim, precondition_held: bool | None = None) -> str:
    """The verdict of ``value`` under ``claim``; ``precondition_held`` False → not testable at this scale."""
    if claim.precondition is not None and not precondition_held:
        return "not testable at this scale"
    if value is None or not math.isfinite(value) or math.isnan(claim.margin):
        return "inconclusive"
    signed = OPS[claim.op](value - claim.threshold)  # > 0: on the claim's side of the threshold
    if (claim.op in (">=", "<=") and signed == 0 and claim.margin == 0) or signed > claim.margin:
        return "holds by construction" if claim.by_construction else "reproduced"
    if signed < -claim.margin:
        return "not reproduced"
    return "inconclusive"


def edge_distance(value: float | None, claim: Claim, noise: float | None) -> float | None:
    """How far ``value`` lies from the nearest edge of its verdict band (threshold ± margin), in units of the
    measured ``noise``; None without a finite value, margin or positive noise. Below 1, a rerun with other float
    rounding (another CPU type) or another seed can move the value across the edge and flip the verdict."""
    if value is None or noise is None or not math.isfinite(value) or not math.isfinite(claim.margin) or noise <= 0:
        return None
    signed = OPS[claim.op](value - claim.threshold)
    return min(abs(signed - claim.margin), abs(signed + claim.margin)) / noise


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def build_ledger(claims: dict[str, Claim], values: dict[str, float | None],
                 evidence: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per claim. ``values`` maps metric names (the claims' metrics, their preconditions' and noise
    metrics) to numbers; ``evidence`` maps metric names to supporting numbers. A claim's own metric must be
    present (NaN if unmeasurable), so a report cannot silently skip one."""
    missing = sorted({c.metric for c in claims.values()} - set(values))
    if missing:
        raise KeyError(f"no value computed for metrics {missing}; every claim needs a value (use NaN if unmeasurable)")
    rows = []
    for cid, claim in claims.items():
        noise = _finite(values.get(claim.noise_metric)) if claim.noise_metric else None
        dof = _finite(values.get(claim.noise_dof)) if claim.noise_dof else None
        claim = claim.with_noise(noise, dof)
        value = _finite(values[claim.metric])
        pre = claim.precondition
        pre_value = _finite(values.get(pre.metric)) if pre else None
        held = pre.holds(pre_value) if pre else None
        rows.append({
            "id": cid, "statement": claim.statement, "metric": claim.metric, "op": claim.op,
            "threshold": claim.threshold, "margin": _finite(claim.margin), "criterion": claim.criterion, "value": value,
            "verdict": verdict(value, claim, held),
            "precondition": None if pre is None else {**asdict(pre), "value": pre_value, "held": held},
            "noise": {"source": claim.margin_source, "metric": claim.noise_metric, "value": noise,
                      "multiple": claim.margin_noise_multiple,
                      **({"dof": dof, "upper_95": None if noise is None else noise * noise_upper_factor(dof)}
                         if claim.noise_dof else {})},
            "edge_distance_noise": None if pre is not None and not held else edge_distance(value, claim, noise),
            "by_construction": claim.by_construction,
            "revisions": [asdict(r) for r in claim.revisions],
            "evidence": (evidence or {}).get(claim.metric, {}),
        })
    return rows


def _strict_json(obj: Any) -> Any:
    """NaN / ±inf → None (JSON has no such numbers); numpy scalars → Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_ledger(path: str | Path, paper: str, profile: str, rows: list[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ledger = _strict_json({"paper": paper, "profile": profile, "claims": rows})
    path.write_text(json.dumps(ledger, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(ledger: dict[str, Any]) -> str:
    """A Markdown table of a ledger (as written by :func:`write_ledger`)."""
    lines = ["| # | claim | our value | criterion | margin from | verdict |", "| --- | --- | --- | --- | --- | --- |"]
    for row in ledger["claims"]:
        value = "n/a" if row["value"] is None else f"{row['value']:.4g}"
        noise = row.get("noise") or {}
        source = noise.get("source", "")
        if noise.get("value") is not None:
            upper, dof = noise.get("upper_95"), noise.get("dof")
            known = upper is not None and dof is not None and math.isfinite(upper)
            source += f" (measured {noise['value']:.3g}" + (
                f", ν = {dof:g}, upper bound {upper:.3g})" if known else ")")
        notes = []
        pre = row.get("precondition")
        if pre:
            shown = "n/a" if pre["value"] is None else f"{pre['value']:.3g}"
            notes.append(f"precondition {pre['metric']} {pre['op']} {pre['threshold']:g}: {shown}, "
                         + ("held" if pre["held"] else "failed"))
        if row.get("revisions"):
            notes.append(f"{len(row['revisions'])} revision(s) after results were seen")
        edge = row.get("edge_distance_noise")
        if edge is not None and edge < 1:
            notes.append(f"fragile: {edge:.2g} noise SD from a band edge")
        verdict_cell = f"**{row['verdict']}**" + (f" ({'; '.join(notes)})" if notes else "")
        lines.append(f"| {row['id']} | {_cell(row['statement'])} | {value} | `{row['criterion']}` | {_cell(source)} "
                     f"| {_cell(verdict_cell)} |")
    return "\n".join(lines)


def load_criteria(path: str | Path) -> dict[str, Claim]:
    """``pipelines/<paper>/claims.yaml`` → {claim id: Claim}; a ConfigError names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found (the paper's claim criteria)")
    try:
        raw = yaml12.load(path) or {}
    except yaml12.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: expected a mapping of claim id → criterion")
    return {str(cid): build(Claim, spec, f"{path.name}:{cid}") for cid, spec in raw.items()}


def metrics_of(rows: list[dict[str, Any]], values: dict[str, float | None]) -> dict[str, float | int]:
    """Flat, finite metrics for ``dvc metrics``: every finite value and ``<id>_reproduced`` (0/1)."""
    metrics = {k: round(float(v), 6) for k, v in values.items() if _finite(v) is not None}
    metrics.update({f"{r['id']}_reproduced": int(r["verdict"] == "reproduced") for r in rows})
    return metrics


def publish(results: str | Path, paper: str, profile: str, criteria: dict[str, Claim],
            values: dict[str, float | None], evidence: dict[str, dict[str, Any]] | None = None) -> str:
    """Judge every claim of ``paper`` and write ``claims.json``, ``claims.md`` and ``metrics.json`` into
    ``results``; returns the Markdown table (for the report notebook)."""
    results = Path(results)
    rows = build_ledger(criteria, values, evidence)
    path = write_ledger(results / "claims.json", paper, profile, rows)
    table = render_markdown(json.loads(path.read_text()))
    (results / "claims.md").write_text(f"_{profile} profile_\n\n{table}\n")
    (results / "metrics.json").write_text(json.dumps(metrics_of(rows, values), indent=2, sort_keys=True) + "\n")
    return table


def replace_block(text: str, name: str, body: str, where: str = "README.md") -> str:
    """``text`` with the part between ``<!-- name -->`` and ``<!-- /name -->`` replaced by ``body``."""
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    if not pattern.search(text):
        raise ValueError(f"{where}: no <!-- {name} --> … <!-- /{name} --> markers")
    return pattern.sub(lambda _: f"<!-- {name} -->\n{body}\n<!-- /{name} -->", text)


def update_readme(readme: str | Path, ledgers: dict[str, str | Path], timings: str | None = None) -> bool:
    """Replace the text between ``<!-- claims:<paper> -->`` and ``<!-- /claims:<paper> -->`` markers in the
    README with each paper's rendered ledger, and, given ``timings`` (``stage_times.render_markdown``), the
    ``<!-- timings -->`` block. Returns True if the file changed."""
    readme = Path(readme)
    text = original = readme.read_text()
    for paper, path in ledgers.items():
        ledger = json.loads(Path(path).read_text())
        text = replace_block(text, f"claims:{paper}", f"_{ledger['profile']} profile_\n\n{render_markdown(ledger)}",
                             str(readme))
    if timings is not None:
        text = replace_block(text, "timings", timings, str(readme))
    readme.write_text(text)
    return text != original


def summary(ledgers: dict[str, str | Path]) -> dict[str, Any]:
    """Verdict counts per paper and in all, from the committed ledgers (results/summary.json)."""
    out: dict[str, Any] = {"papers": {}, "total": {v: 0 for v in VERDICTS}}
    for paper, path in ledgers.items():
        ledger = json.loads(Path(path).read_text())
        counts = {v: 0 for v in VERDICTS}
        for row in ledger["claims"]:
            counts[row["verdict"]] += 1
            out["total"][row["verdict"]] += 1
        out["papers"][paper] = {"profile": ledger["profile"], "claims": len(ledger["claims"]), **counts}
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m lmrepro.analysis.claims [--check] [--summary PATH]``: render every paper's ledger and the stage
    timings (read from the executed notebooks, ``lmrepro.stage_times``) into README.md (between their markers)
    and optionally write the verdict counts; with --check, only report whether README.md is up to date (exit 1
    if not)."""
    import argparse
    import shutil
    import tempfile

    from .. import stage_times
    from ..config import paper_schemas
    from ..paths import project_paths

    parser = argparse.ArgumentParser(prog="python -m lmrepro.analysis.claims")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--summary", type=Path, help="also write verdict counts (JSON) here")
    args = parser.parse_args(argv)
    paths = project_paths()
    ledgers = {p: paths.results(p) / "claims.json" for p in paper_schemas()
               if (paths.results(p) / "claims.json").is_file()}
    readme = paths.root / "README.md"
    timings = stage_times.render_markdown(stage_times.collect(paths.root))
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "README.md"
            shutil.copy(readme, copy)
            stale = update_readme(copy, ledgers, timings)
        print("README.md claims and timing tables are "
              + ("stale: run python -m lmrepro.analysis.claims" if stale else "up to date"))
        return 1 if stale else 0
    changed = update_readme(readme, ledgers, timings)
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps(summary(ledgers), indent=2, sort_keys=True) + "\n")
    print(f"README.md {'updated' if changed else 'already up to date'} from {sorted(ledgers)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
