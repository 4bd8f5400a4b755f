"""Paper 1 (efficient attention in hybrids): architectures × sizes × seeds → specs, training runs, checkpoints.

With a ``retrieval`` section the pretraining stream carries synthetic retrieval rows
(:mod:`lmrepro.data.retrieval_mix`) whose answer labels weigh ``answer_weight`` in the loss: the design under
which the pilot (``notebooks/hybrid_attention/00_pilot_weighted.ipynb``) saw full attention and two hybrids
learn retrieval on a CPU, in 1,500 steps of 16 × 128 tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...config import Config, TrainConfig, derive
from ...config.layers import hybrid_pattern, render_layer_token
from ...data import ChunkSampler, ShardedTokens, load_tokenizer
from ...data.retrieval_mix import MixedSampler, RetrievalMix
from ...missing import missing_input
from ...models import DecoderLM, LMSpec
from ...models.hybrid import layers_from_pattern
from ...paths import Paths
from ...train import Trainer
from . import artifacts
from .artifacts import PAPER
from .config import check_arch


def mixer_token(cfg: Config, arch: str) -> str:
    """Layer token of the efficient layers of ``arch`` (``full`` for the all-attention baseline)."""
    h = cfg.hybrid_attention
    if check_arch(arch) == "full":
        return "full"
    if arch.startswith("swa-"):
        return render_layer_token("attention", h.window(arch))
    return arch


def arch_spec(cfg: Config, arch: str, size: str) -> LMSpec:
    """Spec of ``arch`` at ``size``: the profile's model settings with the size's shape and the hybrid
    pattern (the last layer of every ``full_attention_every`` is full attention; NoPE there for *-nope)."""
    h = cfg.hybrid_attention
    s = h.sizes[size]
    every = None if arch == "full" else h.full_attention_every
    pattern = hybrid_pattern(s.num_layers, mixer_token(cfg, arch), every,
                             full_attention_rope=not arch.endswith("-nope"))
    model = derive(cfg.model, f"{PAPER}.sizes.{size}", hidden_size=s.hidden_size, num_layers=s.num_layers,
                   num_heads=s.num_heads, num_kv_heads=s.num_kv_heads, intermediate_size=s.intermediate_size,
                   tie_embeddings=h.tie_embeddings, max_seq_len=max(cfg.model.max_seq_len, 4 * h.seq_len))
    return LMSpec.from_config(model, cfg.tokenizer.vocab_size, layers=layers_from_pattern(pattern))


def train_config(cfg: Config, size: str, seed: int) -> TrainConfig:
    """Training settings of one size and seed: budgets at ``budget_fractions`` of its token budget (rounded to
    steps)."""
    h = cfg.hybrid_attention
    step_tokens = h.batch_size * h.seq_len
    steps = h.sizes[size].max_tokens // step_tokens
    budgets = sorted({max(1, round(f * steps)) * step_tokens for f in h.budget_fractions})
    return derive(
        cfg.train, PAPER, seq_len=h.seq_len, batch_size=h.batch_size, micro_batch_size=h.micro_batch_size,
        max_tokens=steps * step_tokens, lr=h.lr, warmup_fraction=h.warmup_fraction, checkpoint_tokens=budgets,
        eval_every_steps=None, seed=seed, save_every_steps=max(1, steps // 4))


def min_distance(cfg: Config) -> int:
    """Fewest tokens between a synthetic needle and its answer: one more than the stacked receptive field of
    SWA-small's efficient layers in the deepest size, so that hybrid needs a full-attention layer to copy it
    (wider windows and the recurrent mixers can reach that far on their own)."""
    h = cfg.hybrid_attention
    efficient = max(s.num_layers - s.num_layers // h.full_attention_every for s in h.sizes.values())
    return efficient * h.window("swa-small") + 1


def retrieval_mix(cfg: Config, seed: int) -> RetrievalMix | None:
    """The synthetic rows of the pretraining stream of seed ``seed`` (None without a ``retrieval`` section)."""
    h = cfg.hybrid_attention
    r = h.retrieval
    if r is None:
        return None
    return RetrievalMix(share=r.share, kinds=tuple(r.kinds), value_digits=h.ruler.value_digits,
                        min_distance=min_distance(cfg), seed=seed, recall_pairs=r.recall_pairs,
                        answer_weight=r.answer_weight)


def sampler(cfg: Config, paths: Paths, seed: int) -> MixedSampler | None:
    """The Trainer's stream: the plain shuffled chunks (None) or those with :func:`retrieval_mix` rows."""
    mix = retrieval_mix(cfg, seed)
    if mix is None:
        return None
    chunks = ChunkSampler(ShardedTokens(paths.tokens("train")), cfg.hybrid_attention.seq_len, seed)
    return MixedSampler(chunks, mix, load_tokenizer(paths.tokenizer))


def train_run(cfg: Config, paths: Paths, arch: str, job: tuple[str, int]) -> dict:
    """Train (or resume, or find finished) ``arch`` at ``job`` = (size, seed); a summary row. Module-level so
    :func:`lmrepro.pool.run_jobs` can run the seeds of a stage side by side."""
    size, seed = job
    spec = arch_spec(cfg, arch, size)
    dirs = artifacts.run_dirs(paths, arch, size, seed)
    trainer = Trainer(spec, train_config(cfg, size, seed), paths.tokens("train"), dirs["out"], dirs["ckpt"],
                      val_dir=paths.tokens("validation"), log_path=dirs["log"], provenance_path=dirs["provenance"],
                      run_config=cfg, progress=False, sampler=sampler(cfg, paths, seed), live_dir=dirs["live"])
    result = trainer.fit()
    return {"size": size, "seed": seed, "layers": " ".join(layer.name for layer in spec.layers),
            "parameters": DecoderLM(spec).num_parameters(), "steps": result.step,
            "final_loss": result.rows[-1]["loss"], "resumed_from": result.resumed_from_step}


def checkpoints(paths: Paths, arch: str, size: str, seed: int) -> list[tuple[int, Path]]:
    """(tokens seen, model folder) of every token-budget snapshot of a finished run, in order."""
    out = artifacts.run_dirs(paths, arch, size, seed)["out"]
    found = []
    for folder in out.glob(artifacts.SNAPSHOT_GLOB):
        meta = json.loads((folder / artifacts.SNAPSHOT_META).read_text())
        found.append((int(meta["tokens_seen"]), folder))
    if not found:
        raise FileNotFoundError(missing_input(f"{out}/{artifacts.SNAPSHOT_GLOB} (token-budget snapshots)",
                                              f"pipelines/{PAPER}/dvc.yaml:pretrain@{arch}"))
    return sorted(found)
