"""Cost before you run: FLOPs and GPU-hours of every training stage of a profile, per paper and in total.

    python -m lmrepro.budget --profile paper [--gpu H100] [--gpu-check gpu_check.json] [--json]

Units: FLOPs are floating-point operations (a multiply-add is 2), tokens are tokens the model reads, GPU-hours
are hours of one GPU: ``FLOPs / (peak FLOP/s × MFU) / 3600``. Only training is costed (pretraining, fine-tuning
and the curvature probes of the LoRA-α mechanisms); evaluation passes, data preparation and reports are not.

FLOP conventions (training = 3 × forward, as in :mod:`lmrepro.analysis.flops`):

* Dense softmax attention in every layer, MHA, SwiGLU 4·w (the ><former runs): the project's accountant,
  ``analysis.flops`` (2·s·h·V + Σ 32·s·w_ℓ² + Σ 4·s²·w_ℓ − wasted, + learned projections), unchanged.
* Every other pretrained spec (GQA, other MLP widths, efficient mixers): forward FLOPs per token =
  2 × (matmul weights: every parameter with ≥ 2 dims, the input embedding excluded as a lookup, the LM head
  included even when tied) + a sequence-mixing term per layer of width d, H heads of dim d_h
  (C = 64, the chunk of the lmrepro.ops kernels; no causal halving, as in the accountant):

  - attention: 4·min(s, W)·d (QKᵀ and AV over the keys a query sees; W = s for full attention);
  - lightning (linear attention): 4·H·d_h² (state write k⊗v, state read q·S) + 4·C·H·d_h (inside a chunk);
  - mamba2 (SSD, state N, d_in = expand·d): 4·d_in·N (state write, read) + 2·C·(N + d_in) (CBᵀ, its values);
  - gdn (gated delta rule, d_k = d_h, d_v = expand_v·d_h): 6·H·d_k·d_v (S·k, rank-1 write, q·S)
    + 2·C·H·(2·d_k + d_v) (QKᵀ, KKᵀ of the WY form, values).

  For a dense MHA spec with SwiGLU 4·w this equals the accountant exactly (tests/test_budget.py).
* Fine-tuning (LoRA-α), N = matmul weights of the base model, A_r = LoRA parameters at rank r:
  full fine-tuning 6·N per token; LoRA 4·N + 6·A_r per token (forward 2·N, backward through the activations
  2·N, no weight gradients for the frozen base; the adapters' own forward + backward 6·A_r). The attention
  score term is left out here (the 6·N·D convention; for Llama-3.2-1B it would add about 11 % at 2049 tokens,
  22 % at 4096).
* Curvature probes: one gradient = 6·N per token, one Hessian-vector product = 2 gradients = 12·N per token;
  every Lanczos run is counted at its iteration cap (an upper bound).

Fine-tuning tokens are steps × batch × sequence width: the domain windows are seq_len + 1 tokens, the reasoning
rows at most max_len (an upper bound: each batch is trimmed to its longest row). Grid extensions that a sweep
adds only when an optimum sits on its edge are not counted (each stage's note says how many at most).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import PROFILES, Config, load_config
from .models import LMSpec

#: bf16 dense peak FLOP/s (no sparsity). Source: NVIDIA's H100 (SXM), H200 and A100 (SXM) datasheets; the same
#: numbers as scripts/gpu_check.py uses for its MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
GPU_NAMES = {"H100": "NVIDIA H100 SXM", "H200": "NVIDIA H200 SXM", "A100": "NVIDIA A100 SXM"}
PEAK_SOURCE = "NVIDIA datasheets, bf16 dense"
ASSUMED_MFU = 0.40
CHUNK = 64  # chunk_size of the chunked lightning / SSD / gated-delta kernels in lmrepro.ops
HVP_GRADIENTS = 2.0  # one Hessian-vector product ≈ two gradients (forward + backward) of the same batch

#: Shapes of HF base models whose config.json is not on this machine. Source: config.json of
#: meta-llama/Llama-3.2-1B on the Hugging Face Hub (hidden 2048, 16 layers, 32 heads of 64, 8 KV heads,
#: MLP 8192, vocabulary 128,256, tied embeddings; no biases): 1,235,814,400 parameters.
HF_SHAPES = {
    "meta-llama/Llama-3.2-1B": dict(hidden=2048, layers=16, heads=32, kv_heads=8, head_dim=64, intermediate=8192,
                                    vocab=128256, tied=True),
}



@dataclass(frozen=True)
class Item:
    """One costed piece of a stage: ``runs`` identical training runs, or a probe (runs 0, tokens 0)."""

    label: str
    parameters: int  # of the model trained (the base model for LoRA)
    tokens: float  # training tokens of all ``runs`` together
    flops: float  # of all ``runs`` together


@dataclass
class Stage:
    """One DVC training stage, named as ``dvc repro`` takes it."""

    paper: str
    name: str
    items: list[tuple[int, Item]] = field(default_factory=list)  # (runs, item)
    notes: list[str] = field(default_factory=list)

    def add(self, item: Item, runs: int = 1) -> None:
        self.items.append((runs, item))

    def summary(self, peak: float, mfu: float) -> dict:
        params = [it.parameters for _, it in self.items]
        flops = sum(it.flops for _, it in self.items)
        return {"paper": self.paper, "stage": self.name, "runs": sum(n for n, _ in self.items),
                "parameters_min": min(params), "parameters_max": max(params),
                "tokens": sum(it.tokens for _, it in self.items), "flops": flops,
                "gpu_hours": gpu_hours(flops, peak, mfu), "notes": self.notes,
                "items": [{"runs": n, **asdict(it)} for n, it in self.items]}


def gpu_hours(flops: float, peak_flops: float, mfu: float) -> float:
    """Hours of one GPU of bf16 peak ``peak_flops`` (FLOP/s) running at model-FLOPs utilization ``mfu``."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu!r}")
    return float(flops) / (peak_flops * mfu) / 3600.0


