"""lmrepro.budget: every training stage is costed, the FLOPs agree with the project's accountant, the mixer
terms order as they must, GPU-hours scale with MFU, the CLI works, and parameter counts are exact."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROFILE_NAMES = ("smoke", "laptop", "mid", "paper")


@pytest.fixture(scope="module")
def laptop():
    from lmrepro.config import load_config

    return load_config(ROOT / "params.yaml", profile="laptop")


def _lookup(params: dict, expr: str):
    """The list a DVC ``foreach: ${a.b}`` names, from params.yaml (the file the pipelines read as vars)."""
    value = params
    for key in re.fullmatch(r"\$\{(.+)\}", expr).group(1).split("."):
        value = value[key]
    return value


def dvc_training_stages() -> set[str]:
    """Every training stage of the DVC files, named as ``dvc repro`` takes them (foreach expanded): the stages
    named for pretraining or that depend on the LoRA package (fine-tuning)."""
    from lmrepro import yaml12

    params = yaml12.load(ROOT / "params.yaml")
    names = set()
    for path in [ROOT / "dvc.yaml", *sorted((ROOT / "pipelines").glob("*/dvc.yaml"))]:
        prefix = "" if path.parent == ROOT else f"{path.relative_to(ROOT).as_posix()}:"
        for name, stage in yaml12.load(path)["stages"].items():
            body = stage.get("do", stage)
            trains = name.endswith("pretrain") or "src/lmrepro/lora" in body.get("deps", [])
            if not trains:
                continue
            items = _lookup(params, stage["foreach"]) if "foreach" in stage else [None]
            names |= {f"{prefix}{name}" + (f"@{item}" if item is not None else "") for item in items}
    return names


def test_every_training_stage_of_the_dvc_files_is_budgeted(laptop):
    from lmrepro.budget import stages

    expected = dvc_training_stages()
    assert len(expected) >= 1 + 8 + 8 + 7  # foundation, 8 architectures, 8 variants, 3 × 2 tasks + mechanisms
    budgeted = [s.name for s in stages(laptop)]
    assert len(budgeted) == len(set(budgeted))
    assert set(budgeted) == expected
    for s in stages(laptop):
        assert s.items and all(item.flops > 0 for _, item in s.items), s.name


def test_dense_constant_width_run_matches_the_accountant(laptop):
    from lmrepro.analysis.flops import accounting, training_flops
    from lmrepro.budget import forward_flops_per_token, pretrain_flops, xformer_stages
    from lmrepro.papers.xformer.runs import run_spec, train_config

    x = laptop.xformer
    size = next(iter(x.sizes))
    spec = run_spec(laptop, "baseline", size)
    assert spec.widths is None and all(layer.is_full_attention for layer in spec.layers)
    tokens = train_config(laptop, size).max_tokens
    stage = next(s for s in xformer_stages(laptop) if s.name.endswith("@baseline"))
    item = next(item for _, item in stage.items if item.label == size)
    reference = accounting(spec, x.seq_len, tokens)["train_flops"]
    assert item.tokens == tokens
    assert item.flops == pytest.approx(reference, rel=1e-12)
    h, L, V = spec.hidden_size, spec.num_layers, spec.vocab_size
    assert item.flops == pytest.approx(training_flops([h] * L, h, V, x.seq_len, tokens), rel=1e-12)
    # The generic per-parameter rule (used for every other spec) is the same formula on this layout.
    assert 3 * forward_flops_per_token(spec, x.seq_len) * tokens == pytest.approx(reference, rel=1e-12)
    assert pretrain_flops(spec, x.seq_len, tokens) == pytest.approx(reference, rel=1e-12)


def test_variable_width_runs_match_the_accountant(laptop):
    from lmrepro.analysis.flops import accounting
    from lmrepro.budget import xformer_stages
    from lmrepro.papers.xformer.runs import run_spec, train_config

    x = laptop.xformer
    for stage in xformer_stages(laptop):
        variant = stage.name.split("@")[1]
        if variant not in ("x", "learned", "bottleneck"):
            continue
        runs = {r.name: r for r in x.variant_runs(variant)}
        assert sorted(runs) == sorted(item.label for _, item in stage.items)
        for _, item in stage.items:
            r = runs[item.label]
            spec = run_spec(laptop, r.variant, r.size, r.bottleneck)
            tokens = train_config(laptop, r.size, r.seed, r.token_fraction).max_tokens
            assert item.flops == pytest.approx(accounting(spec, x.seq_len, tokens)["train_flops"], rel=1e-12)


def test_sliding_window_costs_less_than_dense_attention_at_equal_size(laptop):
    from lmrepro.budget import mixing_flops_per_token, model_shape, pretrain_flops
    from lmrepro.models import LayerSpec
    from lmrepro.papers.hybrid_attention.runs import arch_spec

    s = laptop.hybrid_attention.seq_len
    dense = arch_spec(laptop, "full", "s1")
    window = s // 4
    swa = dataclasses.replace(dense, layers=tuple(LayerSpec(window=window) for _ in dense.layers))
    assert model_shape(swa) == model_shape(dense)  # a window holds no parameters
    tokens = 1e6
    gap = pretrain_flops(dense, s, tokens) - pretrain_flops(swa, s, tokens)
    assert gap > 0
    # Exactly the keys beyond the window: 3 × 4·(s − W)·d per token and layer.
    assert gap == pytest.approx(3 * 4 * (s - window) * dense.hidden_size * dense.num_layers * tokens, rel=1e-9)
    # A window at least as long as the context is dense attention.
    wide = dataclasses.replace(dense, layers=tuple(LayerSpec(window=s) for _ in dense.layers))
    assert mixing_flops_per_token(wide, s) == mixing_flops_per_token(dense, s)


def test_every_mixer_has_a_positive_term_below_dense_attention_at_long_context(laptop):
    from lmrepro.budget import mixing_flops_per_token
    from lmrepro.models import LayerSpec
    from lmrepro.papers.hybrid_attention.runs import arch_spec

    dense = arch_spec(laptop, "full", "s1")
    s = 16384
    full = mixing_flops_per_token(dense, s)
    for mixer in ("lightning", "mamba2", "gdn"):
        spec = dataclasses.replace(dense, layers=tuple(LayerSpec(mixer) for _ in dense.layers))
        assert 0 < mixing_flops_per_token(spec, s) < full / 10, mixer
        # Linear in the context: the per-token term does not grow with s once s exceeds the chunk.
        assert mixing_flops_per_token(spec, 2 * s) == mixing_flops_per_token(spec, s), mixer


def test_gpu_hours_scale_inversely_with_mfu(laptop):
    from lmrepro.budget import PEAK_BF16_FLOPS, budget, gpu_hours

    a, b = budget(laptop, "H100", mfu=0.2), budget(laptop, "H100", mfu=0.5)
    assert a["total"]["flops"] == b["total"]["flops"]
    assert a["total"]["gpu_hours"] * 0.2 == pytest.approx(b["total"]["gpu_hours"] * 0.5, rel=1e-12)
    for pa, pb in zip(a["papers"], b["papers"]):
        for sa, sb in zip(pa["stages"], pb["stages"]):
            assert sa["gpu_hours"] / sb["gpu_hours"] == pytest.approx(2.5, rel=1e-12)
    assert gpu_hours(3600 * PEAK_BF16_FLOPS["A100"], PEAK_BF16_FLOPS["A100"], 1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="mfu"):
        gpu_hours(1.0, 1.0, 0.0)


def test_mfu_is_read_from_a_gpu_check_report(tmp_path, laptop):
    from lmrepro.budget import ASSUMED_MFU, PEAK_BF16_FLOPS, budget, forward_flops_per_token
    from lmrepro.config import load_config
    from lmrepro.papers.hybrid_attention.runs import arch_spec

    assumed = budget(laptop, gpu_check=tmp_path / "missing.json")["mfu"]
    assert assumed["value"] == ASSUMED_MFU and not assumed["measured"] and "assumed" in assumed["source"]
    # A report as scripts/gpu_check.py writes it: tokens/s of an architecture at the paper profile's size.
    paper = load_config(ROOT / "params.yaml", profile="paper")
    per_token = 3 * forward_flops_per_token(arch_spec(paper, "full", "s1"), 16384)
    report = {"throughput": [
        {"arch": "full", "size": "s1", "seq_len": 16384, "tokens_per_s": 0.5 * PEAK_BF16_FLOPS["H200"] / per_token,
         "mfu": 0.31},  # the check's own convention (causal halving): converted, not copied
        {"arch": "gdn", "size": "s1", "error": "RuntimeError()"},
        {"arch": "full", "size": "s1", "seq_len": 64, "tokens_per_s": 900.0},  # --interpret on a CPU: no "mfu"
    ], "device": "NVIDIA H200"}
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps(report))
    measured = budget(laptop, "A100", gpu_check=path)["mfu"]
    assert measured["measured"] and measured["value"] == pytest.approx(0.5, rel=1e-9)
    assert "H200" in measured["source"]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "lmrepro.budget", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_prints_the_paper_budget_as_json_with_totals_per_paper(tmp_path):
    proc = _run_cli("--profile", "paper", "--json", "--gpu-check", str(tmp_path / "none.json"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["profile"] == "paper" and report["gpu"]["name"] == "H100"
    assert report["mfu"] == {"value": 0.4, "measured": False, "source": report["mfu"]["source"]}
    assert "assumed" in report["mfu"]["source"]
    papers = {p["paper"]: p for p in report["papers"]}
    assert set(papers) == {"foundation", "hybrid_attention", "xformer", "lora_alpha"}
    for p in papers.values():
        assert p["total"]["flops"] > 0 and p["total"]["gpu_hours"] > 0
        assert p["total"]["flops"] == pytest.approx(sum(s["flops"] for s in p["stages"]), rel=1e-12)
    assert report["total"]["gpu_hours"] == pytest.approx(sum(p["total"]["gpu_hours"] for p in papers.values()))
    # The paper-scale base of LoRA-α is Llama-3.2-1B, from its documented shape (no download).
    assert papers["lora_alpha"]["stages"][0]["parameters_max"] == 1_235_814_400


def test_cli_refuses_an_unknown_profile_naming_the_allowed_ones():
    proc = _run_cli("--profile", "bogus")
    assert proc.returncode != 0
    assert all(name in proc.stderr for name in PROFILE_NAMES), proc.stderr


def test_markdown_has_a_row_per_stage_and_totals(laptop):
    from lmrepro.budget import budget, markdown

    report = budget(laptop, mfu=0.4)
    text = markdown(report)
    assert "MFU 0.400 (given on the command line)" in text
    for p in report["papers"]:
        assert f"| **{p['paper']}** | **total** |" in text
        for s in p["stages"]:
            assert f"| {s['stage']}" in text
    assert "| **all** | **total** |" in text


def test_parameter_counts_match_the_real_models_at_laptop_size(laptop):
    from lmrepro.budget import base_model, model_shape
    from lmrepro.models import DecoderLM, LMSpec
    from lmrepro.papers.hybrid_attention.runs import arch_spec
    from lmrepro.papers.xformer.runs import run_spec

    specs = [arch_spec(laptop, arch, size) for arch in laptop.hybrid_attention.architectures
             for size in laptop.hybrid_attention.sizes]
    x = laptop.xformer
    specs += [run_spec(laptop, v, x.ablation_size) for v in ("baseline", "x", "zero", "learned")]
    foundation = LMSpec.from_config(laptop.model, vocab_size=laptop.tokenizer.vocab_size)
    specs.append(foundation)
    specs.append(dataclasses.replace(foundation, tie_embeddings=True))
    for spec in specs:
        model = DecoderLM(spec)  # real weights on the CPU: small at this profile
        assert model_shape(spec)[0] == model.num_parameters(), spec.layers[0].name
        tied = spec.tie_embeddings
        matmul = sum(p.numel() for p in model.parameters() if p.dim() >= 2) - (0 if tied else spec.vocab_size
                                                                               * spec.hidden_size)
        assert model_shape(spec)[1] == matmul
    base = base_model(laptop)
    assert base.parameters == DecoderLM(foundation).num_parameters()
    targets = laptop.papers["lora_alpha"].target_modules
    assert len(base.adapted) == len(targets) * foundation.num_layers


def test_documented_llama_shape_matches_the_transformers_architecture():
    transformers = pytest.importorskip("transformers")
    import torch

    from lmrepro.budget import HF_SHAPES, _hf_shape_base

    shape = HF_SHAPES["meta-llama/Llama-3.2-1B"]
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    ours = _hf_shape_base("meta-llama/Llama-3.2-1B", shape, targets)
    config = transformers.LlamaConfig(
        hidden_size=shape["hidden"], num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"], head_dim=shape["head_dim"], intermediate_size=shape["intermediate"],
        vocab_size=shape["vocab"], tie_word_embeddings=shape["tied"])
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    assert ours.parameters == model.num_parameters() == 1_235_814_400
    linears = [m for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in targets]
    assert ours.adapter_parameters(8) == sum(8 * (m.in_features + m.out_features) for m in linears)
    assert not math.isclose(ours.matmul, ours.parameters)  # norms are no matmul weights


@pytest.mark.parametrize("profile", ["mid", "paper"])
def test_readme_budget_table_is_the_commands_output(profile):
    """The README's tables are what `python -m lmrepro.budget --profile mid|paper --mfu 0.4` prints now."""
    import re

    from lmrepro.analysis.claims import replace_block

    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"<!-- budget:{profile} -->\n(.*?)\n<!-- /budget:{profile} -->", readme, re.S)
    printed = subprocess.run([sys.executable, "-m", "lmrepro.budget", "--profile", profile, "--mfu", "0.4"],
                             capture_output=True, text=True, check=True, cwd=ROOT).stdout.rstrip("\n")
    assert replace_block(readme, f"budget:{profile}", printed) == readme, "README budget table is stale: rerender it"
