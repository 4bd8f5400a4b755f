"""Paper 1 pipeline: configuration, architecture specs, paper sizes, artifact names, the DVC pipeline, claim
metrics on hand-made tables and the published ledger."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from lmrepro import yaml12

from lmrepro.analysis.claims import CLAIMS_FILE, build_ledger, load_criteria, publish
from lmrepro.config import ConfigError, load_config
from lmrepro.models import DecoderLM
from lmrepro.papers.hybrid_attention import artifacts, report, runs
from lmrepro.papers.hybrid_attention.config import ARCHITECTURES
from lmrepro.paths import Paths

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
PIPELINE = ROOT / "pipelines" / "hybrid_attention"
PUBLISHED = {"s1": 14_999_424, "s2": 31_470_080, "s3": 64_901_760, "s4": 104_427_264}


def test_paper_sizes_match_the_published_parameter_counts_within_5_percent():
    cfg = load_config(PARAMS, profile="paper")
    for size, published in PUBLISHED.items():
        with torch.device("meta"):
            n = DecoderLM(runs.arch_spec(cfg, "full", size)).num_parameters()
        assert abs(n - published) / published < 0.05, (size, n, published)


@pytest.mark.parametrize("profile,expected", [("laptop", (1, 4, 16)), ("paper", (128, 512, 2048))])
def test_windows_are_the_papers_fractions_of_the_context(profile, expected):
    h = load_config(PARAMS, profile=profile).hybrid_attention
    assert tuple(h.window(a) for a in ("swa-small", "swa-mid", "swa-large")) == expected
    assert h.window("full") is None and h.window("gdn") is None


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_has_the_fixed_hybrid_pattern(arch):
    cfg = load_config(PARAMS, profile="laptop")
    spec = runs.arch_spec(cfg, arch, "s1")
    every = cfg.hybrid_attention.full_attention_every
    for i, layer in enumerate(spec.layers):
        if arch == "full" or (i + 1) % every == 0:
            assert layer.is_full_attention
            assert layer.rope == (not arch.endswith("-nope"))  # NoPE only on the full-attention layers
        else:
            assert not layer.is_full_attention
            assert layer.rope or layer.mixer != "attention"
            assert layer.name == runs.mixer_token(cfg, arch)


def test_train_config_puts_snapshots_at_budget_fractions():
    cfg = load_config(PARAMS, profile="laptop")
    for size, s in cfg.hybrid_attention.sizes.items():
        train = runs.train_config(cfg, size, seed=1)
        assert train.seed == 1
        assert train.checkpoint_tokens == sorted(set(train.checkpoint_tokens))
        assert train.checkpoint_tokens[-1] == train.max_tokens <= s.max_tokens
        assert len(train.checkpoint_tokens) == len(cfg.hybrid_attention.budget_fractions)
        assert train.seq_len == cfg.hybrid_attention.seq_len


def test_laptop_stream_puts_answers_beyond_the_small_windows_stacked_receptive_field():
    """Laptop: 8 layers, full attention at 4 and 8, 1-token SWA-small windows: 6 efficient layers see 6 tokens
    back, so every answer sits at least 7 tokens after its needle; the mix follows the run's seed. The paper
    profile trains on the plain stream."""
    cfg = load_config(PARAMS, profile="laptop")
    h = cfg.hybrid_attention
    assert h.window("swa-small") == 1 and h.sizes["s1"].num_layers == 8
    mix = runs.retrieval_mix(cfg, seed=1)
    assert mix.min_distance == 6 * 1 + 1 and mix.seed == 1 and mix.answer_weight == h.retrieval.answer_weight
    assert mix.value_digits == h.ruler.value_digits  # the RULER/probe template's values
    assert runs.train_config(cfg, "s1", seed=1).seed == 1
    paper = load_config(PARAMS, profile="paper")
    assert paper.hybrid_attention.retrieval is None and runs.retrieval_mix(paper, seed=0) is None
    assert runs.sampler(paper, Paths(ROOT), seed=0) is None


def _stages() -> dict:
    return yaml12.loads((PIPELINE / "dvc.yaml").read_text())["stages"]


def test_dvc_iterates_over_exactly_the_papers_architectures():
    stages = _stages()
    for name in ("pretrain", "evaluate"):
        assert stages[name]["foreach"] == "${hybrid_attention.architectures}"
    assert tuple(yaml12.loads(PARAMS.read_text())["hybrid_attention"]["architectures"]) == ARCHITECTURES
    assert tuple(load_config(PARAMS, profile="smoke").hybrid_attention.architectures) == ARCHITECTURES


def test_pipeline_declares_the_artifact_paths_metrics_and_plots():
    stages, paths = _stages(), Paths(Path("."))
    pretrain = stages["pretrain"]["do"]
    dirs = artifacts.run_dirs(paths, "${item}", "s1", 0)
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in pretrain["outs"]]
    assert str(dirs["out"].parent) in outs
    # resumable checkpoints are the trainer's, not an output: a clone that pulled the models is complete
    assert str(dirs["ckpt"].parent).startswith("data/checkpoints/") and not any(
        o.startswith("data/checkpoints") for o in outs)
    assert str(dirs["log"].parent) in outs
    assert str(artifacts.key_tokens(paths)) in stages["key-tokens"]["outs"]
    assert str(artifacts.key_tokens(paths)) in stages["evaluate"]["do"]["deps"]
    assert str(artifacts.eval_dir(paths, "${item}")) in [next(iter(o)) for o in stages["evaluate"]["do"]["outs"]]
    rep = stages["report"]
    assert str(artifacts.eval_root(paths)) in rep["deps"] and str(artifacts.laziness_dir(paths)) in rep["deps"]
    assert f"pipelines/hybrid_attention/{CLAIMS_FILE}" in rep["deps"]
    assert [next(iter(m)) for m in rep["metrics"]] == [str(artifacts.results(paths) / "metrics.json")]
    assert [next(iter(m)) for m in rep["plots"]] == [str(artifacts.figures(paths))]
    assert all(st.get("wdir", st.get("do", {}).get("wdir")) == "../.." for st in stages.values())


def test_artifacts_use_the_papers_data_and_checkpoint_folders(tmp_path):
    paths = Paths(tmp_path)
    dirs = artifacts.run_dirs(paths, "gdn", "s2", 1)
    assert dirs["out"] == tmp_path / "data/hybrid_attention/models/gdn/s2-seed1"
    assert dirs["ckpt"] == tmp_path / "data/checkpoints/hybrid_attention/gdn/s2-seed1"
    assert dirs["log"] == tmp_path / "results/hybrid_attention/train/gdn/s2-seed1.csv"
    assert artifacts.key_tokens(paths) == tmp_path / "data/hybrid_attention/key_tokens.safetensors"
    with pytest.raises(FileNotFoundError, match="dvc repro pipelines/hybrid_attention/dvc.yaml:pretrain@gdn"):
        runs.checkpoints(paths, "gdn", "s2", 1)


def _write(tmp_path, edit) -> Path:
    """A copy of params.yaml and the profiles with ``edit`` applied to the smoke profile's section."""
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    smoke = tmp_path / "profiles" / "smoke.yaml"
    raw = yaml12.loads(smoke.read_text())
    edit(raw["hybrid_attention"])
    smoke.write_text(yaml12.dumps(raw))
    return tmp_path / "params.yaml"


