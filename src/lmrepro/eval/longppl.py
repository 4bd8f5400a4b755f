"""LongPPL (Fang et al., ICLR 2025): perplexity measured only on the tokens that need long context.

A fixed *evaluator* scores every token twice, with its full prefix and with only the last K tokens.
Tokens whose log-probability gains a lot from the long context (LSD > 2) and that the evaluator then
predicts well (LCL > −2) are *key tokens*; LongPPL of any model is exp of its mean NLL on them.
Key tokens are computed once (:func:`key_token_scores`, :func:`select_key_tokens`), cached with
:func:`save_key_tokens`, and reused for every model and checkpoint (:func:`long_ppl`).

Conventions (all log-probabilities in nats):

* ``docs`` [N, T] token ids. Target p (1 ≤ p ≤ T−1) is ``docs[:, p]`` predicted from its p previous
  tokens; score arrays are [N, T−1] with column j holding target p = j + 1 (as :func:`token_nll`).
* Full score: log p(x_p | x_0 … x_{p−1}) from one forward of the whole document.
* Truncated score ("last K tokens", K = ``truncation``), exactly as the authors' reference package
  (``longppl`` 0.3.0, ``find_key_token``) computes it:
  - targets are grouped into blocks of ``block`` consecutive targets starting at K
    ([K, K+block−1], [K+block, K+2·block−1], …; the last block may be shorter). Block j is scored by ONE
    forward of the tokens from x_{j·block} on, so a target in it sees between K (the block's first) and
    K + block − 1 previous tokens — never fewer than K. (The cost saving of the original method: one
    context per block, not per token.)
  - block 0 and every target p < K therefore keep their whole prefix; their full score is reused and
    LSD is exactly 0.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ..missing import missing_input
from .loss import token_nll

# The paper's setting: K = 4096 for 32K-token documents, blocks of 1024 targets per truncated context.
PAPER_DOC_LEN, PAPER_TRUNCATION, PAPER_BLOCK = 32768, 4096, 1024
FORMAT = "lmrepro.longppl.key_tokens/2"  # /2: blocks as in the reference package (/1 truncated differently)
_RESERVED_META = ("format", "evaluator_id", "truncation", "block", "lsd_threshold", "lcl_threshold",
                  "docs_sha256", "docs_shape")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_docs(docs) -> None:
    if not isinstance(docs, torch.Tensor) or docs.dim() != 2 or docs.dtype != torch.long:
        got = f"{type(docs).__name__} {getattr(docs, 'dtype', '')} of shape {tuple(getattr(docs, 'shape', ()))}"
        raise ValueError(f"docs must be a LongTensor [N, T], got {got}")
    if docs.shape[0] < 1 or docs.shape[1] < 2:
        raise ValueError(f"docs must hold at least one document of >= 2 tokens, got shape {tuple(docs.shape)}")


def _check_scores(name: str, x, docs_shape=None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [N, T-1], got {type(x).__name__} "
                         f"of shape {tuple(getattr(x, 'shape', ()))}")
    if docs_shape is not None and tuple(x.shape) != (docs_shape[0], docs_shape[1] - 1):
        raise ValueError(f"{name} has shape {tuple(x.shape)}; docs of shape {tuple(docs_shape)} "
                         f"need [N, T-1] = {(docs_shape[0], docs_shape[1] - 1)}")


def _device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def scaled_truncation(doc_len: int) -> tuple[int, int]:
    """(K, block) for documents of ``doc_len`` tokens, keeping the paper's ratios
    K = doc_len · 4096/32768 and block = K · 1024/4096 (both at least 1)."""
    _check_int("doc_len", doc_len, 2)
    k = max(1, round(doc_len * PAPER_TRUNCATION / PAPER_DOC_LEN))
    return k, max(1, round(k * PAPER_BLOCK / PAPER_TRUNCATION))


def truncation_blocks(doc_len: int, truncation: int, block: int) -> list[tuple[int, int, int]]:
    """(c, s, e): inclusive target ranges [s, e] whose shared context starts at token c < s (see module doc);
    only blocks that actually lose context (c > 0) are listed."""
    return [(s - truncation, s, min(s + block, doc_len) - 1)
            for s in range(truncation + block, doc_len, block)]


@torch.no_grad()
def key_token_scores(evaluator: torch.nn.Module, docs: torch.Tensor, truncation: int, block: int,
                     batch_size: int = 4) -> dict[str, torch.Tensor]:
    """Per-token LSD and LCL of ``evaluator`` on ``docs`` [N, T] (CPU float32 tensors [N, T−1]).

    lcl = log p(x_p | full prefix); lsd = lcl − log p(x_p | truncated context), with the truncated contexts
    shared by blocks of ``block`` targets as in the reference package (module doc). ``batch_size`` documents
    (full pass) or truncated windows of equal length (truncated pass) go through one forward.
    """
    _check_docs(docs)
    _check_int("truncation", truncation, 1)
    _check_int("block", block, 1)
    _check_int("batch_size", batch_size, 1)
    n, t = docs.shape
    device = _device(evaluator)
    was_training = evaluator.training
    evaluator.eval()
    try:
        lcl = torch.cat([-token_nll(evaluator, docs[i:i + batch_size].to(device)).cpu()
                         for i in range(0, n, batch_size)])
        truncated = lcl.clone()  # targets that keep their whole prefix: LSD exactly 0
        jobs = [(d, c, s, e) for d in range(n) for c, s, e in truncation_blocks(t, truncation, block)]
        # Windows x_c … x_{e−1}; only a document's last block can be shorter, so batch equal lengths together.
        by_len: dict[int, list] = {}
        for job in jobs:
            by_len.setdefault(job[3] - job[1], []).append(job)
        chunks = [g[i:i + batch_size] for g in by_len.values() for i in range(0, len(g), batch_size)]
        for chunk in chunks:
            windows = torch.stack([docs[d, c:e] for d, c, _, e in chunk]).to(device)  # [b, e − c]
            logits = evaluator(windows).float()  # [b, e − c, V]
            for row, (d, c, s, e) in enumerate(chunk):
                target = docs[d, s:e + 1].to(device)
                nll = F.cross_entropy(logits[row, s - c - 1:], target, reduction="none")
                truncated[d, s - 1:e] = -nll.cpu()
    finally:
        evaluator.train(was_training)
    return {"lsd": lcl - truncated, "lcl": lcl}


def select_key_tokens(lsd: torch.Tensor, lcl: torch.Tensor, lsd_threshold: float = 2.0,
                      lcl_threshold: float = -2.0) -> torch.Tensor:
    """Key-token mask [N, T−1]: LSD > ``lsd_threshold`` and LCL > ``lcl_threshold`` (both strict;
    NaN scores are never key tokens)."""
    _check_scores("lsd", lsd)
    _check_scores("lcl", lcl)
    if lsd.shape != lcl.shape:
        raise ValueError(f"lsd {tuple(lsd.shape)} and lcl {tuple(lcl.shape)} must have the same shape")
    return (lsd > lsd_threshold) & (lcl > lcl_threshold)


def long_ppl(model: torch.nn.Module, docs: torch.Tensor, key_mask: torch.Tensor, batch_size: int = 4) -> dict:
    """LongPPL of ``model`` on ``docs`` [N, T] over the key tokens ``key_mask`` [N, T−1] (bool).

    The NLL is pooled over all key tokens of all documents (key-token-weighted across documents).
    Returns {"longppl", "key_nll_mean", "n_key_tokens", "ppl_all", "n_tokens", "warning"}; ppl_all is
    the ordinary perplexity over every target. With no key token at all, longppl and key_nll_mean are
    NaN and "warning" says why (it is "" otherwise), so a sweep over checkpoints does not crash.
    """
    _check_docs(docs)
    _check_scores("key_mask", key_mask, docs.shape)
    if key_mask.dtype != torch.bool:
        raise ValueError(f"key_mask must be a bool tensor, got {key_mask.dtype}")
    _check_int("batch_size", batch_size, 1)
    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            nll = torch.cat([token_nll(model, docs[i:i + batch_size].to(device)).double().cpu()
                             for i in range(0, docs.shape[0], batch_size)])
    finally:
        model.train(was_training)
    n_key = int(key_mask.sum())
    out = {"ppl_all": math.exp(nll.mean().item()), "n_tokens": nll.numel(), "n_key_tokens": n_key, "warning": ""}
    if n_key == 0:
        msg = ("no key tokens: the evaluator found no token with LSD and LCL above the thresholds "
               "(documents too short for the truncation, or an evaluator without long-context ability)")
        warnings.warn(f"long_ppl: {msg}; LongPPL is NaN", RuntimeWarning, stacklevel=2)
        return {**out, "longppl": float("nan"), "key_nll_mean": float("nan"), "warning": msg}
    key_nll = nll[key_mask].sum().item() / n_key
    return {**out, "longppl": math.exp(key_nll), "key_nll_mean": key_nll}


def docs_fingerprint(docs: torch.Tensor) -> str:
    """sha256 of the token ids (little-endian int64, row-major): ties cached key tokens to their docs."""
    return hashlib.sha256(docs.detach().cpu().long().contiguous().numpy().astype("<i8").tobytes()).hexdigest()


def save_key_tokens(path: str | os.PathLike, docs: torch.Tensor, lsd: torch.Tensor, lcl: torch.Tensor, *,
                    evaluator_id: str, truncation: int, block: int, lsd_threshold: float = 2.0,
                    lcl_threshold: float = -2.0, extra: dict[str, str] | None = None) -> torch.Tensor:
    """Write docs [N, T], lsd / lcl [N, T−1] and the key mask they give to a safetensors file with the
    evaluator id, K, block, thresholds and a docs fingerprint as metadata (``extra``: more str → str
    entries, e.g. the tokenizer fingerprint). Returns the key mask. The mask is recomputed here, never
    passed in, so the file cannot disagree with its recorded thresholds."""
    from safetensors.torch import save_file  # lazy: only the caching stage needs it

    _check_docs(docs)
    _check_scores("lsd", lsd, docs.shape)
    _check_scores("lcl", lcl, docs.shape)
    if not isinstance(evaluator_id, str) or not evaluator_id:
        raise ValueError(f"evaluator_id must be a non-empty string, got {evaluator_id!r}")
    _check_int("truncation", truncation, 1)
    _check_int("block", block, 1)
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED_META))
    if clash or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise ValueError(f"extra must map str to str and avoid the reserved keys {list(_RESERVED_META)}; "
                         f"got clashes {clash}")
    key_mask = select_key_tokens(lsd, lcl, lsd_threshold, lcl_threshold)
    meta = {
        **extra,
        "format": FORMAT,
        "evaluator_id": evaluator_id,
        "truncation": str(truncation),
        "block": str(block),
        "lsd_threshold": repr(float(lsd_threshold)),  # repr round-trips a float exactly
        "lcl_threshold": repr(float(lcl_threshold)),
        "docs_sha256": docs_fingerprint(docs),
        "docs_shape": "x".join(map(str, docs.shape)),
    }
    tensors = {"docs": docs.detach().cpu().long().contiguous(), "lsd": lsd.detach().cpu().float().contiguous(),
               "lcl": lcl.detach().cpu().float().contiguous(), "key_mask": key_mask.cpu().contiguous()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return key_mask


def load_key_tokens(path: str | os.PathLike, docs: torch.Tensor | None = None) -> dict:
    """Read a file written by :func:`save_key_tokens` → {"docs", "lsd", "lcl", "key_mask", "meta"}.

    meta has typed "truncation", "block" (int), "lsd_threshold", "lcl_threshold" (float), plus the
    string entries. Raises ValueError if the file is not a key-token file, is internally inconsistent
    (docs fingerprint, mask vs thresholds), or, when ``docs`` is given, was computed on other documents.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing_input(f"key-token file {str(path)!r}",
                                              "pipelines/hybrid_attention/dvc.yaml:key-tokens"))
    with safe_open(str(path), framework="pt") as f:
        raw = dict(f.metadata() or {})
    if raw.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a key-token file (format {raw.get('format')!r}, expected {FORMAT!r})")
    t = load_file(str(path))
    meta = {**raw, "truncation": int(raw["truncation"]), "block": int(raw["block"]),
            "lsd_threshold": float(raw["lsd_threshold"]), "lcl_threshold": float(raw["lcl_threshold"])}
    if docs_fingerprint(t["docs"]) != meta["docs_sha256"]:
        raise ValueError(f"{str(path)!r}: stored docs do not match their recorded sha256 (corrupted file)")
    expected = select_key_tokens(t["lsd"], t["lcl"], meta["lsd_threshold"], meta["lcl_threshold"])
    if not torch.equal(expected, t["key_mask"]):
        raise ValueError(f"{str(path)!r}: key_mask disagrees with lsd/lcl and the recorded thresholds")
    if docs is not None:
        _check_docs(docs)
        if tuple(docs.shape) != tuple(t["docs"].shape) or docs_fingerprint(docs) != meta["docs_sha256"]:
            raise ValueError(f"docs (shape {tuple(docs.shape)}) differ from the documents the key tokens in "
                             f"{str(path)!r} were computed on (shape {meta['docs_shape']}); recompute them")
    return {**t, "meta": meta}
