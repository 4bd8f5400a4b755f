"""Paper 3 (LoRA-α) pipeline: config validation, the α* fit, claim metrics on hand-made tables, params and stages
(pipelines/lora_alpha/dvc.yaml), the ledger of the committed tables, and the paper-profile path offline on a tiny
HF Llama. The encoding of texts and examples is tested in test_data_sft.py."""

from __future__ import annotations

import copy

import json
import math
import os
import re
from pathlib import Path

os.environ["HF_DATASETS_OFFLINE"] = "1"  # before `datasets` is imported: no test may touch the network
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from lmrepro import yaml12  # noqa: E402

from lmrepro.analysis.claims import Claim, load_criteria, noise_upper_factor  # noqa: E402
from lmrepro.config import ConfigError  # noqa: E402
from lmrepro.config.schema_tools import build  # noqa: E402
from lmrepro.papers.lora_alpha.config import METHODS, TASKS, LoraAlphaConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml12.loads((ROOT / "params.yaml").read_text())
PROFILES = ("smoke", "laptop", "mid", "paper")
PROFILE_PARAMS = {p: yaml12.loads((ROOT / "profiles" / f"{p}.yaml").read_text()) for p in PROFILES}
PIPELINE = ROOT / "pipelines" / "lora_alpha"
DVC_STAGES = yaml12.loads((PIPELINE / "dvc.yaml").read_text())["stages"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: see conftest.one_thread


def _merge(base, override):
    """The loader's rule: mappings merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge(base[k], v) if k in base else v for k, v in override.items()}}
    return override


def fragment(profile: str) -> dict:
    """A fresh copy of the lora_alpha section of ``profile``: profiles/<profile>.yaml merged onto params.yaml."""
    return copy.deepcopy(_merge(PARAMS["lora_alpha"], PROFILE_PARAMS[profile]["lora_alpha"]))


def section(profile: str = "smoke", **edits) -> LoraAlphaConfig:
    raw = fragment(profile)
    for dotted, value in edits.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        if value is _DELETE:
            node.pop(leaf)
        else:
            node[leaf] = value
    return build(LoraAlphaConfig, raw, "lora_alpha")


_DELETE = object()


# ------------------------------------------------------------------------------------------ config

@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_fragment_validates(profile):
    la = section(profile)
    assert la.sweep.rank_grid()[0] == (la.sweep.ranks[0], la.sweep.alpha_multipliers[0], 1.0)
    assert set(la.methods.names) <= set(METHODS)
    assert (la.hf_model is not None) == (profile in ("mid", "paper"))  # Llama-3.2-1B from the Hub
    assert la.task_names == list(TASKS)  # the foreach list of the sweep and methods stages


@pytest.mark.parametrize("profile", ["mid", "paper"])
def test_llama_profiles_grid_covers_the_papers_alpha_and_no_run_repeats_data(profile):
    """The paper's α* ≈ 256·√r (α = r·m, so m* = 256/√r) lies inside the α grid at every rank with room above,
    and one fine-tuning run (train.steps × batch_size sequences) never sees a training sequence twice."""
    la = section(profile)
    grid = la.sweep.alpha_multipliers
    for r in la.sweep.ranks:
        m_star = 256 / math.sqrt(r)
        assert min(grid) <= m_star / 4 and max(grid) >= 2 * m_star, (r, m_star, grid)
    for task, steps in la.train.steps.items():
        t = getattr(la.tasks, task)
        available = t.train_windows if task == "domain" else t.hf.max_examples - t.hf.val_examples
        assert steps * la.train.batch_size <= available, (task, steps * la.train.batch_size, available)


@pytest.mark.parametrize("edits, key, message", [
    ({"sweep__ranks": [4, 2, 1]}, "sweep.ranks", "strictly increasing"),
    ({"sweep__ranks": [4]}, "sweep.ranks", "at least 2"),
    ({"sweep__alpha_multipliers": [4, 16, 64]}, "sweep.alpha_multipliers", "must contain 1"),
    ({"sweep__lr_multipliers": [1]}, "sweep.lr_multipliers", "at least 2"),
    ({"sweep__cross_ranks": [3]}, "sweep.cross_ranks", "not in ranks"),
    ({"sweep__base_lr": 0.5, "sweep__lr_multipliers": [1, 4]}, "sweep.lr_multipliers", "exceeds"),
    ({"methods__names": ["lora_2r", "dora"]}, "methods.names", "'dora' is not allowed"),
    ({"methods__names": ["lora_2r", "lora_2r"]}, "methods.names", "once"),
    ({"methods__lrs__lora_2r": [1e-2, 1e-3]}, "methods.lrs.lora_2r", "strictly increasing"),
    ({"methods__lrs__full": _DELETE}, "methods.lrs", "give the learning rates of ['full']"),
    ({"methods__lrs__lora_alpha_rank": [1e-3]}, "methods.lrs.lora_alpha_rank", "not a learning-rate-tuned"),
    ({"train__micro_batch_size": 3}, "train.micro_batch_size", "must divide"),
    ({"train__steps": {"domain": 0, "reasoning": 3}}, "train.steps.domain", "below the minimum"),
    ({"train__steps": {"domain": 3}}, "train.steps", "each task"),
    ({"train__schedule": "linear"}, "train.schedule", "'linear' is not allowed"),
    ({"tasks__domain__source": "hf"}, "tasks.domain.hf", "must be given"),
    ({"tasks__reasoning__bogus": 1}, "tasks.reasoning.bogus", "unknown key"),
    ({"mechanisms__task": "vision"}, "mechanisms.task", "'vision' is not allowed"),
    ({"mechanisms__signal_drift__alpha_multipliers": [4, 16]}, "mechanisms.signal_drift.alpha_multipliers",
     "contain 1"),
    ({"mechanisms__curvature__alpha_rule": "sqrt"}, "mechanisms.curvature.alpha_rule", "not allowed"),
    ({"mechanisms__mlp__seeds": []}, "mechanisms.mlp.seeds", "at least one seed"),
    ({"threads": 0}, "threads", "below the minimum"),
    ({"sweep": _DELETE}, "sweep", "missing required key"),
])
def test_bad_values_name_the_key(edits, key, message):
    with pytest.raises(ConfigError, match=re.escape(f"lora_alpha.{key}") + ".*" + re.escape(message)):
        section("smoke", **edits)


def test_hf_reasoning_needs_fields_and_no_accuracy():
    hf = {"path": "json", "messages_field": "messages", "max_examples": 10, "val_examples": 2}
    with pytest.raises(ConfigError, match="accuracy_examples"):
        section("smoke", tasks__reasoning__source="hf", tasks__reasoning__hf=hf)
    with pytest.raises(ConfigError, match="reasoning.hf.messages_field"):
        section("smoke", tasks__reasoning__source="hf", tasks__reasoning__accuracy_examples=0,
                tasks__reasoning__hf={**hf, "prompt_field": "p", "response_field": "r"})
    with pytest.raises(ConfigError, match="val_examples"):
        section("smoke", tasks__reasoning__source="hf", tasks__reasoning__accuracy_examples=0,
                tasks__reasoning__hf={**hf, "val_examples": 10})


# ------------------------------------------------------------------------------------------ params and stages

def _claims() -> dict[str, Claim]:
    return load_criteria(PIPELINE / "claims.yaml")


def test_claims_cover_claims_1_to_7_and_name_computed_metrics():
    from lmrepro.papers.lora_alpha.report import claim_values

    claims = _claims()
    assert {cid.split("_")[0] for cid in claims} == {f"c{i}" for i in range(1, 8)}
    values, _ = claim_values(synthetic_tables())
    assert {c.metric for c in claims.values()} <= set(values)


def _has(raw: dict, dotted: str) -> bool:
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_dvc_stages_list_existing_params_and_deps():
    from lmrepro.papers.lora_alpha import artifacts
    from lmrepro.paths import Paths

    assert set(DVC_STAGES) == {"data", "full_ft", "sweep", "methods", "mechanisms", "report"}
    assert PARAMS["lora_alpha"]["task_names"] == list(TASKS)
    for profile in PROFILES:
        files = {"params.yaml": PARAMS, f"profiles/{profile}.yaml": PROFILE_PARAMS[profile]}
        for name, stage in DVC_STAGES.items():
            body = stage.get("do", stage)
            items = [None] if "foreach" not in stage else TASKS
            assert stage.get("foreach", "${lora_alpha.task_names}") == "${lora_alpha.task_names}"
            assert body["wdir"] == "../.."
            for entry in body["params"]:
                for file, keys in (entry.items() if isinstance(entry, dict) else [("params.yaml", [entry])]):
                    file = file.replace("${profile}", profile)
                    for key in keys:
                        assert _has(files[file], key), f"{name}: {key} missing in {file}"
            for dep in body["deps"]:
                for item in items:
                    path = dep.replace("${item}", str(item))
                    if path.startswith(("src/", "notebooks/", "pipelines/")):
                        assert (ROOT / path).exists(), f"{name}: dep {path} does not exist"
            assert not any("results/" in d and d.endswith(".ipynb") for d in body["deps"]), "executed notebook as dep"
            assert "lmrepro.run_notebook notebooks/lora_alpha/" in body["cmd"]
    # The stages' outputs are where artifacts.py reads and writes.
    paths = Paths(Path("."))

    def outs(stage, key="outs"):
        body = DVC_STAGES[stage].get("do", DVC_STAGES[stage])
        return {next(iter(o)) if isinstance(o, dict) else o for o in body.get(key, [])}

    rel = (lambda p: p.as_posix())  # noqa: E731
    assert rel(artifacts.task_dir(paths)) in outs("data")
    assert {rel(artifacts.data_summary(paths)), rel(artifacts.data_provenance(paths))} <= outs("data")
    # foreach stages name their outputs with ${item}; the artifact functions accept only real task names.
    assert rel(artifacts.full_ft_dir(paths, "domain")).replace("domain", "${item}") in outs("full_ft")
    # The sweep and the methods read the learning rate the full_ft stage pre-registers.
    for stage in ("sweep", "methods"):
        base_lr_dep = rel(artifacts.base_lr_file(paths, "domain")).replace("domain", "${item}")
        assert base_lr_dep in DVC_STAGES[stage]["do"]["deps"]
    assert rel(artifacts.sweep_dir(paths, "domain")).replace("domain", "${item}") in outs("sweep")
    assert rel(artifacts.methods_dir(paths, "domain")).replace("domain", "${item}") in outs("methods")
    assert rel(artifacts.mechanisms_dir(paths)) in outs("mechanisms")
    assert rel(artifacts.alpha_fits(paths)) in outs("report")
    assert {rel(artifacts.figures(paths)), rel(artifacts.alpha_star(paths))} == outs("report", "plots")
    assert outs("report", "metrics") == {rel(artifacts.results(paths) / "metrics.json")}


# ------------------------------------------------------------------------------------------ α* and its fit

def synthetic_sweep(k: float = 0.5, C: float = 40.0, task: str = "domain", ranks=(1, 2, 4, 8, 16),
                    mults=(1, 4, 16, 64, 256), lr_mults=(1, 4, 16), seeds=(0,)) -> pd.DataFrame:
    """Loss = 3 + 0.05·(ln α − ln(C·r^k))² at base_lr (a parabola in ln α: the vertex is exact); the lr axis is
    worse by 0.02·ln m, so raising α wins at equal step."""
    rows = []
    for seed in seeds:
        for r in ranks:
            for lm in lr_mults:
                for am in mults:
                    alpha = r * am
                    loss = 3 + 0.05 * (math.log(alpha) - math.log(C * r ** k)) ** 2 + 0.02 * math.log(lm) + 1e-4 * seed
                    rows.append({"task": task, "rank": r, "alpha_multiplier": float(am), "lr_multiplier": float(lm),
                                 "seed": seed, "alpha": float(alpha), "val_loss": loss, "diverged": False})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("k, C", [(0.5, 40.0), (1.0, 3.0), (0.25, 20.0), (0.0, 64.0)])
def test_alpha_star_fit_recovers_known_exponent(k, C):
    from lmrepro.papers.lora_alpha.evaluate import best_alpha, fit_alpha_law

    stars = best_alpha(synthetic_sweep(k, C))
    assert not stars.at_edge.any()
    np.testing.assert_allclose(stars.alpha_star, C * stars["rank"] ** k, rtol=1e-6)
    fit = fit_alpha_law(stars["rank"], stars.alpha_star)
    assert fit["exponent"] == pytest.approx(k, abs=1e-6) and fit["C"] == pytest.approx(C, rel=1e-6)
    assert fit["C_sqrt"] == pytest.approx(C * np.exp(np.mean((k - 0.5) * np.log(stars["rank"]))), rel=1e-6)


def test_alpha_star_at_grid_edge_is_flagged_and_divergence_counts_as_worst():
    from lmrepro.papers.lora_alpha.evaluate import best_alpha, parabola_vertex

    runs = synthetic_sweep(0.5, 5000.0)  # optimum beyond the largest α of the grid
    assert best_alpha(runs).at_edge.all()
    runs = synthetic_sweep(0.5, 40.0)
    runs.loc[(runs["rank"] == 4) & (runs.alpha_multiplier == 16), "val_loss"] = np.nan  # diverged at the optimum
    star = best_alpha(runs).set_index("rank").loc[4]
    assert star.alpha_grid != 64.0
    assert parabola_vertex(np.array([0.0, 1.0, 2.0]), np.array([1.0, 0.0, 1.0])) == pytest.approx(1.0)
    assert parabola_vertex(np.array([0.0, 1.0, 2.0]), np.array([1.0, 0.0, 0.0])) == pytest.approx(1.5)


def test_rank_rule_constant_is_fitted_on_the_selection_half_only():
    """C of the rank rule comes from the select half: a report half with another optimum must not move it."""
    from lmrepro.papers.lora_alpha.evaluate import fitted_C

    select, report = synthetic_sweep(0.5, 40.0), synthetic_sweep(0.5, 400.0)
    runs = select.rename(columns={"val_loss": "select_loss"}).assign(report_loss=report.val_loss)
    runs["val_loss"] = (runs.select_loss + runs.report_loss) / 2
    assert fitted_C(runs) == pytest.approx(40.0, rel=1e-6)


def test_fit_needs_two_ranks():
    from lmrepro.papers.lora_alpha.evaluate import fit_alpha_law

    assert math.isnan(fit_alpha_law([4], [10.0])["exponent"])


# ------------------------------------------------------------------------------------------ claim metrics

def synthetic_methods(task: str, gains: dict[int, float], full: float = 2.9) -> pd.DataFrame:
    """Vanilla methods at loss 3.0 at every rank; LoRA-α lower by ``gains[r]``; rsLoRA/LoRA+ at 3.01."""
    rows = []
    for r, gain in gains.items():
        for method in METHODS:
            loss = {"lora_alpha_rank": 3.0 - gain, "lora_alpha_layerwise": 3.0 - gain / 2, "full": full,
                    "rslora": 3.01, "loraplus": 3.01}.get(method, 3.0)
            rows.append({"task": task, "method": method, "rank": r, "report_loss": loss, "select_loss": loss,
                         "accuracy": 0.5, "diverged": False, "knob_value": 1.0, "at_edge": False})
    return pd.DataFrame(rows)


def synthetic_tables() -> dict[str, pd.DataFrame]:
    sd = []
    for axis in ("lr", "alpha"):
        for m in (1.0, 4.0, 16.0):
            for step in (1, 2, 3):
                ratio = 0.01 * (m if axis == "lr" else 1.0)  # ρ ∝ η, flat in α
                sd.append({"axis": axis, "multiplier": m, "step": step, "signal": m, "drift": m * ratio,
                           "ratio": ratio, "total_ratio": ratio, "alignment": 0.5})
    curv = pd.DataFrame({"rank": [2, 2, 8, 8], "step": [0, 10, 0, 10], "lambda_lora": [1.0, 2.0, 4.0, 3.0],
                         "lambda_full": [100.0, 100.0, 100.0, 100.0], "converged": [True, True, True, False]})
    mlp = pd.DataFrame([{"seed": s, "kind": kind, "multiplier": m, "diverged": kind == "lr" and m > 1,
                         "initial_loss": 0.2, "final_loss": math.inf if (kind == "lr" and m > 1) else 0.1}
                        for s in (0, 1) for kind, m in (("lr", 1), ("lr", 128), ("alpha", 1), ("alpha", 256))])
    return {"sweep_runs": pd.concat([synthetic_sweep(0.5, 40.0, "domain", seeds=(0, 1)),
                                     synthetic_sweep(1.0, 4.0, "reasoning")], ignore_index=True),
            "methods_summary": pd.concat([synthetic_methods("domain", {2: 0.02, 16: 0.06}),
                                          synthetic_methods("reasoning", {2: 0.0, 16: -0.3})], ignore_index=True),
            "signal_drift": pd.DataFrame(sd), "curvature": curv, "mlp": mlp}


def test_claim_values_on_hand_made_tables(tmp_path):
    from lmrepro.analysis.claims import build_ledger, publish
    from lmrepro.papers.lora_alpha.report import claim_values

    values, evidence = claim_values(synthetic_tables(), skip_steps=0)
    # Claim 1: along α the best common-multiplier loss is the parabola's minimum over {1, 4, 16} · r; along lr
    # the base point plus 0.02·ln m (the base point wins). Gap = loss(α = r) − min over α×{1,4,16}.
    runs = synthetic_sweep(0.5, 40.0)
    base = runs[(runs.alpha_multiplier == 1) & (runs.lr_multiplier == 1)].set_index("rank").val_loss
    alpha_axis = runs[(runs.alpha_multiplier <= 16) & (runs.lr_multiplier == 1)].groupby("rank").val_loss.min()
    assert values["alpha_vs_lr_gap_domain"] == pytest.approx(float((base - alpha_axis).mean()))
    assert values["alpha_vs_lr_gap_domain"] > 0
    assert values["alpha_exponent_error_domain"] == pytest.approx(0.0, abs=1e-6)
    assert values["alpha_exponent_error_reasoning"] == pytest.approx(0.5, abs=1e-6)
    # α* = 40·√r → log2(α*/2r) = log2(20/√r), median over r ∈ {1..16} is at r = 4: log2(10)
    assert values["alpha_star_over_2r_domain"] == pytest.approx(math.log2(10.0))
    assert values["log10_curvature_ratio"] == pytest.approx(np.median(np.log10([0.01, 0.02, 0.04, 0.03])))
    assert values["drift_slope_gap"] == pytest.approx(1.0)
    assert values["rank_rule_gain_domain"] == pytest.approx(0.04)
    assert values["layerwise_gain_domain"] == pytest.approx(0.02)
    assert values["gain_rank_trend_domain"] == pytest.approx(0.04)
    assert values["gain_rank_trend_reasoning"] == pytest.approx(-0.3)
    # at r = 16 LoRA-α (2.94) is 0.04 from full (2.9); the closest other (3.0) is 0.1 away
    assert values["closest_to_full_domain"] == pytest.approx(0.06)
    assert values["mlp_instability_gap"] == pytest.approx(1.0)
    # The domain sweep repeats seed 1 (loss + 1e-4): σ = 1e-4/√2, so the trend 0.04 clears its 4σ margin.
    assert values["seed_std_domain"] == pytest.approx(1e-4 / math.sqrt(2), rel=1e-3)
    rows = {r["id"]: r for r in build_ledger(_claims(), values)}
    assert rows["c6_gain_grows_with_rank_domain"]["verdict"] == "reproduced"
    # 4σ on σ's 95% upper bound, with ν = the pooled optima's (seeds − 1)
    nu = values["seed_std_domain_dof"]
    assert nu >= 1 and rows["c6_gain_grows_with_rank_domain"]["noise"]["dof"] == nu
    assert rows["c6_gain_grows_with_rank_domain"]["margin"] == pytest.approx(
        4 * values["seed_std_domain"] * noise_upper_factor(nu))
    assert values["aligned_signal_slope_alpha"] == pytest.approx(1.0)  # ‖S‖ ∝ m at constant alignment
    assert values["rank_rule_multiplier_edges"] == 0
    # Exact α* = 40·√r: a zero-width interval at 1/2, which excludes 0 and 1 by 1/2 each.
    assert values["sqrt_law_interval_domain"] == pytest.approx(0.5, abs=1e-3)  # exact data: a point interval
    assert values["sqrt_law_interval_reasoning"] == pytest.approx(-0.5, abs=1e-6)  # exponent 1: far from 1/2
    assert evidence["alpha_vs_lr_gap_domain"]["seeds"] == 2
    # The ledger is strict JSON (no NaN / Infinity, numpy scalars and keys converted) and metrics.json flat.
    publish(tmp_path, "lora_alpha", "smoke", _claims(), values, evidence)
    ledger = json.loads((tmp_path / "claims.json").read_text(), parse_constant=pytest.fail)
    assert ledger["claims"][0]["evidence"]["seeds"] == 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == ({k for k, v in values.items() if math.isfinite(v)}
                            | {f"{cid}_reproduced" for cid in _claims()})


def test_censored_fit_is_inconclusive_and_verdicts_follow_the_criteria():
    from lmrepro.analysis.claims import build_ledger
    from lmrepro.papers.lora_alpha.report import claim_values

    tables = synthetic_tables()
    tables["sweep_runs"] = pd.concat([synthetic_sweep(0.5, 5000.0, "domain"), synthetic_sweep(1.0, 4.0, "reasoning")])
    values, evidence = claim_values(tables, skip_steps=0)
    assert math.isnan(values["alpha_exponent_error_domain"])
    assert "censored" in evidence["alpha_exponent_error_domain"]["note"]
    ledger = {row["id"]: row["verdict"] for row in build_ledger(_claims(), values)}
    assert ledger["c4_sqrt_law_domain"] == "inconclusive"
    assert ledger["c4_sqrt_law_reasoning"] == "not reproduced"  # exponent 1 is 0.5 away from 1/2
    assert ledger["c3_signal_drift"] == "reproduced" and ledger["c7_mlp_stability"] == "reproduced"
    # Margins are multiples of the measured seed noise; these sweeps repeat no seed, so nothing is judged.
    assert ledger["c6_gain_grows_with_rank_reasoning"] == "inconclusive"  # −0.3, but no noise measured
    assert math.isnan(values["seed_std_reasoning"]) and math.isnan(values["seed_std_domain"])


def noisy_sweep(rng, k: float = 0.5, scatter: float = 0.1, sigma: float = 0.01, seeds=(1, 2)) -> pd.DataFrame:
    """Like the pipeline's sweep: loss 3 + 0.05·(ln α − ln α*_r)² + N(0, σ) per run, α*_r = 40·r^k·e^(N(0, scatter))
    (the law's own scatter across ranks); the main seed on the whole grid, ``seeds`` at the seed-mean optimum and
    its two neighbours (``missing_seeds``, as the sweep runs them)."""
    from lmrepro.papers.lora_alpha.evaluate import missing_seeds

    rows, grid, ranks = [], [1, 4, 16, 64, 256, 1024], (1, 2, 4, 8, 16)
    stars = {r: math.log(40 * r ** k) + rng.normal(0, scatter) for r in ranks}

    def run(r, am, seed):
        loss = 3 + 0.05 * (math.log(am * r) - stars[r]) ** 2 + rng.normal(0, sigma)
        rows.append({"task": "domain", "rank": r, "alpha_multiplier": float(am), "lr_multiplier": 1.0,
                     "seed": seed, "alpha": float(am * r), "val_loss": loss})

    for r in ranks:
        for am in grid:
            run(r, am, 0)
    while more := missing_seeds(rows, ranks, seeds, 0):
        for r, am, _, seed in more:
            run(r, am, seed)
    return pd.DataFrame(rows)


def test_bootstrap_exponent_interval_covers_the_true_exponent_at_its_stated_rate():
    """95% intervals of k (seeds resampled, α* re-refined, the fit's t uncertainty) hold the true 1/2 at least
    at the stated rate, within 3 binomial standard errors."""
    from lmrepro.papers.lora_alpha.evaluate import bootstrap_alpha_stars

    rng = np.random.default_rng(0)
    trials = 80
    boots = [bootstrap_alpha_stars(noisy_sweep(rng), n_boot=200, seed=i)[1] for i in range(trials)]
    hits = sum(b["exponent_lo"] <= 0.5 <= b["exponent_hi"] for b in boots)
    assert hits / trials >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / trials)
    # Not vacuous: the intervals are narrow enough to exclude 0 and 1 most of the time.
    assert np.mean([b["exponent_lo"] > 0 and b["exponent_hi"] < 1 for b in boots]) > 0.8


def test_bootstrap_alpha_star_interval_brackets_the_seed_mean_optimum_and_widens_with_noise():
    from lmrepro.papers.lora_alpha.evaluate import best_alpha, bootstrap_alpha_stars

    quiet = noisy_sweep(np.random.default_rng(1), scatter=0.0, sigma=0.001)
    loud = noisy_sweep(np.random.default_rng(1), scatter=0.0, sigma=0.03)
    widths = []
    for runs in (quiet, loud):
        per_rank, boot = bootstrap_alpha_stars(runs, n_boot=300)
        stars = best_alpha(runs).set_index("rank")
        assert (stars.seeds == 3).all()  # the seed-mean α* uses the repeats around the optimum
        for r, lo, hi in per_rank.itertuples(index=False):
            assert lo <= stars.alpha_star[r] * 1.0001 and stars.alpha_star[r] <= hi * 1.0001
        widths.append(np.mean(np.log(per_rank.alpha_star_hi / per_rank.alpha_star_lo)))
    assert widths[0] < widths[1]
    # A rank whose optimum sits at the grid's edge is censored: no interval, and left out of the fit.
    edge = quiet.copy()
    edge.loc[(edge["rank"] == 16) & (edge.alpha_multiplier < 1024), "val_loss"] += 5.0
    per_rank, _ = bootstrap_alpha_stars(edge, n_boot=50)
    assert 16 not in set(per_rank["rank"])


def test_quantile_monte_carlo_error_matches_the_spread_over_bootstrap_seeds():
    """The margin of the √r rows: the Monte-Carlo error of a 2.5% bound from 4000 draws is what another draw
    of 4000 would move it by (normal samples: asymptotically √(p(1−p)/n)/φ(z_p) ≈ 0.042)."""
    from lmrepro.papers.lora_alpha.evaluate import quantile_mc_se

    rng = np.random.default_rng(0)
    draws = [rng.normal(size=4000) for _ in range(200)]
    spread = np.std([np.quantile(d, 0.025) for d in draws])
    estimates = [quantile_mc_se(d, 0.025) for d in draws[:20]]
    assert spread == pytest.approx(0.042, rel=0.2)
    assert np.median(estimates) == pytest.approx(spread, rel=0.3)


def test_grid_grows_past_an_edge_optimum_by_its_own_ratio():
    """The grid-edge guard of the sweep (α) and of the full fine-tuning stage (learning rate)."""
    from lmrepro.papers.lora_alpha.evaluate import beyond_edge

    assert beyond_edge([1, 4, 16, 64], [3.0, 2.0, 1.5, 1.0]) == 256.0
    assert beyond_edge([1e-3, 3e-3, 1e-2], [1.0, 2.0, 3.0]) == pytest.approx(1e-3 / 3)
    assert beyond_edge([1, 4, 16], [2.0, 1.0, 3.0]) is None  # interior
    assert beyond_edge([1, 4, 16], [math.inf, math.inf, 1.0]) == 64.0  # diverged runs count as worst
    assert beyond_edge([1, 4, 16], [math.inf] * 3) is None


def test_pre_registered_lr_is_the_selection_half_optimum_and_sets_the_sweep():
    from lmrepro.config import load_config
    from lmrepro.papers.lora_alpha.evaluate import pre_registered_lr, with_base_lr
    from lmrepro.papers.lora_alpha.runs import section

    runs = pd.DataFrame({"lr": [3e-4, 1e-3, 3e-3, 1e-2], "select_loss": [2.0, 1.5, 1.2, np.nan],
                         "report_loss": [2.0, 1.0, 1.3, 1.1]})  # the report half would choose 1e-3
    chosen = pre_registered_lr(runs)
    assert chosen["base_lr"] == 3e-3 and not chosen["at_edge"]
    cfg = load_config(profile="laptop")
    assert section(cfg).sweep.base_lr is None  # the laptop profile pre-registers it
    assert section(with_base_lr(cfg, chosen["base_lr"])).sweep.base_lr == 3e-3
    with pytest.raises(ValueError, match="lr_multipliers"):
        with_base_lr(cfg, 0.5)  # 0.5 × 64 is above a learning rate of 1
    with pytest.raises(ValueError, match="every full fine-tuning run diverged"):
        pre_registered_lr(runs.assign(select_loss=np.inf))


@pytest.mark.parametrize("lo, hi, expected", [
    (0.2, 0.7, 0.2),          # holds 1/2, excludes 0 and 1: reproduced by the room left (0.2 to 0)
    (0.13, 1.11, math.nan),   # holds 1/2 and 1: inconclusive
    (-0.1, 0.6, math.nan),    # holds 1/2 and 0: inconclusive
    (0.7, 1.2, -0.2),         # excludes 1/2: not reproduced by the distance
    (0.1, 0.3, -0.2),
])
def test_interval_score_rules(lo, hi, expected):
    from lmrepro.papers.lora_alpha.report import interval_score

    got = interval_score(lo, hi)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_mlp_runs_that_do_not_learn_are_not_stable():
    from lmrepro.papers.lora_alpha.report import mlp_gap

    mlp = synthetic_tables()["mlp"]
    mlp.loc[mlp.kind == "alpha", "final_loss"] = 0.25  # no divergence, but above the initial 0.2
    value, evidence = mlp_gap(mlp)
    assert value == pytest.approx(0.0) and evidence["diverged_fraction"]["alpha"] == 0.0


def test_rank_rule_multiplier_on_the_grid_edge_is_counted():
    from lmrepro.papers.lora_alpha.report import multiplier_edges

    summary = synthetic_tables()["methods_summary"]
    rule = summary.method == "lora_alpha_rank"
    summary.loc[rule & (summary["rank"] == 16), ["knob_value", "at_edge"]] = [2.0, True]
    value, evidence = multiplier_edges(summary)
    assert value == 2 and evidence["at_edge"] == ["domain r=16", "reasoning r=16"]


def test_missing_tables_give_nan_not_errors():
    from lmrepro.papers.lora_alpha.report import claim_values

    empty = {k: pd.DataFrame() for k in synthetic_tables()}
    empty["sweep_runs"] = synthetic_sweep()
    values, _ = claim_values(empty)
    assert math.isnan(values["drift_slope_gap"]) and math.isnan(values["mlp_instability_gap"])
    assert math.isnan(values["aligned_signal_slope_alpha"]) and math.isnan(values["rank_rule_multiplier_edges"])
    assert math.isnan(values["rank_rule_gain_domain"]) and math.isfinite(values["alpha_vs_lr_gap_domain"])


def test_report_on_the_committed_tables_gives_the_committed_metrics(tmp_path):
    """The report stage's ledger from the committed tables: metrics.json as publish writes it has the committed keys
    and values."""
    from lmrepro.analysis.claims import publish
    from lmrepro.config import load_config
    from lmrepro.papers.lora_alpha import artifacts, report
    from lmrepro.paths import Paths

    paths = Paths(ROOT)
    committed, ledger = artifacts.results(paths) / "metrics.json", artifacts.results(paths) / "claims.json"
    tables = report.load_tables(paths)
    if not (committed.is_file() and ledger.is_file()) or tables["sweep_runs"].empty:
        pytest.skip("no committed lora_alpha results")
    profile = json.loads(ledger.read_text())["profile"]
    la = load_config(ROOT / "params.yaml", profile=profile).lora_alpha
    values, evidence = report.claim_values(tables, la.mechanisms.signal_drift.skip_steps)
    publish(tmp_path, "lora_alpha", profile, _claims(), values, evidence)
    ours, theirs = (json.loads(f.read_text()) for f in (tmp_path / "metrics.json", committed))
    assert set(ours) == set(theirs)
    assert ours == pytest.approx(theirs, abs=1e-6)


# ------------------------------------------------------------------------------------------ paper profile, offline

@pytest.fixture(scope="module")
def hf_project(tmp_path_factory):
    """A project folder whose lora_alpha section uses a tiny Llama saved to disk and a local JSONL SFT dataset."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmrepro.data import to_hf_tokenizer, train_bpe_tokenizer
    from lmrepro.data.reasoning import make_reasoning_split

    root = tmp_path_factory.mktemp("hf_project")
    train, _ = make_reasoning_split(40, 0, seed=1, steps=(1,), max_operand=9)
    tok = train_bpe_tokenizer([e.prompt + e.target for e in train] * 5 + ["hello world, a readme"] * 5, vocab_size=300)
    model_dir = root / "tiny_llama"
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=0, eos_token_id=0, pad_token_id=1)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    to_hf_tokenizer(tok).save_pretrained(model_dir)
    rows = [{"prompt": e.prompt, "response": e.target} for e in train]
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "text.jsonl").write_text("".join(json.dumps({"text": f"document {i}: " + "words and more words " * 20})
                                             + "\n" for i in range(30)))
    # This checkout's params.yaml and profiles; the smoke profile's lora_alpha section points at the local files.
    (root / "profiles").mkdir()
    for profile in PROFILES:
        (root / "profiles" / f"{profile}.yaml").write_text(yaml12.dumps(PROFILE_PARAMS[profile]))
    la = fragment("smoke")
    la["hf_model"] = {"name": str(model_dir), "dtype": "float32"}
    la["tasks"]["domain"] = {"source": "hf", "seq_len": 16, "val_fraction": 0.3, "val_windows": 4, "train_windows": 16,
                             "hf": {"path": "json", "data_files": str(root / "text.jsonl"), "max_documents": 30}}
    la["tasks"]["reasoning"] = {"source": "hf", "max_len": 40, "accuracy_examples": 0,
                                "hf": {"path": "json", "data_files": str(root / "sft.jsonl"), "prompt_field": "prompt",
                                       "response_field": "response", "max_examples": 40, "val_examples": 8}}
    smoke = {**PROFILE_PARAMS["smoke"], "lora_alpha": la}
    (root / "profiles" / "smoke.yaml").write_text(yaml12.dumps(smoke))
    (root / "params.yaml").write_text(yaml12.dumps({**PARAMS, "profile": "smoke"}))
    return root


def test_paper_profile_path_on_a_tiny_hf_llama(hf_project, monkeypatch):
    """Data, sweep, methods (layer-wise rule included), signal/drift and curvature on an HF Llama: the code the
    paper profile runs, with the model and datasets on local disk."""
    from lmrepro.config import load_config
    from lmrepro.papers.lora_alpha import artifacts
    from lmrepro.papers.lora_alpha import evaluate as lora_eval
    from lmrepro.papers.lora_alpha import runs as lora
    from lmrepro.paths import Paths

    monkeypatch.setenv("HF_HOME", str(hf_project / "hf_home"))
    cfg = load_config(hf_project / "params.yaml")
    paths = Paths(hf_project)
    summary = lora.prepare_tasks(cfg, paths)
    assert summary["domain"]["train_windows"] == 16 and summary["reasoning"]["train_examples"] == 32
    # Local files have no Hub commit to record (a Hub dataset's is resolved and recorded: test_data_hf.py).
    assert summary["domain"]["revision"] is None and summary["reasoning"]["revision"] is None
    base, tokenizer = lora.load_base(cfg, paths)
    assert type(base).__name__ == "LlamaForCausalLM"
    for task in ("domain", "reasoning"):
        data = lora.load_task(paths, task)
        assert data.report["input_ids"].shape[0] >= 2
        # The learning rate is pre-registered by full fine-tuning (the full_ft stage's code and file).
        with pytest.raises(FileNotFoundError, match=f"full_ft@{task}"):
            lora_eval.pre_registered(cfg, paths, task)
        ft = pd.DataFrame(lora_eval.full_ft_sweep(cfg, base, data)[0])
        assert set(cfg.lora_alpha.full_ft.lrs) <= set(ft.lr)
        artifacts.full_ft_dir(paths, task).mkdir(parents=True, exist_ok=True)
        artifacts.base_lr_file(paths, task).write_text(json.dumps(lora_eval.pre_registered_lr(ft)))
        task_cfg, _ = lora_eval.pre_registered(cfg, paths, task)
        runs, curves = lora_eval.sweep(task_cfg, base, data)
        runs = pd.DataFrame(runs)
        main = runs[runs.seed == cfg.lora_alpha.seed]
        assert len(main) >= len(cfg.lora_alpha.sweep.rank_grid())
        assert set(main[main.lr_multiplier == 1].lr) == {lora_eval.pre_registered_lr(ft)["base_lr"]}
        # Repeats: every seed at the seed-mean optimum and both neighbours (they follow it if the seeds move it).
        stars = lora_eval.best_alpha(runs)
        assert len(stars) == len(cfg.lora_alpha.sweep.ranks)
        assert (stars.seeds == len({cfg.lora_alpha.seed, *cfg.lora_alpha.sweep.optimum_seeds})).all()
        assert runs.val_loss.notna().all() and (runs.scaling == runs.alpha_multiplier).all()
        C = lora_eval.fitted_C(runs)
        assert math.isfinite(C) and C > 0
        out = lora_eval.methods(task_cfg, base, data, C, tokenizer)
        summary = pd.DataFrame(out["summary"])
        assert set(summary.method) == set(METHODS)
        assert summary.report_loss.notna().all()
        assert len(out["layerwise"]) == 2 * 7 * len(cfg.lora_alpha.methods.ranks)  # 2 layers × 7 modules
    # The base model itself is never modified by the runs (every run fine-tunes a copy).
    fresh, _ = lora.load_base(cfg, paths)
    for (name, p), q in zip(base.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), name
    data = lora.load_task(paths, "domain")
    sd = pd.DataFrame(lora_eval.signal_drift(cfg, base, data))
    assert sd[sd.step > 1].ratio.notna().all()
    curv = pd.DataFrame(lora_eval.curvature(cfg, base, data))
    assert (curv.lambda_full > 0).all() and len(curv) == 2


def test_sweep_and_methods_in_workers_equal_serial(hf_project, monkeypatch):
    """The runs of a sweep and of the methods table give the same numbers serially and in two worker processes
    (lmrepro.pool; every run uses one thread either way)."""
    from lmrepro.config import load_config
    from lmrepro.papers.lora_alpha import evaluate as lora_eval
    from lmrepro.papers.lora_alpha import runs as lora
    from lmrepro.paths import Paths
    from lmrepro.pool import ENV

    monkeypatch.setenv("HF_HOME", str(hf_project / "hf_home"))
    cfg = lora_eval.with_base_lr(load_config(hf_project / "params.yaml"), 1e-3)
    paths = Paths(hf_project)
    lora.prepare_tasks(cfg, paths)
    base, tokenizer = lora.load_base(cfg, paths)
    data = lora.load_task(paths, "domain")

    def timeless(rows):
        return pd.DataFrame(rows).drop(columns=["elapsed_s"], errors="ignore")

    out = {}
    for workers in ("1", "2"):
        monkeypatch.setenv(ENV, workers)
        runs, curves = lora_eval.sweep(cfg, base, data)
        methods = lora_eval.methods(cfg, base, data, 10.0, tokenizer)
        out[workers] = (timeless(runs), timeless(curves), timeless(methods["runs"]), timeless(methods["summary"]))
    for serial, parallel in zip(out["1"], out["2"]):
        pd.testing.assert_frame_equal(serial, parallel)
    assert out["1"][0].val_loss.nunique() > 1


def test_alpha_star_and_its_interval_ignore_a_seed_offset_shared_by_every_alpha():
    """A seed that is worse at every α (a shared offset) says nothing about where α* lies: the point estimate and
    the bootstrap (seeds resampled whole per rank, offsets removed) are unchanged by adding one."""
    from lmrepro.papers.lora_alpha.evaluate import best_alpha, bootstrap_alpha_stars

    runs = noisy_sweep(np.random.default_rng(3), scatter=0.0, sigma=0.01)
    shifted = runs.assign(val_loss=runs.val_loss + runs.seed.map({0: 0.0, 1: 0.4, 2: 0.4}))
    assert np.allclose(best_alpha(shifted).alpha_star, best_alpha(runs).alpha_star, rtol=1e-9)
    (a, ka), (b, kb) = (bootstrap_alpha_stars(r, n_boot=200, seed=5) for r in (runs, shifted))
    assert np.allclose(a[["alpha_star_lo", "alpha_star_hi"]], b[["alpha_star_lo", "alpha_star_hi"]], rtol=1e-9)
    assert ka["exponent_lo"] == pytest.approx(kb["exponent_lo"]) and ka["ranks"] == [1, 2, 4, 8, 16]


def test_missing_seeds_follow_the_seed_mean_optimum():
    """Extra seeds go to the seed-mean optimum and both neighbours; when they move the optimum, the new window's
    points are added, and past the grid's edge when they move it there."""
    from lmrepro.papers.lora_alpha.evaluate import missing_seeds

    def row(am, seed, loss):
        return {"rank": 4, "alpha_multiplier": float(am), "lr_multiplier": 1.0, "seed": seed, "val_loss": loss}

    main = [row(am, 0, loss) for am, loss in zip([1, 4, 16, 64, 256], [3.0, 2.5, 2.0, 2.1, 2.6])]
    assert sorted(missing_seeds(main, [4], [1, 2], 0)) == [(4, a, 1.0, s) for a in (4.0, 16.0, 64.0) for s in (1, 2)]
    # Seeds 1 and 2 find 64 better than 16: the window moves up and 256 needs them too.
    extra = [row(am, s, {4: 2.6, 16: 2.3, 64: 1.9}[am]) for am in (4, 16, 64) for s in (1, 2)]
    assert sorted(missing_seeds(main + extra, [4], [1, 2], 0)) == [(4, 256.0, 1.0, 1), (4, 256.0, 1.0, 2)]
    assert missing_seeds(main + extra + [row(256, s, 2.7) for s in (1, 2)], [4], [1, 2], 0) == []
    # Seeds that move the optimum onto the grid's edge grow the grid past it (main seed first, then the others).
    edge = [row(am, s, {16: 2.4, 64: 2.2, 256: 1.5}[am]) for am in (16, 64, 256) for s in (1, 2)]
    assert sorted(missing_seeds(main + edge, [4], [1, 2], 0)) == [(4, 1024.0, 1.0, 0)]
    grown = main + edge + [row(1024, 0, 2.0)]
    assert sorted(missing_seeds(grown, [4], [1, 2], 0)) == [(4, 1024.0, 1.0, 1), (4, 1024.0, 1.0, 2)]


def test_seed_table_refuses_a_repeated_run():
    from lmrepro.papers.lora_alpha.evaluate import seed_table

    g = pd.DataFrame({"alpha": [4.0, 4.0, 16.0], "seed": [0, 0, 0], "val_loss": [2.0, 9.0, 1.0]})
    with pytest.raises(ValueError, match="repeat"):
        seed_table(g, "val_loss", "alpha")


def test_full_ft_grid_stops_where_the_lora_sweep_could_not_use_the_optimum():
    """The learning-rate grid grows past an edge optimum, but never above 1 / max(sweep.lr_multipliers)."""
    from lmrepro.papers.lora_alpha.evaluate import next_lr

    losses = [3.0, 2.0, 1.0]  # the optimum sits at the top edge
    assert next_lr([1e-3, 3e-3, 1e-2], losses, top=1.0) == pytest.approx(1e-2 * 1e-2 / 3e-3)
    assert next_lr([1e-3, 3e-3, 1e-2], losses, top=1 / 64) is None  # 0.033 × 64 would exceed 1
    assert next_lr([1e-3, 3e-3, 1e-2], [2.0, 1.0, 3.0], top=1.0) is None  # interior
    assert next_lr([1e-3, 3e-3, 1e-2], [1.0, 2.0, 3.0], top=1 / 64) == pytest.approx(1e-3 / 3)


def test_seed_offsets_are_robust_to_a_point_where_runs_start_to_diverge():
    """center_seeds: one full row that scatters 10× (past the optimum) does not shift the main seed's other
    points; a shared offset is removed exactly (up to one constant for the whole table: its mean)."""
    from lmrepro.papers.lora_alpha.evaluate import center_seeds

    nan = math.nan
    table = np.array([[3.0, nan, nan],        # only the main seed ran here
                      [2.50, 2.51, 2.49],
                      [2.40, 2.41, 2.39],
                      [2.90, 3.40, 2.60]])    # where runs start to diverge
    assert center_seeds(table)[0, 0] == pytest.approx(3.0, abs=0.011)
    shifted = table + np.array([0.0, 0.3, -0.1])
    moved = center_seeds(shifted) - center_seeds(table)
    assert np.allclose(moved[~np.isnan(moved)], 0.2 / 3) and np.isnan(moved).sum() == 2


def test_method_margin_noise_is_the_seed_spread_at_each_ranks_optimum():
    """report.noise: σ pools the seed std at the optimum of every rank, not at points past it."""
    from lmrepro.papers.lora_alpha.evaluate import best_alpha
    from lmrepro.papers.lora_alpha.report import noise

    runs = noisy_sweep(np.random.default_rng(7), scatter=0.0, sigma=0.01)
    optimum = set(zip(best_alpha(runs)["rank"], best_alpha(runs).alpha_grid))
    # The optimum's neighbours scatter wildly (as past an optimum, where runs start to diverge).
    off = np.array([(r, a) not in optimum for r, a in zip(runs["rank"], runs.alpha)]) & (runs.seed > 0)
    wild = runs.assign(val_loss=runs.val_loss + np.where(off, runs.seed * 0.5, 0.0))
    assert set(zip(best_alpha(wild)["rank"], best_alpha(wild).alpha_grid)) == optimum
    n, m = noise(runs, "domain"), noise(wild, "domain")
    assert m["seed_std_pooled"] == pytest.approx(n["seed_std_pooled"])
    assert m["seed_std_all_points_pooled"] > 5 * n["seed_std_all_points_pooled"]
    assert 0.005 < n["seed_std_pooled"] < 0.02  # σ = 0.01 per run
    assert len(n["seed_std_at_optimum"]) == 5
    assert n["seed_std_dof"] == 5 * (runs.seed.nunique() - 1)  # every optimum repeated with every seed