@pytest.mark.parametrize("edit,key,message", [
    # A profile's mapping merges key by key onto params.yaml's, so an extra key (not a missing one) fails here.
    (lambda h: h.update(window_fractions={"tiny": 0.1}), "window_fractions", "small, mid, large"),
    (lambda h: h.setdefault("window_fractions", {}).update(large=1.5), "window_fractions.large", "(0, 1]"),
    (lambda h: h.update(budget_fractions=[0.5, 0.9]), "budget_fractions", "end at 1.0"),
    (lambda h: h.update(budget_fractions=[0.5, 0.25, 1.0]), "budget_fractions", "increasing"),
    (lambda h: h.update(micro_batch_size=3), "micro_batch_size", "must divide"),
    (lambda h: h["probes"].update(samples=20), "probes.samples", "classes"),
    (lambda h: h["restriction"].update(architectures=["swa-huge"]), "restriction.architectures", "not allowed"),
    (lambda h: h["sizes"]["s1"].update(num_heads=3), "sizes.s1.num_heads", "even head dim"),
    (lambda h: h.update(sizes_typo={}), "sizes_typo", "unknown key"),
    (lambda h: h.update(seeds=[0, 0]), "seeds", "none twice"),
    (lambda h: h["retrieval"].update(share=1.5), "retrieval.share", "above the maximum"),
    (lambda h: h["retrieval"].update(kinds=["needle"]), "retrieval.kinds", "not allowed"),
    (lambda h: h["retrieval"].update(answer_weight=0.5), "retrieval.answer_weight", "below the minimum"),
])
def test_invalid_hybrid_settings_are_rejected_with_the_key(tmp_path, edit, key, message):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, edit), profile="laptop")
    assert f"profiles/smoke.yaml: hybrid_attention.{key}" in str(err.value) and message in str(err.value)