# ------------------------------------------------------------------------------------------ model FLOPs

_BLOCKS: dict[tuple, tuple[int, int]] = {}


def _block_shape(block: LMSpec, layer) -> tuple[int, int]:
    """(parameters, matmul weights) of one :class:`~lmrepro.models.Block`, built on the meta device once per
    shape (window and RoPE hold no parameters): a block is cheap, a whole model per run is not (seconds)."""
    key = (layer.mixer, block.hidden_size, block.num_heads, block.num_kv_heads, block.intermediate_size,
           block.conv_kernel, block.ssm_state_size, block.ssm_expand, block.ssm_head_dim, block.gdn_expand_v)
    if key not in _BLOCKS:
        import torch

        from .models import Block

        with torch.device("meta"):
            params = list(Block(block, layer, 0).parameters())
        _BLOCKS[key] = (sum(p.numel() for p in params), sum(p.numel() for p in params if p.dim() >= 2))
    return _BLOCKS[key]


@functools.lru_cache(maxsize=None)
def model_shape(spec: LMSpec) -> tuple[int, int]:
    """(parameters, matmul weights) of ``DecoderLM(spec)``: its embedding, blocks (each built on the meta
    device), final norm, LM head and learned width projections, counted as DecoderLM lays them out.

    Matmul weights: every parameter with ≥ 2 dims (linears, depthwise convs: 2 FLOPs per weight per token),
    without the input embedding (a lookup), with the LM head even when it is the tied embedding."""
    from .analysis.flops import projection_parameters
    from .models.varwidth import block_spec, readout_width

    head = spec.vocab_size * spec.hidden_size
    blocks = [_block_shape(block_spec(spec, i), layer) for i, layer in enumerate(spec.layers)]
    proj = projection_parameters(spec)
    total = head * (1 if spec.tie_embeddings else 2) + readout_width(spec) + sum(b[0] for b in blocks) + proj
    return total, head + sum(b[1] for b in blocks) + proj


def accountant_applies(spec: LMSpec) -> bool:
    """Whether :mod:`lmrepro.analysis.flops` covers ``spec``: full softmax attention in every layer, MHA and
    SwiGLU 4·w (the layout of ``flops.parameter_count``; variable widths always have 4·w_ℓ)."""
    from .models.varwidth import MLP_RATIO

    return (all(layer.is_full_attention for layer in spec.layers) and spec.num_kv_heads == spec.num_heads
            and (spec.widths is not None or spec.intermediate_size == MLP_RATIO * spec.hidden_size))


