"""Large-Window Laziness (hybrid-attention paper, claim 5): gradient influence and retrieval-head tracing.

- :func:`gradient_influence` — ‖∂T/∂E_i‖₂ of T = Σ_vocab mean_{last positions} logits w.r.t. each input
  embedding E_i; :func:`influence_by_distance` re-indexes it by distance from the end.
- :func:`retrieval_head_scores` — attention mass from the query position onto the needle's answer tokens;
  :func:`top_heads` picks the strongest heads; :func:`trace_heads` follows them across checkpoints
  (mass, normalized entropy, Frobenius drift of their W_q / W_k rows from a reference checkpoint).
- :func:`wu_retrieval_score` — the copy-based retrieval score of Wu et al. (2024); :func:`retrieval_heads`.

Per-head arrays are [L_attn, H]: one row per softmax-attention layer in model order
(:func:`lmrepro.eval.attention_maps.attention_layers`), windowed layers included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .attention_maps import attention_layers, attention_probs, layer_visibility, probs_from_states

__all__ = [
    "NeedleSample",
    "gradient_influence",
    "head_stats",
    "influence_by_distance",
    "retrieval_head_scores",
    "retrieval_heads",
    "top_heads",
    "trace_heads",
    "wu_retrieval_score",
]

ENTROPY_QUERIES = 4  # the paper's "last 4 query positions"


@dataclass(frozen=True)
class NeedleSample:
    """One needle prompt: token ids and the half-open span [start, end) of the needle's value tokens.

    The query position of the attention-mass score is ``len(prompt_ids) - 2``, the second-to-last prompt
    token (as in the authors' scripts), so the span must end at or before it.
    """

    prompt_ids: tuple[int, ...]
    answer_span: tuple[int, int]

    def __post_init__(self):
        ids = tuple(int(t) for t in self.prompt_ids)
        span = tuple(int(x) for x in self.answer_span)
        object.__setattr__(self, "prompt_ids", ids)
        object.__setattr__(self, "answer_span", span)
        if len(span) != 2 or not 0 <= span[0] < span[1] <= len(ids) - 2:
            raise ValueError(f"answer_span {self.answer_span!r} must be (start, end) with 0 <= start < end <= "
                             f"len(prompt_ids) - 2 = {len(ids) - 2} (the query position)")

    @property
    def query_position(self) -> int:
        return len(self.prompt_ids) - 2


def _as_sample(s) -> NeedleSample:
    if isinstance(s, NeedleSample):
        return s
    if isinstance(s, Mapping):
        return NeedleSample(s["prompt_ids"], s["answer_span"])
    if hasattr(s, "prompt_ids") and hasattr(s, "answer_span"):
        return NeedleSample(s.prompt_ids, s.answer_span)
    raise ValueError(f"samples: {type(s).__name__} has no prompt_ids / answer_span (use NeedleSample or a dict)")


def _as_samples(samples) -> list[NeedleSample]:
    out = [_as_sample(s) for s in samples]
    if not out:
        raise ValueError("samples: empty")
    return out


def _device(model) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------- gradient influence

def gradient_influence(model, input_ids: torch.Tensor, last: int = 20) -> np.ndarray:
    """input_ids [1, T] → ‖∂T/∂E_i‖₂ for i = 0..T−1 as float64 [T], with
    T = Σ_vocab (1/last) Σ_{t ≥ T−last} logits[t] and E_i the embedding output at position i."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be a LongTensor [1, T], got {getattr(input_ids, 'shape', type(input_ids))}")
    t = input_ids.shape[1]
    if isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= t:
        raise ValueError(f"last must be an int in 1..T={t}, got {last!r}")
    leaf = {}

    def make_leaf(module, args, output):
        # The hook swaps the embedding output for a leaf, so the model code stays untouched.
        leaf["e"] = output.detach().requires_grad_(True)
        return leaf["e"]

    was_training = model.training
    model.eval()
    handle = model.embed_tokens.register_forward_hook(make_leaf)
    try:
        with torch.enable_grad():
            logits = model(input_ids.to(_device(model)))
            # fp32 at least (bf16 logits on GPU), fp64 kept for fp64 models.
            target = logits[0, -last:].to(torch.promote_types(logits.dtype, torch.float32)).mean(dim=0).sum()
            (grad,) = torch.autograd.grad(target, leaf["e"])
    finally:
        handle.remove()
        model.train(was_training)
    return grad[0].double().norm(dim=-1).cpu().numpy()


def influence_by_distance(influence) -> np.ndarray:
    """influence [T] (or [N, T], averaged over N sequences) → [T] indexed by distance from the end:
    entry d is the influence of position T−1−d (d = 0: the last token)."""
    influence = np.asarray(influence, dtype=np.float64)
    if influence.ndim not in (1, 2) or influence.shape[-1] == 0:
        raise ValueError(f"influence must be [T] or [N, T], got shape {influence.shape}")
    if influence.ndim == 2:
        influence = influence.mean(axis=0)
    return influence[::-1].copy()