# ---------------------------------------------------------------- claim metrics on hand-made tables
def _tables() -> dict[str, pd.DataFrame]:
    rows = []
    early = {"full": 30.0, "swa-small": 40.0, "swa-large": 80.0, "swa-small-nope": 40.0}
    final = {"full": 10.0, "swa-small": 11.0, "swa-large": 12.0, "swa-small-nope": 11.0}
    loss = {"full": 3.00, "swa-small": 3.03, "swa-large": 3.06, "swa-small-nope": 3.03}
    for arch in early:
        for tokens, lp in ((100, early[arch]), (400, final[arch])):
            for size, params in (("s1", 1000), ("s2", 2000)):
                rows.append({"arch": arch, "size": size, "parameters": params, "tokens": tokens,
                             "val_loss": loss[arch] + (0.5 if tokens == 100 else 0.0), "longppl": lp})
    restriction = pd.DataFrame([
        {"arch": "swa-mid", "target": "none", "window": 0, "ratio": 1.0},
        {"arch": "swa-mid", "target": "full", "window": 8, "ratio": math.e},
        {"arch": "swa-mid", "target": "efficient", "window": 8, "ratio": 1.0},
    ])
    probes = pd.DataFrame([
        {"arch": "swa-small", "feature": "residual", "layer": -1, "accuracy": 0.125, "full_attention": False},
        {"arch": "swa-small", "feature": "residual", "layer": 0, "accuracy": 0.125, "full_attention": False},
        {"arch": "swa-small", "feature": "residual", "layer": 1, "accuracy": 0.625, "full_attention": True},
        # Never above chance (bar: 19 of 100 = the 97.5% quantile of Binomial(100, 1/8), 2 layers): excluded.
        {"arch": "swa-large", "feature": "residual", "layer": -1, "accuracy": 0.125, "full_attention": False},
        {"arch": "swa-large", "feature": "residual", "layer": 0, "accuracy": 0.18, "full_attention": False},
        {"arch": "swa-large", "feature": "residual", "layer": 1, "accuracy": 0.05, "full_attention": True},
    ]).assign(chance=0.125, n_test=100)
    # swa-small halves its distance at 200 tokens (0.4 → 0.2), swa-large at 400 (0.4 → 0.3 → 0.2 → 0).
    trace = pd.DataFrame([
        {"arch": a, "tokens": t, "wq_relative": v, "wk_relative": v, "mass": 0.1, "entropy": 0.5}
        for a, vals in (("swa-small", (0.4, 0.2, 0.1, 0.0)), ("swa-large", (0.4, 0.3, 0.2, 0.0)))
        for t, v in zip((100, 200, 400, 800), vals)
    ])
    ruler = pd.DataFrame([{"arch": "swa-small", "accuracy": 0.25}, {"arch": "swa-small-nope", "accuracy": 0.5},
                          {"arch": "full", "accuracy": 0.9}]).assign(task="single_needle", length_multiplier=1.0)
    wu = pd.DataFrame([{"arch": "swa-small", "score": 0.3}, {"arch": "swa-small", "score": 0.0},
                       {"arch": "swa-large", "score": 0.15}]).assign(layer_row=0, head=0)
    tables = {"checkpoints": pd.DataFrame(rows), "restriction": restriction, "ruler": ruler, "probes": probes,
              "influence": pd.DataFrame(), "trace": trace, "wu": wu}
    return {name: t.assign(seed=0) if len(t) else t for name, t in tables.items()}