def mixing_flops_per_token(spec: LMSpec, seq_len: int) -> float:
    """Forward sequence-mixing FLOPs per token summed over layers (terms in the module docstring)."""
    from .models.varwidth import block_spec

    total, c = 0.0, min(CHUNK, seq_len)
    for i, layer in enumerate(spec.layers):
        b = block_spec(spec, i)
        d, heads, dh = b.hidden_size, b.num_heads, b.head_dim
        if layer.mixer == "attention":
            keys = seq_len if layer.window is None else min(seq_len, layer.window)
            total += 4.0 * keys * heads * dh
        elif layer.mixer == "lightning":
            total += 4.0 * heads * dh * dh + 4.0 * c * heads * dh
        elif layer.mixer == "mamba2":
            d_in, n = b.ssm_expand * d, b.ssm_state_size
            total += 4.0 * d_in * n + 2.0 * c * (n + d_in)
        elif layer.mixer == "gdn":
            dk, dv = dh, dh * b.gdn_expand_v
            total += 6.0 * heads * dk * dv + 2.0 * c * heads * (2 * dk + dv)
        else:
            raise ValueError(f"no FLOPs term for mixer {layer.mixer!r} (layer {i}); add one to lmrepro.budget")
    return total


def forward_flops_per_token(spec: LMSpec, seq_len: int) -> float:
    """Forward FLOPs per token of any spec by the generic rule: 2 × matmul weights + mixing term."""
    return 2.0 * model_shape(spec)[1] + mixing_flops_per_token(spec, seq_len)


def pretrain_flops(spec: LMSpec, seq_len: int, tokens: float) -> float:
    """Training FLOPs of ``tokens`` tokens at context ``seq_len``: the accountant where it applies (its
    ``accounting(...)["train_flops"]`` without building the model again), else 3 × the generic forward."""
    if accountant_applies(spec):
        from .analysis import flops
        from .models.varwidth import block_widths

        fwd = (flops.forward_flops(block_widths(spec), spec.hidden_size, spec.vocab_size, seq_len)
               + 2.0 * seq_len * flops.projection_parameters(spec))
        return 3.0 * fwd * float(tokens) / seq_len
    return 3.0 * forward_flops_per_token(spec, seq_len) * float(tokens)


# ------------------------------------------------------------------------------------------ base models of LoRA-α

@dataclass(frozen=True)
class BaseModel:
    """A fine-tuned base model: its name, parameters, matmul weights and the (d_in, d_out) of the linears LoRA
    adapts."""

    name: str
    parameters: int
    matmul: int
    adapted: tuple[tuple[int, int], ...]
    source: str

    def adapter_parameters(self, rank: int) -> int:
        """LoRA A and B of every adapted linear at rank ``rank``: Σ r·(d_in + d_out)."""
        return sum(rank * (i + o) for i, o in self.adapted)


def _linears_base(name: str, model, target_modules: list[str], tied: bool, vocab: int, hidden: int,
                  source: str) -> BaseModel:
    from torch import nn

    total = sum(p.numel() for p in model.parameters())
    matmul = sum(p.numel() for p in model.parameters() if p.dim() >= 2) - vocab * hidden * (0 if tied else 1)
    adapted = tuple((m.in_features, m.out_features) for n, m in model.named_modules()
                    if isinstance(m, nn.Linear) and n.split(".")[-1] in target_modules)
    return BaseModel(name, total, matmul, adapted, source)


def _hf_shape_base(name: str, shape: dict, target_modules: list[str]) -> BaseModel:
    """A Llama-layout model from a documented shape: exact parameters without any file."""
    h, f, layers = shape["hidden"], shape["intermediate"], shape["layers"]
    q, kv = shape["heads"] * shape["head_dim"], shape["kv_heads"] * shape["head_dim"]
    linears = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, f),
               "up_proj": (h, f), "down_proj": (f, h)}
    per_layer = sum(i * o for i, o in linears.values())
    embed = shape["vocab"] * h
    total = embed * (1 if shape["tied"] else 2) + layers * (per_layer + 2 * h) + h
    adapted = tuple(linears[m] for _ in range(layers) for m in linears if m in target_modules)
    return BaseModel(name, total, layers * per_layer + embed, adapted,
                     f"its documented shape (lmrepro.budget.HF_SHAPES: config.json of {name} on the Hub)")


