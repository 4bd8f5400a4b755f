"""Paper 1 evaluations: validation loss and LongPPL per checkpoint, receptive-field restriction,
RULER-style tasks, layer-wise NIAH probes and the Large-Window-Laziness measurements.

Each function returns plain rows (list of dicts, with the run's ``seed``) that the notebooks write as CSV/JSON;
:func:`evaluate_seed` and :func:`laziness` are module-level so :func:`lmrepro.pool.run_jobs` can run the seeds
side by side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...config import Config
from ...data import ShardedTokens, eval_windows, load_tokenizer
from ...data.synthetic import make_probe_samples, make_task
from ...eval.laziness import (NeedleSample, gradient_influence, influence_by_distance, retrieval_head_scores,
                             top_heads, trace_heads, wu_retrieval_score)
from ...eval.longppl import key_token_scores, load_key_tokens, long_ppl, save_key_tokens
from ...eval.loss import evaluate_loss
from ...eval.probes import layer_features, layerwise_probe
from ...eval.ruler import evaluate_task
from ...models.receptive import restrict_receptive_field
from ...paths import Paths
from ...train import load_model
from . import artifacts
from .runs import checkpoints


def largest_size(cfg: Config) -> str:
    return list(cfg.hybrid_attention.sizes)[-1]


def longppl_docs(cfg: Config, paths: Paths) -> torch.Tensor:
    """[N, T] validation documents of the training context length, spread over the split."""
    h = cfg.hybrid_attention
    val = ShardedTokens(paths.tokens("validation"))
    return next(eval_windows(val, h.seq_len - 1, h.longppl.documents, h.longppl.documents))


def compute_key_tokens(cfg: Config, paths: Paths, evaluator_dir: Path) -> dict:
    """Score the documents with the fixed evaluator (the foundation baseline) and cache the key tokens."""
    h = cfg.hybrid_attention
    docs = longppl_docs(cfg, paths)
    k = max(1, round(h.longppl.truncation_fraction * h.seq_len))
    block = max(1, round(h.longppl.block_fraction * h.seq_len))
    evaluator = load_model(evaluator_dir)
    scores = key_token_scores(evaluator, docs, truncation=k, block=block)
    path = artifacts.key_tokens(paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = save_key_tokens(path, docs, scores["lsd"], scores["lcl"], evaluator_id=str(evaluator_dir),
                           truncation=k, block=block, lsd_threshold=h.longppl.lsd_threshold,
                           lcl_threshold=h.longppl.lcl_threshold)
    return {"documents": int(docs.shape[0]), "doc_len": int(docs.shape[1]), "truncation": k, "block": block,
            "key_tokens": int(mask.sum()), "key_fraction": float(mask.float().mean()),
            "mean_lsd": float(scores["lsd"].mean())}


def _val_batches(cfg: Config, paths: Paths):
    h = cfg.hybrid_attention
    return eval_windows(ShardedTokens(paths.tokens("validation")), h.seq_len, h.eval_windows, 8)


def evaluate_seed(cfg: Config, paths: Paths, arch: str, seed: int) -> dict[str, list[dict]]:
    """Every evaluation table of ``arch``'s runs with ``seed`` (:data:`artifacts.EVAL_TABLES`; restriction and
    RULER only for the architectures the profile lists there)."""
    h = cfg.hybrid_attention
    return {"checkpoints": evaluate_checkpoints(cfg, paths, arch, seed),
            "restriction": restriction_sweep(cfg, paths, arch, seed) if arch in h.restriction.architectures else [],
            "ruler": ruler_sweep(cfg, paths, arch, seed) if arch in h.ruler.architectures else [],
            "probes": probe_sweep(cfg, paths, arch, seed)}


def evaluate_checkpoints(cfg: Config, paths: Paths, arch: str, seed: int) -> list[dict]:
    """Validation loss and LongPPL of every budget snapshot of every size of ``arch`` (seed ``seed``)."""
    keys = load_key_tokens(artifacts.key_tokens(paths))
    rows = []
    for size in cfg.hybrid_attention.sizes:
        for tokens, folder in checkpoints(paths, arch, size, seed):
            model = load_model(folder)
            loss = evaluate_loss(model, _val_batches(cfg, paths))["loss"]
            lp = long_ppl(model, keys["docs"], keys["key_mask"])
            rows.append({"arch": arch, "seed": seed, "size": size, "parameters": model.num_parameters(),
                         "tokens": tokens,
                         "val_loss": loss, "longppl": lp["longppl"], "key_nll": lp["key_nll_mean"],
                         "ppl_all": lp["ppl_all"], "n_key_tokens": lp["n_key_tokens"]})
    return rows


def final_model(cfg: Config, paths: Paths, arch: str, seed: int):
    """The final weights of the largest size of ``arch`` (seed ``seed``)."""
    return load_model(checkpoints(paths, arch, largest_size(cfg), seed)[-1][1])


def restriction_sweep(cfg: Config, paths: Paths, arch: str, seed: int) -> list[dict]:
    """LongPPL of the final model of the largest size with the full-attention layers, or the efficient
    layers, restricted to a window + sinks at inference (claim 3)."""
    r = cfg.hybrid_attention.restriction
    keys = load_key_tokens(artifacts.key_tokens(paths))
    model = final_model(cfg, paths, arch, seed)
    base = long_ppl(model, keys["docs"], keys["key_mask"])["longppl"]
    rows = [{"arch": arch, "seed": seed, "target": "none", "window": 0, "longppl": base, "ratio": 1.0}]
    for target in ("full", "efficient"):
        for window in r.windows:
            with restrict_receptive_field(model, target, window, r.sinks):
                value = long_ppl(model, keys["docs"], keys["key_mask"])["longppl"]
            rows.append({"arch": arch, "seed": seed, "target": target, "window": window, "longppl": value,
                         "ratio": value / base})
    return rows


def _haystack(paths: Paths) -> np.ndarray:
    return ShardedTokens(paths.tokens("validation")).read(0, ShardedTokens(paths.tokens("validation")).num_tokens)


def ruler_sweep(cfg: Config, paths: Paths, arch: str, seed: int) -> list[dict]:
    """Greedy accuracy of the final largest model on each task at each length multiple of the context."""
    r = cfg.hybrid_attention.ruler
    tok = load_tokenizer(paths.tokenizer)
    hay = _haystack(paths)
    model = final_model(cfg, paths, arch, seed)
    rows = []
    for mult in r.length_multipliers:
        length = int(round(mult * cfg.hybrid_attention.seq_len))
        for i, task in enumerate(r.tasks):
            samples = make_task(task, tok, hay, length, r.samples, seed=1000 * i + length, value_digits=r.value_digits)
            res = evaluate_task(model, samples, tok)
            rows.append({"arch": arch, "seed": seed, "task": task, "length_multiplier": mult, "length": length,
                         "accuracy": res["accuracy"], "n": res["n"]})
    return rows


def probe_sweep(cfg: Config, paths: Paths, arch: str, seed: int) -> list[dict]:
    """Layer-wise 8-way probes of the needle's value from residual states and per-layer deltas (claim 4)."""
    p = cfg.hybrid_attention.probes
    tok = load_tokenizer(paths.tokenizer)
    samples = make_probe_samples(tok, _haystack(paths), cfg.hybrid_attention.seq_len, p.samples, seed=7,
                                 n_candidates=p.candidates,
                                 value_digits=max(2, cfg.hybrid_attention.ruler.value_digits))
    labels = np.array([s.label for s in samples])
    model = final_model(cfg, paths, arch, seed)
    feats = layer_features(model, [torch.tensor(s.prompt_ids) for s in samples])
    full = [i for i, block in enumerate(model.layers) if block.layer.is_full_attention]
    n_test = int(np.ceil(p.test_fraction * len(labels)))  # the size stratified_split gives the test part
    rows = []
    for kind in ("residual", "delta"):
        accs = layerwise_probe(feats[kind], labels, C=p.C, test_size=p.test_fraction)
        for i, acc in enumerate(accs):
            layer = i if kind == "delta" else i - 1  # residual[0] is the embedding (layer −1)
            rows.append({"arch": arch, "seed": seed, "feature": kind, "layer": layer, "accuracy": acc,
                         "full_attention": layer in full, "chance": 1 / p.candidates,
                         "n_test": n_test})
    return rows