def _two_seeds(tables: dict[str, pd.DataFrame], edit=None) -> dict[str, pd.DataFrame]:
    """``tables`` (seed 0) and a copy as seed 1, ``edit(copy)`` applied to the copy's tables."""
    other = {name: t.assign(seed=1) if len(t) else t for name, t in tables.items()}
    if edit:
        edit(other)
    return {name: pd.concat([tables[name], other[name]], ignore_index=True) for name in tables}


# Vocabulary e^4 (an untrained model's loss is 4 nats); seq_len 64; swa-mid sees 16 tokens.
CTX = report.Context(vocab_size=round(math.exp(4)), seq_len=64,
                     windows={"full": None, "swa-small": 2, "swa-mid": 16, "swa-large": 32, "swa-small-nope": 2})


def test_claim_metrics_on_a_hand_made_table():
    values, evidence = report.claim_values(_tables(), CTX)
    assert values["loss_spread"] == pytest.approx(0.06 / 3.0)
    # Loss 3.5 at 100 tokens is only 1/3 of the drop from 4 nats to 3: "early" is not the plateau snapshot.
    assert evidence["longppl_spread_ratio"]["seed0"]["early_tokens"] == 400
    assert math.isnan(values["longppl_spread_ratio"])  # early is the last snapshot: nothing to compare
    assert values["restriction_gap"] == pytest.approx(1.0)
    assert values["probe_gain_gap"] == pytest.approx(0.5 - 0.0)
    assert values["probe_informative_hybrids"] == 1
    assert values["qk_half_tokens_log_ratio"] == pytest.approx(math.log(400 / 200))
    assert values["retrieval_head_score"] == pytest.approx(0.15)
    assert values["full_needle_accuracy"] == pytest.approx(0.9)
    assert values["nope_ruler_gain"] == pytest.approx(0.25)
    assert values["nope_loss_change"] == pytest.approx(0.0)
    assert values["size_span"] == 0.0  # two sizes: no held-out size for a scaling-law test
    assert evidence["loss_spread"]["seed0"]["final_val_loss"]["full"] == 3.0


def test_early_snapshot_is_the_first_past_the_loss_knee_for_every_architecture():
    # ln V = 4; final 2. Progress 0.5 / 0.9 / 1 for "a", 0.9 / 0.95 / 1 for "b": early = the second snapshot.
    curves = pd.DataFrame([{"arch": a, "tokens": t, "val_loss": v}
                           for a, vals in (("a", (3.0, 2.2, 2.0)), ("b", (2.2, 2.1, 2.0)))
                           for t, v in zip((10, 20, 40), vals)])
    assert report.early_snapshot(curves, round(math.exp(4))) == 20
    tables = _tables()
    tables["checkpoints"]["tokens"] = tables["checkpoints"]["tokens"].replace({100: 200})
    tables["checkpoints"].loc[tables["checkpoints"].tokens == 200, "val_loss"] -= 0.45  # past the knee at 200
    values, evidence = report.claim_values(tables, CTX)
    assert evidence["longppl_spread_ratio"]["seed0"]["early_tokens"] == 200
    assert values["longppl_spread_ratio"] == pytest.approx(math.log(12 / 10) / math.log(80 / 30))
    assert values["swa_large_early_gap"] == pytest.approx(math.log(80 / 40))