def base_model(cfg: Config) -> BaseModel:
    """The LoRA-α base model: the foundation baseline (built on the meta device from ``cfg.model``) or the
    profile's HF model, from a config.json on this machine (meta device) else from :data:`HF_SHAPES`."""
    la = cfg.papers["lora_alpha"]
    targets = list(la.target_modules)
    if la.hf_model is None:
        import torch

        from .models import DecoderLM

        spec = LMSpec.from_config(cfg.model, vocab_size=cfg.tokenizer.vocab_size)
        with torch.device("meta"):
            model = DecoderLM(spec)
        return _linears_base(f"foundation baseline ({la.base})", model, targets, spec.tie_embeddings,
                             spec.vocab_size, spec.hidden_size, "DecoderLM(cfg.model) on the meta device")
    name, revision = la.hf_model.name, la.hf_model.revision
    config_file = Path(name) / "config.json"
    if not config_file.is_file():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", revision=revision)
        config_file = Path(cached) if isinstance(cached, str) else None
    if config_file is not None:  # a local config: build the real architecture on the meta device
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        hf_cfg = AutoConfig.from_pretrained(config_file.parent, trust_remote_code=la.hf_model.trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_cfg)
        return _linears_base(name, model, targets, bool(getattr(hf_cfg, "tie_word_embeddings", False)),
                             hf_cfg.vocab_size, hf_cfg.hidden_size, f"{config_file} on the meta device")
    if name in HF_SHAPES:
        return _hf_shape_base(name, HF_SHAPES[name], targets)
    raise ValueError(f"lora_alpha.hf_model: no config.json of {name!r} on this machine and no documented shape in "
                     f"lmrepro.budget.HF_SHAPES (known: {sorted(HF_SHAPES)}); add its shape there")


# ------------------------------------------------------------------------------------------ stages

def foundation_stages(cfg: Config) -> list[Stage]:
    spec = LMSpec.from_config(cfg.model, vocab_size=cfg.tokenizer.vocab_size)
    tr = cfg.train
    tokens = tr.max_steps * tr.tokens_per_step  # the Trainer stops after whole steps
    stage = Stage("foundation", "foundation-pretrain")
    stage.add(Item("baseline", model_shape(spec)[0], tokens, pretrain_flops(spec, tr.seq_len, tokens)))
    return [stage]


def hybrid_attention_stages(cfg: Config) -> list[Stage]:
    from .papers.hybrid_attention.runs import arch_spec, train_config

    h = cfg.hybrid_attention
    out = []
    for arch in h.architectures:
        stage = Stage("hybrid_attention", f"pipelines/hybrid_attention/dvc.yaml:pretrain@{arch}")
        for size in h.sizes:
            spec = arch_spec(cfg, arch, size)
            tokens = train_config(cfg, size, h.seeds[0]).max_tokens  # the same budget for every seed
            stage.add(Item(f"{size} × {len(h.seeds)} seeds", model_shape(spec)[0], tokens * len(h.seeds),
                           pretrain_flops(spec, h.seq_len, tokens) * len(h.seeds)), runs=len(h.seeds))
        out.append(stage)
    return out


def xformer_stages(cfg: Config) -> list[Stage]:
    from .papers.xformer.runs import run_spec, train_config

    x = cfg.xformer
    out = []
    for variant in x.variants:
        stage = Stage("xformer", f"pipelines/xformer/dvc.yaml:pretrain@{variant}")
        for run in x.variant_runs(variant):
            spec = run_spec(cfg, run.variant, run.size, run.bottleneck)
            tokens = train_config(cfg, run.size, run.seed, run.token_fraction).max_tokens
            stage.add(Item(run.name, model_shape(spec)[0], tokens, pretrain_flops(spec, x.seq_len, tokens)))
        out.append(stage)
    return out