def laziness(cfg: Config, paths: Paths, job: tuple[str, int]) -> dict[str, list[dict]]:
    """Gradient influence by distance (final model) and retrieval-head tracing across the budget
    snapshots of the largest size (claim 5), for ``job`` = (architecture, seed)."""
    arch, seed = job
    lz = cfg.hybrid_attention.laziness
    tok = load_tokenizer(paths.tokenizer)
    hay = _haystack(paths)
    size = largest_size(cfg)
    snaps = checkpoints(paths, arch, size, seed)
    models = [load_model(folder) for _, folder in snaps]
    final = models[-1]
    samples = make_task("single_needle", tok, hay, cfg.hybrid_attention.seq_len, lz.samples, seed=11,
                        value_digits=cfg.hybrid_attention.ruler.value_digits)
    needles = [NeedleSample(s.prompt_ids, s.answer_positions[0]) for s in samples]
    infl = np.mean([influence_by_distance(gradient_influence(final, torch.tensor([s.prompt_ids]),
                                                             last=lz.last_positions))
                    for s in samples], axis=0)
    influence = [{"arch": arch, "seed": seed, "distance": d, "influence": float(v)} for d, v in enumerate(infl)]
    n_full_heads = sum(b.mixer.num_heads for b in final.layers if b.layer.is_full_attention)
    heads = top_heads(retrieval_head_scores(final, needles), final, k=min(lz.top_heads, n_full_heads))
    traces = trace_heads(models, heads, needles)
    trace_rows = []
    for (tokens, _), tr in zip(snaps, traces):
        for j, (layer, head) in enumerate(tr["heads"]):
            trace_rows.append({"arch": arch, "seed": seed, "tokens": tokens, "layer": layer, "head": head,
                               "mass": tr["mass"][j],
                               "entropy": tr["entropy"][j], "wq_relative": tr["wq_relative"][j],
                               "wk_relative": tr["wk_relative"][j]})
    wu = wu_retrieval_score(final, needles, max_new_tokens=max(len(s.answer_ids) for s in samples))
    wu_rows = [{"arch": arch, "seed": seed, "layer_row": i, "head": j, "score": float(wu[i, j])}
               for i in range(wu.shape[0]) for j in range(wu.shape[1])]
    return {"influence": influence, "trace": trace_rows, "wu": wu_rows}