@pytest.mark.parametrize("distance, expected", [
    ((1.0, 0.5, 0.0), 200.0),                       # exactly half at a snapshot
    ((1.0, 0.75, 0.25), 200 * 2 ** 0.5),            # halfway between 200 and 400 in log tokens
    ((1.0, 0.9, 0.8), math.nan),                    # never halved
    ((0.0, 0.0, 0.0), math.nan),                    # nothing to converge
])
def test_half_distance_tokens_interpolates_in_log_tokens(distance, expected):
    got = report.half_distance_tokens([100, 200, 400], distance)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_restriction_gap_excludes_windows_that_change_nothing():
    tables = _tables()
    extra = pd.DataFrame([  # swa-mid's own window is 16, the context 64: these restrict nothing
        {"arch": "swa-mid", "target": "efficient", "window": 16, "ratio": 5.0},
        {"arch": "swa-mid", "target": "efficient", "window": 32, "ratio": 5.0},
        {"arch": "swa-mid", "target": "full", "window": 64, "ratio": 0.2},
        {"arch": "swa-mid", "target": "efficient", "window": 4, "ratio": 1.0},
    ]).assign(seed=0)
    tables["restriction"] = pd.concat([tables["restriction"][lambda d: d.window != 8], extra])
    tables["restriction"] = pd.concat([tables["restriction"], pd.DataFrame([
        {"arch": "swa-mid", "target": "full", "window": 4, "ratio": math.e, "seed": 0}])])
    values, evidence = report.claim_values(tables, CTX)
    assert values["restriction_gap"] == pytest.approx(1.0)
    assert sorted(evidence["restriction_gap"]["seed0"]["excluded_no_op"]) == [
        "swa-mid efficient 16", "swa-mid efficient 32", "swa-mid full 64"]


def test_failed_preconditions_make_the_long_context_claims_not_testable():
    criteria = load_criteria(PIPELINE / CLAIMS_FILE)
    tables = _two_seeds(_tables())
    tables["ruler"].loc[tables["ruler"].arch == "full", "accuracy"] = 0.5  # Full cannot retrieve
    tables["wu"]["score"] = 0.0                                            # no retrieval heads
    tables["probes"] = tables["probes"][tables["probes"].arch == "swa-large"]  # probes at chance
    values, evidence = report.claim_values(tables, CTX)
    rows = {r["id"]: r for r in build_ledger(criteria, values, evidence)}
    long_context = [cid for cid, c in criteria.items() if c.precondition is not None]
    assert {"c2_longppl_converges", "c3_receptive_field", "c4_probes", "c5_laziness",
            "c6_nope_long_context"} <= set(long_context)
    assert all(rows[cid]["verdict"] == "not testable at this scale" for cid in long_context)
    assert rows["c1_loss_overlap"]["verdict"] != "not testable at this scale"
    # With the preconditions met (the hand-made table, two seeds) they are judged.
    rows = {r["id"]: r for r in build_ledger(criteria, *report.claim_values(_two_seeds(_tables()), CTX))}
    assert rows["c5_laziness"]["verdict"] == "reproduced" and rows["c4_probes"]["verdict"] == "reproduced"