def _width(la, task: str) -> int:
    """Tokens per fine-tuning row: domain windows are seq_len + 1, reasoning rows at most max_len."""
    t = getattr(la.tasks, task)
    return t.seq_len + 1 if task == "domain" else t.max_len


def _finetune(base: BaseModel, label: str, rank: int | None, steps: int, rows: int, width: int,
              runs: int = 1) -> Item:
    """``runs`` fine-tuning runs of ``steps`` steps of ``rows`` rows of ``width`` tokens; rank None = full."""
    tokens = float(runs) * steps * rows * width
    per_token = 6.0 * base.matmul if rank is None else 4.0 * base.matmul + 6.0 * base.adapter_parameters(rank)
    return Item(label, base.parameters, tokens, per_token * tokens)


def _probe(base: BaseModel, label: str, gradients: float, rows: int, width: int) -> Item:
    """``gradients`` gradient-equivalents (6·N per token) on a batch of ``rows`` × ``width`` tokens."""
    return Item(label, base.parameters, 0.0, gradients * 6.0 * base.matmul * rows * width)


def lora_alpha_stages(cfg: Config) -> list[Stage]:
    la = cfg.papers["lora_alpha"]
    base = base_model(cfg)
    tr, out = la.train, []
    source = f"base {base.name}: {base.parameters:,} parameters, counted from {base.source}"
    for task in la.task_names:
        steps, rows, width = tr.steps[task], tr.batch_size, _width(la, task)
        ft = Stage("lora_alpha", f"pipelines/lora_alpha/dvc.yaml:full_ft@{task}", notes=[source])
        ft.add(_finetune(base, "full fine-tuning lr grid", None, steps, rows, width, len(la.full_ft.lrs)),
               runs=len(la.full_ft.lrs))
        ft.notes.append(f"+ up to {la.full_ft.max_extensions} runs if the optimum sits on the lr grid's edge")
        out.append(ft)

        sw = la.sweep
        sweep = Stage("lora_alpha", f"pipelines/lora_alpha/dvc.yaml:sweep@{task}", notes=[source])
        grid = sw.rank_grid()
        for r in sw.ranks:
            n = sum(1 for rank, _, _ in grid if rank == r) + 3 * len(sw.optimum_seeds)  # α* and its 2 neighbours
            sweep.add(_finetune(base, f"r={r}", r, steps, rows, width, n), runs=n)
        sweep.notes.append(f"+ up to {sw.max_extensions} α points per rank past the grid's edge, and their seeds, "
                           "if an optimum sits on it")
        out.append(sweep)

        me = la.methods
        methods = Stage("lora_alpha", f"pipelines/lora_alpha/dvc.yaml:methods@{task}", notes=[source])
        for method in me.names:
            if method == "full":
                n = len(me.lrs["full"])
                methods.add(_finetune(base, "full", None, steps, rows, width, n), runs=n)
                continue
            n = len(me.alpha_multipliers) if method.startswith("lora_alpha_") else len(me.lrs[method])
            for r in me.ranks:
                methods.add(_finetune(base, f"{method} r={r}", r, steps, rows, width, n), runs=n)
            if method == "lora_alpha_layerwise":  # one gradient + 2 HVPs per adapted linear, once per rank
                grads = 1 + HVP_GRADIENTS * 2 * len(base.adapted)
                methods.add(_probe(base, "layer-wise curvature probes", grads * len(me.ranks),
                                   me.layerwise_batches * rows, width), runs=0)
        out.append(methods)

    mech, task = la.mechanisms, la.mechanisms.task
    stage = Stage("lora_alpha", "pipelines/lora_alpha/dvc.yaml:mechanisms", notes=[source])
    width, sd, cv = _width(la, task), mech.signal_drift, mech.curvature
    n = len(sd.lr_multipliers) + len(sd.alpha_multipliers)
    stage.add(_finetune(base, f"signal/drift r={sd.rank}", sd.rank, sd.steps, tr.batch_size, width, n), runs=n)
    at = sorted({round(f * cv.steps) for f in cv.at_fractions})
    for r in cv.ranks:
        if any(a > 0 for a in at):
            stage.add(_finetune(base, f"curvature run r={r}", r, cv.steps, tr.batch_size, width))
    # Two Lanczos runs (LoRA, full) per measurement, each at most ``iters`` HVPs.
    stage.add(_probe(base, "curvature Lanczos HVPs", HVP_GRADIENTS * 2 * cv.iters * len(at) * len(cv.ranks),
                     cv.batch_size, width), runs=0)
    stage.add(_mlp_item(mech.mlp), runs=4 * len(mech.mlp.seeds))
    out.append(stage)
    return out


