"""Paper 1 pipeline: configuration, architecture specs, paper sizes, claim metrics on hand-made tables."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lmrepro.config import ConfigError, load_config
from lmrepro.config.hybrid import ARCHITECTURES
from lmrepro.models import DecoderLM
from lmrepro.papers import hybrid, hybrid_report

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
PUBLISHED = {"s1": 14_999_424, "s2": 31_470_080, "s3": 64_901_760, "s4": 104_427_264}


def test_paper_sizes_match_the_published_parameter_counts_within_5_percent():
    cfg = load_config(PARAMS, profile="paper")
    for size, published in PUBLISHED.items():
        with torch.device("meta"):
            n = DecoderLM(hybrid.arch_spec(cfg, "full", size)).num_parameters()
        assert abs(n - published) / published < 0.05, (size, n, published)


@pytest.mark.parametrize("profile,expected", [("laptop", (4, 16, 64)), ("paper", (128, 512, 2048))])
def test_windows_are_the_papers_fractions_of_the_context(profile, expected):
    h = load_config(PARAMS, profile=profile).hybrid_attention
    assert tuple(h.window(a) for a in ("swa-small", "swa-mid", "swa-large")) == expected
    assert h.window("full") is None and h.window("gdn") is None


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_has_the_fixed_hybrid_pattern(arch):
    cfg = load_config(PARAMS, profile="laptop")
    spec = hybrid.arch_spec(cfg, arch, "s1")
    every = cfg.hybrid_attention.full_attention_every
    for i, layer in enumerate(spec.layers):
        if arch == "full" or (i + 1) % every == 0:
            assert layer.is_full_attention
            assert layer.rope == (not arch.endswith("-nope"))  # NoPE only on the full-attention layers
        else:
            assert not layer.is_full_attention
            assert layer.rope or layer.mixer != "attention"
            assert layer.name == hybrid.mixer_token(cfg, arch)


def test_train_config_puts_snapshots_at_budget_fractions():
    cfg = load_config(PARAMS, profile="laptop")
    for size, s in cfg.hybrid_attention.sizes.items():
        train = hybrid.train_config(cfg, size)
        assert train.checkpoint_tokens == sorted(set(train.checkpoint_tokens))
        assert train.checkpoint_tokens[-1] == train.max_tokens <= s.max_tokens
        assert len(train.checkpoint_tokens) == len(cfg.hybrid_attention.budget_fractions)
        assert train.seq_len == cfg.hybrid_attention.seq_len


def test_dvc_iterates_over_exactly_the_papers_architectures():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("hybrid-pretrain", "hybrid-evaluate"):
        assert tuple(stages[name]["foreach"]) == ARCHITECTURES


def _write(tmp_path, edit) -> Path:
    raw = yaml.safe_load(PARAMS.read_text())
    edit(raw["profiles"]["smoke"]["hybrid_attention"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("edit,key,message", [
    (lambda h: h.update(window_fractions={"small": 0.1}), "window_fractions", "small, mid, large"),
    (lambda h: h["window_fractions"].update(large=1.5), "window_fractions.large", "(0, 1]"),
    (lambda h: h.update(budget_fractions=[0.5, 0.9]), "budget_fractions", "end at 1.0"),
    (lambda h: h.update(budget_fractions=[0.5, 0.25, 1.0]), "budget_fractions", "increasing"),
    (lambda h: h.update(micro_batch_size=3), "micro_batch_size", "must divide"),
    (lambda h: h["probes"].update(samples=20), "probes.samples", "classes"),
    (lambda h: h["restriction"].update(architectures=["swa-huge"]), "restriction.architectures", "not allowed"),
    (lambda h: h["sizes"]["s1"].update(num_heads=3), "sizes.s1.num_heads", "even head dim"),
    (lambda h: h.update(sizes_typo={}), "sizes_typo", "unknown key"),
])
def test_invalid_hybrid_settings_are_rejected_with_the_key(tmp_path, edit, key, message):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, edit), profile="laptop")
    assert f"profiles.smoke.hybrid_attention.{key}" in str(err.value) and message in str(err.value)


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
    trace = pd.DataFrame([
        {"arch": a, "tokens": t, "wq_relative": v, "wk_relative": v, "mass": 0.1, "entropy": 0.5}
        for a, vals in (("swa-small", (0.2, 0.0)), ("swa-large", (0.5, 0.0))) for t, v in zip((100, 400), vals)
    ])
    ruler = pd.DataFrame([{"arch": "swa-small", "accuracy": 0.25}, {"arch": "swa-small-nope", "accuracy": 0.5}])
    return {"checkpoints": pd.DataFrame(rows), "restriction": restriction, "ruler": ruler, "probes": probes,
            "influence": pd.DataFrame(), "trace": trace, "wu": pd.DataFrame()}


def test_claim_metrics_on_a_hand_made_table():
    values, evidence = hybrid_report.claim_values(_tables())
    assert values["loss_spread"] == pytest.approx(0.06 / 3.0)
    assert values["longppl_spread_ratio"] == pytest.approx(math.log(12 / 10) / math.log(80 / 30))
    assert values["swa_large_early_gap"] == pytest.approx(math.log(80 / 40))
    assert values["restriction_gap"] == pytest.approx(1.0)
    assert values["probe_gain_gap"] == pytest.approx(0.5 - 0.0)
    assert values["qk_distance_gap"] == pytest.approx(0.5 - 0.2)
    assert values["nope_ruler_gain"] == pytest.approx(0.25)
    assert values["nope_loss_change"] == pytest.approx(0.0)
    assert evidence["loss_spread"]["final_val_loss"]["full"] == 3.0


def test_missing_measurements_give_nan_not_a_verdict():
    tables = _tables()
    tables["restriction"] = pd.DataFrame()
    tables["trace"] = pd.DataFrame()
    values, _ = hybrid_report.claim_values(tables)
    assert math.isnan(values["restriction_gap"]) and math.isnan(values["qk_distance_gap"])


def test_probe_metric_is_nan_when_no_hybrid_finds_the_needle_above_chance():
    tables = _tables()
    tables["probes"] = tables["probes"][tables["probes"].arch == "swa-large"]
    values, evidence = hybrid_report.claim_values(tables)
    assert math.isnan(values["probe_gain_gap"])
    assert evidence["probe_gain_gap"]["informative_hybrids"] == []
    assert evidence["probe_gain_gap"]["above_chance_bar"]["swa-large"] == pytest.approx(0.19)


def test_probe_metric_asks_to_rerun_the_evaluation_for_tables_without_n_test():
    tables = _tables()
    tables["probes"] = tables["probes"].drop(columns="n_test")
    with pytest.raises(ValueError, match="re-run hybrid-evaluate"):
        hybrid_report.claim_values(tables)


def test_scaling_fits_recover_a_known_law_per_architecture():
    alpha, beta, b, c = 0.25, 0.4, 20.0, 30.0
    rows = [{"arch": "full", "parameters": n, "tokens": d, "val_loss": b * n ** -alpha + c * d ** -beta,
             "longppl": math.exp(b * n ** -alpha + c * d ** -beta)}
            for n in (1e5, 3e5, 1e6) for d in (1e6, 3e6, 1e7, 3e7)]
    fits = hybrid_report.scaling_fits(pd.DataFrame(rows)).set_index("target")
    assert fits.loc["val_loss", "alpha"] == pytest.approx(alpha, abs=0.01)
    assert fits.loc["val_loss", "beta"] == pytest.approx(beta, abs=0.02)
    assert fits.loc["ln_longppl", "r2"] > 0.99