def test_preconditions_must_hold_in_every_seed():
    """Preconditions take the smallest value over seeds: Full retrieving 0.9 and 0.7 does not pass a 0.8 bar
    (the mean would); a hybrid whose probes beat chance in one seed only is left out of claim 4 in both."""
    def weaker(t):
        t["ruler"].loc[t["ruler"].arch == "full", "accuracy"] = 0.7
        t["probes"].loc[t["probes"].arch == "swa-small", "accuracy"] = 0.125  # at chance in seed 1
    values, evidence = report.claim_values(_two_seeds(_tables(), weaker), CTX)
    assert values["full_needle_accuracy"] == pytest.approx(0.7)
    assert evidence["full_needle_accuracy"]["by_seed"] == {0: 0.9, 1: 0.7}
    assert values["probe_informative_hybrids"] == 0 and math.isnan(values["probe_gain_gap"])
    assert evidence["probe_gain_gap"]["seed0"]["informative_hybrids"] == ["swa-small"]
    assert evidence["probe_gain_gap"]["seed0"]["averaged_over"] == []
    rows = {r["id"]: r for r in build_ledger(load_criteria(PIPELINE / CLAIMS_FILE), values, evidence)}
    assert rows["c2_longppl_converges"]["verdict"] == rows["c4_probes"]["verdict"] == "not testable at this scale"


def test_values_are_seed_means_and_margins_two_standard_errors_of_them():
    """Seed 1's Full has a 0.03 lower loss: loss_spread is 0.02 in seed 0 and 0.03 in seed 1 → mean 0.025, standard
    error |0.03 − 0.02| / 2 = 0.005, margin 0.01; one seed alone gives no noise, so every margin-judged claim is
    inconclusive."""
    def worse_full(t):
        t["checkpoints"].loc[t["checkpoints"].arch == "full", "val_loss"] -= 0.03
    values, evidence = report.claim_values(_two_seeds(_tables(), worse_full), CTX)
    assert evidence["loss_spread"]["by_seed"] == {0: pytest.approx(0.02), 1: pytest.approx(0.09 / 2.97, abs=1e-4)}
    assert values["loss_spread"] == pytest.approx((0.02 + 0.09 / 2.97) / 2)
    assert values["loss_spread_seed_se"] == pytest.approx(abs(0.09 / 2.97 - 0.02) / 2)
    criteria = load_criteria(PIPELINE / CLAIMS_FILE)
    row = next(r for r in build_ledger(criteria, values, evidence) if r["id"] == "c1_loss_overlap")
    # 2·SE = 0.0103 is above the row's floor (0.01, its old round margin)
    assert row["margin"] == pytest.approx(2 * values["loss_spread_seed_se"])
    assert row["margin"] > criteria["c1_loss_overlap"].margin_floor
    assert row["verdict"] == "reproduced"
    single = report.claim_values(_tables(), CTX)
    assert math.isnan(single[0]["loss_spread_seed_se"])
    assert {r["id"]: r["verdict"] for r in build_ledger(criteria, *single)}["c1_loss_overlap"] == "inconclusive"


def test_missing_measurements_give_nan_not_a_verdict():
    tables = _tables()
    tables["restriction"] = pd.DataFrame()
    tables["trace"] = pd.DataFrame()
    values, _ = report.claim_values(tables, CTX)
    assert math.isnan(values["restriction_gap"]) and math.isnan(values["qk_half_tokens_log_ratio"])


def test_probe_metric_is_nan_when_no_hybrid_finds_the_needle_above_chance():
    tables = _tables()
    tables["probes"] = tables["probes"][tables["probes"].arch == "swa-large"]
    values, evidence = report.claim_values(tables, CTX)
    assert math.isnan(values["probe_gain_gap"])
    assert evidence["probe_gain_gap"]["seed0"]["informative_hybrids"] == []
    assert evidence["probe_gain_gap"]["seed0"]["above_chance_bar"]["swa-large"] == pytest.approx(0.19)


def test_probe_metric_asks_to_rerun_the_evaluation_for_tables_without_n_test():
    tables = _tables()
    tables["probes"] = tables["probes"].drop(columns="n_test")
    with pytest.raises(ValueError, match="re-run the evaluate stage"):
        report.claim_values(tables, CTX)