def _mlp_item(m) -> Item:
    """The synthetic MLP of claim 7: per seed 2 lr runs + 2 α runs of ``steps`` full-batch steps; costed as full
    fine-tuning of its depth·width² weights (an upper bound for LoRA) on make_task's ``n`` rows."""
    from .lora.synthetic_mlp import make_task

    defaults = {k: v.default for k, v in inspect.signature(make_task).parameters.items()}
    weights = defaults["depth"] * (m.width * m.width + m.width)
    rows = 4.0 * len(m.seeds) * m.steps * defaults["n"]  # rows of its full batch: no language tokens
    return Item("synthetic MLP", weights, 0.0, 6.0 * weights * rows)


STAGE_BUILDERS = {"foundation": foundation_stages, "hybrid_attention": hybrid_attention_stages,
                  "xformer": xformer_stages, "lora_alpha": lora_alpha_stages}


def stages(cfg: Config) -> list[Stage]:
    """Every training stage of the profile, in pipeline order."""
    return [s for build in STAGE_BUILDERS.values() for s in build(cfg)]


# ------------------------------------------------------------------------------------------ MFU

def mfu_from_check(path: Path, gpu: str, cfg: Config | None = None) -> tuple[float, str] | None:
    """(MFU, how it was obtained) from a scripts/gpu_check.py report, or None without usable entries.

    Each throughput entry's tokens/s is converted to MFU with this module's FLOPs per token of the same
    architecture, size and context at the paper profile (the check trains those), against ``gpu``'s peak unless
    the report names its device; entries without the fields needed use the check's own ``mfu``. The median of
    the entries is returned. ``cfg``: the loaded config, reused if it is the paper profile."""
    report = json.loads(path.read_text())
    device = str(report.get("device", ""))
    gpu = next((k for k in PEAK_BF16_FLOPS if k in device), gpu)
    # gpu_check.py writes "mfu" only when it ran on CUDA: entries without it (--interpret, CPU) measured no GPU.
    entries = [t for t in report.get("throughput", []) if isinstance(t, dict) and "mfu" in t and "error" not in t]
    values, converted = [], 0
    paper_cfg = cfg if cfg is not None and cfg.profile == "paper" else None
    for t in entries:
        if {"arch", "size", "seq_len", "tokens_per_s"} <= set(t):
            from .papers.hybrid_attention.runs import arch_spec

            paper_cfg = paper_cfg or load_config(profile="paper")
            spec = arch_spec(paper_cfg, t["arch"], t["size"])
            per_token = 3.0 * forward_flops_per_token(spec, int(t["seq_len"]))
            values.append(per_token * float(t["tokens_per_s"]) / PEAK_BF16_FLOPS[gpu])
            converted += 1
        elif isinstance(t.get("mfu"), (int, float)):
            values.append(float(t["mfu"]))
    values = [v for v in values if 0 < v <= 1]
    if not values:
        return None
    how = (f"measured: median of {len(values)} throughput entries of {path.name} on {gpu} "
           f"({converted} converted from tokens/s with this module's FLOPs convention)")
    return statistics.median(values), how


# ------------------------------------------------------------------------------------------ report

