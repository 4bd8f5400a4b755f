"""The mid profile (one GPU for about a day): its budget and promises, and a smoke-shaped run of it — the
profile's own settings (schedules, μP, tied embeddings, loss chunking, the sizes' layer counts and shapes) with
tiny widths and contexts — through the pipelines' real training path (lmrepro.probe: each entry's spec and
training config, the Trainer, a checkpoint and a resume). LoRA-α's mid runs fine-tune Llama-3.2-1B, which needs
the Hub: they share the paper profile's path (tests/test_lora_alpha_pipeline.py checks its configuration)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from lmrepro import yaml12
from lmrepro.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_mid_profile_fits_one_gpu_day_and_makes_paper_1_s1_long_enough():
    """The mid profile's promise: at most 24 H100-hours at the assumed MFU, the hybrid-attention runs at the
    paper's smallest size and 16K context with about 100 tokens per parameter, the other papers at their smallest
    published sizes (><former 200M, LoRA-α on Llama-3.2-1B)."""
    import torch

    from lmrepro.budget import budget
    from lmrepro.config import load_config
    from lmrepro.models import DecoderLM
    from lmrepro.papers.hybrid_attention.runs import arch_spec

    cfg = load_config(ROOT / "params.yaml", profile="mid")
    paper = load_config(ROOT / "params.yaml", profile="paper")
    assert 12 <= budget(cfg, gpu="H100", mfu=0.4)["total"]["gpu_hours"] <= 24
    ha, shape = cfg.hybrid_attention, ("hidden_size", "num_layers", "num_heads", "intermediate_size")
    assert list(ha.sizes) == ["s1"] and ha.seq_len == paper.hybrid_attention.seq_len == 16384
    assert all(getattr(ha.sizes["s1"], k) == getattr(paper.hybrid_attention.sizes["s1"], k) for k in shape)
    assert len(ha.architectures) == 8 and len(ha.seeds) >= 2
    with torch.device("meta"):
        params = DecoderLM(arch_spec(cfg, "full", "s1")).num_parameters()
    assert 80 <= ha.sizes["s1"].max_tokens / params <= 150
    assert all(getattr(cfg.xformer.sizes["200M"], k) == getattr(paper.xformer.sizes["200M"], k) for k in shape[:3])
    assert cfg.lora_alpha.hf_model.name == paper.lora_alpha.hf_model.name


def shrink_mid(root: Path) -> Path:
    """A project whose mid profile keeps every setting but the widths, contexts and vocabulary."""
    (root / "profiles").mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    for name in ("smoke", "laptop", "paper"):
        shutil.copy(ROOT / "profiles" / f"{name}.yaml", root / "profiles" / f"{name}.yaml")
    mid = yaml12.load(ROOT / "profiles" / "mid.yaml")
    mid["tokenizer"]["vocab_size"] = 512
    mid["model"].update(hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64, max_seq_len=256)
    mid["train"].update(seq_len=64, micro_batch_size=2, loss_chunk_tokens=48)  # chunks that do not divide
    mid["eval"]["seq_len"] = 64
    ha = mid["hybrid_attention"]
    ha["seq_len"] = 128
    ha["sizes"]["s1"].update(hidden_size=32, num_heads=2, intermediate_size=64)  # 8 layers, as the paper's S1
    xf = mid["xformer"]
    xf["seq_len"] = 64
    for size, hidden in (("200M", 64), ("500M", 96)):
        xf["sizes"][size]["hidden_size"] = hidden
        xf["sizes"][size]["num_heads"] = 4  # the layer counts stay the paper's (16 and 24)
    xf.update(quantize=8, match_tolerance=0.05, precision="auto")  # auto = bf16 on CUDA, fp32 on this CPU
    (root / "profiles" / "mid.yaml").write_text(yaml12.dumps(mid))
    return root


def test_a_smoke_shaped_mid_run_trains_every_entry_and_resumes(tmp_path):
    from lmrepro.probe import entries, probe

    cfg = load_config(shrink_mid(tmp_path) / "params.yaml", profile="mid")
    real = load_config(ROOT / "params.yaml", profile="mid")
    jobs = entries(cfg)
    assert jobs == entries(real)  # the same entries and sizes as the real mid profile
    for job in jobs:
        out = probe(cfg, job)
        assert (out["resumed_from_step"], out["steps"], out["completed"]) == (1, 2, True), out
        assert out["loss_chunk_tokens"] == 48  # every entry takes the profile's chunked loss
        assert torch.isfinite(torch.tensor(out["final_loss"]))