def test_scaling_fits_recover_a_known_law_per_architecture():
    alpha, beta, b, c = 0.25, 0.4, 20.0, 30.0
    rows = [{"arch": "full", "parameters": n, "tokens": d, "val_loss": b * n ** -alpha + c * d ** -beta,
             "longppl": math.exp(b * n ** -alpha + c * d ** -beta)}
            for n in (1e5, 3e5, 1e6) for d in (1e6, 3e6, 1e7, 3e7)]
    fits = report.scaling_fits(pd.DataFrame(rows)).set_index("target")
    assert fits.loc["val_loss", "alpha"] == pytest.approx(alpha, abs=0.01)
    assert fits.loc["val_loss", "beta"] == pytest.approx(beta, abs=0.02)
    assert fits.loc["ln_longppl", "r2"] > 0.99
    assert fits.loc["val_loss", "heldout_rmse"] < 0.01  # the largest size (1e6) was held out and predicted


def test_scaling_claim_compares_exponent_spreads_with_the_largest_size_held_out():
    laws = {"full": (0.3, 0.3), "swa-large": (0.4, 0.6)}  # (β of loss, β of ln LongPPL)
    rows = [{"arch": a, "size": f"s{i}", "parameters": n, "tokens": d,
             "val_loss": 20 * n ** -0.25 + 30 * d ** -bl, "longppl": math.exp(20 * n ** -0.25 + 30 * d ** -bp)}
            for a, (bl, bp) in laws.items() for i, n in enumerate((1e5, 3e5, 1e6)) for d in (1e6, 3e6, 1e7, 3e7)]
    tables = _tables()
    tables["checkpoints"] = pd.DataFrame(rows).assign(seed=0)
    values, evidence = report.claim_values(tables, CTX)
    assert values["size_span"] == pytest.approx(10.0)
    assert values["exponent_spread_ratio"] == pytest.approx(0.3 / 0.1, rel=0.1)
    assert evidence["exponent_spread_ratio"]["seed0"]["heldout_rmse"]["val_loss"]["full"] < 0.01


def test_load_tables_reads_every_architecture_from_the_artifact_paths(tmp_path):
    paths, tables = Paths(tmp_path), _tables()
    curves = tables["checkpoints"]
    for arch, rows in curves.groupby("arch"):
        artifacts.eval_dir(paths, arch).mkdir(parents=True)
        rows.to_csv(artifacts.eval_table(paths, arch, "checkpoints"), index=False)
    artifacts.laziness_dir(paths).mkdir(parents=True)
    tables["trace"].to_csv(artifacts.laziness_table(paths, "trace"), index=False)
    loaded = report.load_tables(paths)
    assert set(loaded) == set(artifacts.EVAL_TABLES) | set(artifacts.LAZINESS_TABLES)
    assert sorted(loaded["checkpoints"].arch.unique()) == sorted(curves.arch.unique())
    assert len(loaded["checkpoints"]) == len(curves) and len(loaded["trace"]) == len(tables["trace"])
    assert loaded["restriction"].empty and loaded["wu"].empty


def test_report_gives_every_claim_metric_and_publishes_the_ledger(tmp_path):
    criteria = load_criteria(PIPELINE / CLAIMS_FILE)
    tables = _tables()
    tables["restriction"] = pd.DataFrame()  # an unmeasured metric is NaN, never missing
    values, evidence = report.claim_values(tables, CTX)
    assert {c.metric for c in criteria.values()} <= set(values)
    assert {c.precondition.metric for c in criteria.values() if c.precondition} <= set(values)
    assert {c.noise_metric for c in criteria.values() if c.noise_metric} <= set(values)
    publish(tmp_path, "hybrid_attention", "smoke", criteria, values, evidence)
    ledger = json.loads((tmp_path / "claims.json").read_text())
    assert {row["id"] for row in ledger["claims"]} == set(criteria)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "restriction_gap" not in metrics and metrics["c3_receptive_field_reproduced"] == 0
    assert metrics["qk_half_tokens_log_ratio"] == pytest.approx(math.log(2))
    assert (tmp_path / "claims.md").read_text().startswith("_smoke profile_")