def budget(cfg: Config, gpu: str = "H100", mfu: float | None = None, gpu_check: Path | None = None) -> dict:
    """The budget as plain data: per paper its stages and total, the grand total, the GPU and the MFU."""
    if gpu not in PEAK_BF16_FLOPS:
        raise ValueError(f"gpu {gpu!r} is unknown; choose one of {list(PEAK_BF16_FLOPS)}")
    peak = PEAK_BF16_FLOPS[gpu]
    if mfu is not None:
        mfu_source = "given on the command line"
    else:
        found = mfu_from_check(gpu_check, gpu, cfg) if gpu_check is not None and gpu_check.is_file() else None
        if found is not None:
            mfu, mfu_source = found
        else:
            where = gpu_check if gpu_check is not None else "gpu_check.json"
            mfu, mfu_source = ASSUMED_MFU, f"assumed: no usable GPU check at {where}"
    papers: dict[str, dict] = {}
    for stage in stages(cfg):
        paper = papers.setdefault(stage.paper, {"paper": stage.paper, "stages": []})
        paper["stages"].append(stage.summary(peak, mfu))
    for paper in papers.values():
        paper["total"] = _total(paper["stages"])
    return {"profile": cfg.profile,
            "gpu": {"name": gpu, "model": GPU_NAMES[gpu], "peak_bf16_flops": peak, "source": PEAK_SOURCE},
            "mfu": {"value": mfu, "measured": mfu_source.startswith("measured"), "source": mfu_source},
            "papers": list(papers.values()),
            "total": _total([p["total"] for p in papers.values()])}


def _total(rows: list[dict]) -> dict:
    return {k: sum(r[k] for r in rows) for k in ("runs", "tokens", "flops", "gpu_hours")}


def _si(x: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _hours(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def markdown(report: dict) -> str:
    """The budget as a Markdown table grouped per paper, with a per-paper and a grand total."""
    g, m = report["gpu"], report["mfu"]
    lines = [f"Profile `{report['profile']}`. GPU: {g['model']}, {g['peak_bf16_flops'] / 1e12:.0f} TFLOP/s "
             f"({g['source']}); MFU {m['value']:.3f} ({m['source']}).", "",
             "| paper | stage | runs | parameters | tokens | FLOPs | GPU-hours |",
             "|---|---|---:|---|---:|---:|---:|"]
    notes = []
    for paper in report["papers"]:
        for s in paper["stages"]:
            lo, hi = s["parameters_min"], s["parameters_max"]
            params = _si(lo) if lo == hi else f"{_si(lo)}–{_si(hi)}"
            mark = ""
            if len(s["notes"]) > 1 or (s["notes"] and not s["notes"][0].startswith("base ")):
                notes.append(f"{s['stage']}: " + "; ".join(n for n in s["notes"] if not n.startswith("base ")))
                mark = f" [{len(notes)}]"
            lines.append(f"| {paper['paper']} | {s['stage']}{mark} | {s['runs']} | {params} | {_si(s['tokens'])} | "
                         f"{s['flops']:.3g} | {_hours(s['gpu_hours'])} |")
        t = paper["total"]
        lines.append(f"| **{paper['paper']}** | **total** | {t['runs']} | | {_si(t['tokens'])} | "
                     f"{t['flops']:.3g} | **{_hours(t['gpu_hours'])}** |")
    t = report["total"]
    lines.append(f"| **all** | **total** | {t['runs']} | | {_si(t['tokens'])} | {t['flops']:.3g} | "
                 f"**{_hours(t['gpu_hours'])}** |")
    bases = sorted({n for p in report["papers"] for s in p["stages"] for n in s["notes"] if n.startswith("base ")})
    lines += [""] + [f"[{i}] {n}" for i, n in enumerate(notes, 1)] + [f"LoRA-α {n}" for n in bases]
    return "\n".join(lines) + "\n"


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmrepro.budget", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=PROFILES, default=None, help="default: params.yaml's profile")
    parser.add_argument("--gpu", choices=list(PEAK_BF16_FLOPS), default="H100")
    parser.add_argument("--mfu", type=_fraction, default=None, help="override the MFU (default: measured, else "
                        f"{ASSUMED_MFU} assumed)")
    parser.add_argument("--gpu-check", type=Path, default=None,
                        help="JSON of scripts/gpu_check.py (default: gpu_check.json at the project root)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)
    from .paths import find_params

    cfg = load_config(profile=args.profile)
    check = args.gpu_check if args.gpu_check is not None else find_params().parent / "gpu_check.json"
    report = budget(cfg, args.gpu, args.mfu, check)
    sys.stdout.write(json.dumps(report, indent=1) + "\n" if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