# ---------------------------------------------------------------- attention mass and entropy

def _rows(model) -> list[int]:
    rows = attention_layers(model)
    if not rows:
        raise ValueError("model has no softmax-attention layer")
    return rows


def _normalized_entropy(p: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """p [H, Tq, T], visible [Tq, T] → entropy / log(#visible keys) [H, Tq]; 0 where one key is visible
    (a distribution on a single key is perfectly sharp)."""
    n = visible.sum(-1).to(p.dtype)
    ent = torch.special.entr(p).sum(-1)  # entr(0) = 0: masked keys add nothing
    return torch.where(n > 1, ent / n.clamp(min=2).log(), torch.zeros_like(ent))


@torch.no_grad()
def head_stats(model, samples) -> tuple[np.ndarray, np.ndarray]:
    """Per-head (mass, entropy), each [L_attn, H], averaged over samples.

    mass: attention probability from the query position (second-to-last prompt token) summed over the
    answer span; entropy: normalized entropy (:func:`_normalized_entropy`) averaged over the last
    4 query positions. Each in [0, 1].
    """
    samples = _as_samples(samples)
    rows = _rows(model)
    heads = model.layers[rows[0]].mixer.num_heads
    mass, entropy = np.zeros((len(rows), heads)), np.zeros((len(rows), heads))
    was_training = model.training
    model.eval()
    for s in samples:
        t = len(s.prompt_ids)
        queries = list(range(max(0, t - ENTROPY_QUERIES), t))
        ids = torch.tensor([s.prompt_ids], device=_device(model))
        probs = attention_probs(model, ids, rows, query_positions=queries)
        a, b = s.answer_span
        for r, i in enumerate(rows):
            p = probs[i][0]  # [H, Tq, T]
            mass[r] += p[:, queries.index(s.query_position), a:b].sum(-1).double().cpu().numpy()
            visible = layer_visibility(model, i, t, device=p.device)[queries]
            entropy[r] += _normalized_entropy(p, visible).mean(-1).double().cpu().numpy()
    model.train(was_training)
    return mass / len(samples), entropy / len(samples)


def retrieval_head_scores(model, samples) -> np.ndarray:
    """[L_attn, H] attention mass from the query position (index len(prompt_ids) − 2) onto the answer
    span, averaged over samples (:class:`NeedleSample` or dicts / objects with the same fields)."""
    return head_stats(model, samples)[0]


def _check_scores(scores, model) -> tuple[np.ndarray, list[int]]:
    rows = _rows(model)
    scores = np.asarray(scores, dtype=np.float64)
    heads = model.layers[rows[0]].mixer.num_heads
    if scores.shape != (len(rows), heads):
        raise ValueError(f"scores must be [L_attn, H] = {[len(rows), heads]} (attention layers {rows}), "
                         f"got {list(scores.shape)}")
    return scores, rows


def top_heads(scores, model, k: int = 4, layers=None) -> list[tuple[int, int]]:
    """The ``k`` highest-scoring (layer_idx, head) pairs among ``layers`` (default: the full-attention
    layers), best first; ties go to the lower layer, then the lower head."""
    scores, rows = _check_scores(scores, model)
    allowed = attention_layers(model, full_only=True) if layers is None else [int(i) for i in layers]
    bad = [i for i in allowed if i not in rows]
    if bad:
        raise ValueError(f"layers: {bad} are not softmax-attention layers; allowed: {rows}")
    candidates = [(-scores[rows.index(i), h], i, h) for i in allowed for h in range(scores.shape[1])]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(candidates):
        raise ValueError(f"k must be an int in 1..{len(candidates)} (heads in layers {allowed}), got {k!r}")
    return [(i, h) for _, i, h in sorted(candidates)[:k]]


def retrieval_heads(scores, model, threshold: float = 0.1) -> list[tuple[int, int]]:
    """(layer_idx, head) of every head whose score is above ``threshold`` (Wu et al.: 0.1), best first."""
    scores, rows = _check_scores(scores, model)
    picked = [(-scores[r, h], i, h) for r, i in enumerate(rows) for h in range(scores.shape[1])
              if scores[r, h] > threshold]
    return [(i, h) for _, i, h in sorted(picked)]


# ---------------------------------------------------------------- tracing across checkpoints

def _check_heads(model, heads) -> list[tuple[int, int]]:
    rows = _rows(model)
    n = model.layers[rows[0]].mixer.num_heads
    heads = [(int(i), int(h)) for i, h in heads]
    bad = [(i, h) for i, h in heads if i not in rows or not 0 <= h < n]
    if bad or not heads:
        raise ValueError(f"heads: {bad or 'empty'}; allowed: (layer, head) with layer in {rows}, head in 0..{n - 1}")
    return heads


def _head_rows(model, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W_q rows of ``head`` [D, hidden] and W_k rows of its kv head h // (H / Hkv) [D, hidden]."""
    mixer = model.layers[layer].mixer
    d, g = mixer.head_dim, head // (mixer.num_heads // mixer.num_kv_heads)
    return (mixer.q_proj.weight[head * d:(head + 1) * d].detach().double(),
            mixer.k_proj.weight[g * d:(g + 1) * d].detach().double())


def _drift(w: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Frobenius distance and distance / ‖ref‖ (nan for an all-zero reference)."""
    dist, norm = float((w - ref.to(w.device)).norm()), float(ref.norm())
    return dist, dist / norm if norm > 0 else float("nan")


def trace_heads(checkpoints: Sequence, heads, samples, reference_index: int = -1) -> list[dict]:
    """Follow ``heads`` [(layer_idx, head)] across ``checkpoints`` (models of one spec, in training order).

    Returns one dict per checkpoint, with lists aligned to ``heads``:
    {"checkpoint": index, "heads": [[layer, head], ...], "mass", "entropy" (see :func:`head_stats`),
     "wq_distance", "wq_relative", "wk_distance", "wk_relative"} — Frobenius distance of the head's W_q rows
    (and of its kv head's W_k rows) from checkpoint ``reference_index``, absolute and divided by the
    reference rows' norm.
    """
    checkpoints = list(checkpoints)
    if not checkpoints:
        raise ValueError("checkpoints: empty")
    if not -len(checkpoints) <= reference_index < len(checkpoints):
        raise ValueError(f"reference_index {reference_index} out of range for {len(checkpoints)} checkpoints")
    specs = {getattr(m, "spec", None) for m in checkpoints}
    if len(specs) != 1:
        raise ValueError("checkpoints: all models must share one LMSpec to compare their weights")
    heads = _check_heads(checkpoints[0], heads)
    samples = _as_samples(samples)
    rows = _rows(checkpoints[0])
    ref = checkpoints[reference_index]
    out = []
    for c, model in enumerate(checkpoints):
        mass, entropy = head_stats(model, samples)
        rec = {"checkpoint": c, "heads": [[i, h] for i, h in heads], "mass": [], "entropy": [],
               "wq_distance": [], "wq_relative": [], "wk_distance": [], "wk_relative": []}
        for i, h in heads:
            rec["mass"].append(float(mass[rows.index(i), h]))
            rec["entropy"].append(float(entropy[rows.index(i), h]))
            (wq, wk), (rq, rk) = _head_rows(model, i, h), _head_rows(ref, i, h)
            for name, (w, r) in (("wq", (wq, rq)), ("wk", (wk, rk))):
                dist, rel = _drift(w, r)
                rec[f"{name}_distance"].append(dist)
                rec[f"{name}_relative"].append(rel)
        out.append(rec)
    return out


# ---------------------------------------------------------------- Wu et al. retrieval score

@torch.no_grad()
def wu_retrieval_score(model, samples, max_new_tokens: int) -> np.ndarray:
    """Copy-based retrieval score [L_attn, H] (Wu et al. 2024), averaged over samples.

    Greedy decoding from the whole prompt (repeated full forwards, no cache) for ``max_new_tokens`` steps;
    at each step the head *copies* when its top-1 attention from the current position (the one whose
    logits give the new token) lands on an answer-span position whose token id equals the generated
    token. Score = fraction of answer-span positions copied at least once.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    samples = _as_samples(samples)
    rows = _rows(model)
    heads = model.layers[rows[0]].mixer.num_heads
    device = _device(model)
    score = np.zeros((len(rows), heads))
    was_training = model.training
    model.eval()
    for s in samples:
        a, b = s.answer_span
        needle = torch.tensor(s.prompt_ids[a:b], device=device)
        copied = torch.zeros(len(rows), heads, b - a, dtype=torch.bool, device=device)
        seq = list(s.prompt_ids)
        for _ in range(max_new_tokens):
            states = model.hidden_states(torch.tensor([seq], device=device))
            token = int(model.lm_head(model.norm(states[-1][0, -1])).argmax())
            probs = probs_from_states(model, states, rows, query_positions=[-1])
            for r, i in enumerate(rows):
                top = probs[i][0, :, 0].argmax(-1)  # [H] key position of each head's top-1 attention
                inside = (top >= a) & (top < b)
                hit = (inside & (needle[(top - a).clamp(0, b - a - 1)] == token)).nonzero().squeeze(-1)
                copied[r, hit, top[hit] - a] = True
            seq.append(token)
        score += copied.double().mean(-1).cpu().numpy()
    model.train(was_training)
    return score / len(samples)
