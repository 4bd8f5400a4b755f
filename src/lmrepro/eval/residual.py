"""Residual-stream and MLP analyses of the xformer brief ("qualitatively different residual streams").

* :func:`matrix_entropy` / :func:`residual_entropy_by_layer`: normalized matrix entropy per layer;
* :func:`mlp_activations`, :func:`activation_density`, :func:`unit_utilization`,
  :func:`participation_ratio`: how many SwiGLU hidden units a block uses;
* :func:`logit_lens`: the model's own readout applied to every layer's residual stream.

Choices the paper body leaves open (ours, stated where they apply): the tokens×dims matrix is not
centered; the entropy is normalized by log min(tokens, dims); a variable-width layer's residual is its
active prefix; "active" in utilization is |a| above the layer's RMS activation unless a threshold is given;
the logit lens applies the final norm to the whole residual buffer (exact at the last layer); the
layer-to-layer KL is KL(p_{ℓ+1} ‖ p_ℓ).
"""

from __future__ import annotations

from numbers import Real
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models.lm import DecoderLM
from ..models.varwidth import stage_widths


def matrix_entropy(X: torch.Tensor | np.ndarray) -> float:
    """Normalized matrix entropy of X [tokens, dims], in [0, 1].

    H = −Σ_j p_j log p_j / log r with p_j = σ_j² / ‖X‖_F² over the singular values σ_j of X (X is used as
    given, not centered) and r = min(tokens, dims), the largest possible rank: H = 0 for rank 1, H = 1
    when all r singular values are equal. A 1-row or 1-column matrix (r = 1) has H = 0.
    """
    X = torch.as_tensor(X).detach().to("cpu", torch.float64)
    if X.dim() != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"X: expected a non-empty 2-D [tokens, dims] matrix, got shape {tuple(X.shape)}")
    if not torch.isfinite(X).all():
        raise ValueError("X: contains NaN or inf")
    r = min(X.shape)
    s2 = torch.linalg.svdvals(X).pow(2)
    total = float(s2.sum())
    if total == 0.0:
        raise ValueError("X: is all zeros; its singular-value distribution (and entropy) is undefined")
    if r == 1:
        return 0.0
    p = s2 / total
    p = p[p > 0]  # 0·log 0 = 0
    return float(-(p * p.log()).sum() / np.log(r))


def _check_ids(input_ids: torch.Tensor, name: str = "input_ids") -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"{name}: expected a LongTensor [B, T], got {got}")


@torch.no_grad()
def residual_entropy_by_layer(model: DecoderLM, input_ids: torch.Tensor) -> list[float]:
    """input_ids [B, T] → L+1 normalized matrix entropies (after the embedding, after each block) of the
    residual stream as a [B·T, width] matrix. For a variable-width model stage ℓ uses its active prefix:
    h coordinates after the embedding, w_ℓ after block ℓ (the buffer's other coordinates are values
    carried past the block, not part of its stream)."""
    _check_ids(input_ids)
    states = model.hidden_states(input_ids)
    widths = stage_widths(model.spec)
    return [matrix_entropy(s[..., :w].reshape(-1, w)) for s, w in zip(states, widths)]


@torch.no_grad()
def mlp_activations(model: DecoderLM, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """input_ids [B, T] → per block the SwiGLU hidden silu(gate(x))·up(x) as [B·T, 4·w_ℓ] (fp32, CPU).

    Captured by a forward pre-hook on each block's ``mlp.down_proj`` (its input is exactly that hidden),
    so nothing is recomputed; the hooks are removed even if the forward fails."""
    _check_ids(input_ids)
    acts: list[torch.Tensor | None] = [None] * len(model.layers)

    def hook_for(i):
        def hook(_module, args):
            acts[i] = args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu()
        return hook

    handles = [block.mlp.down_proj.register_forward_pre_hook(hook_for(i)) for i, block in enumerate(model.layers)]
    try:
        model(input_ids)
    finally:
        for handle in handles:
            handle.remove()
    return acts


def _check_acts(acts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if len(acts) == 0:
        raise ValueError("acts: expected one [tokens, units] tensor per layer, got an empty list")
    out = []
    for i, a in enumerate(acts):
        a = torch.as_tensor(a)
        if a.dim() != 2 or a.numel() == 0:
            raise ValueError(f"acts[{i}]: expected a non-empty [tokens, units] tensor, got shape {tuple(a.shape)}")
        out.append(a.detach().to("cpu", torch.float64))
    return out


def activation_density(acts: Sequence[torch.Tensor], thresholds: Sequence[float]) -> np.ndarray:
    """Fraction of |a| > threshold over all tokens and units of each layer.

    acts: L tensors [tokens, units_ℓ]; thresholds: K finite numbers. Returns ndarray [L, K]."""
    acts = _check_acts(acts)
    th = np.asarray(thresholds, dtype=np.float64)
    if th.ndim != 1 or th.size == 0 or not np.all(np.isfinite(th)):
        raise ValueError(f"thresholds: expected a non-empty 1-D sequence of finite numbers, got {thresholds!r}")
    out = np.empty((len(acts), th.size))
    for i, a in enumerate(acts):
        mags = a.abs().flatten()
        for k, t in enumerate(th):
            out[i, k] = float((mags > t).double().mean())
    return out


def unit_utilization(acts: Sequence[torch.Tensor], threshold: float | None = None) -> list[np.ndarray]:
    """Per unit, the fraction of tokens on which it is active (for heatmaps): L arrays [units_ℓ].

    Active = |a_{t,i}| > threshold; with threshold None (default) each layer uses its own RMS activation
    sqrt(mean a²) as the threshold, so models of different scale and width are comparable (our choice)."""
    acts = _check_acts(acts)
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, Real)
                                  or not np.isfinite(threshold)):
        raise ValueError(f"threshold: expected None or a finite number, got {threshold!r}")
    out = []
    for a in acts:
        t = float(a.pow(2).mean().sqrt()) if threshold is None else float(threshold)
        out.append((a.abs() > t).double().mean(0).numpy())
    return out


def participation_ratio(acts: Sequence[torch.Tensor]) -> list[float]:
    """Energy participation ratio per layer: N_eff = (Σ_i e_i)² / Σ_i e_i², e_i = Σ_t a_{t,i}².

    acts: L tensors [tokens, units]. N_eff is 1 when one unit holds all energy, ``units`` when all hold
    the same. A layer with no energy at all raises (N_eff undefined)."""
    acts = _check_acts(acts)
    out = []
    for i, a in enumerate(acts):
        e = a.pow(2).sum(0)
        denom = float(e.pow(2).sum())
        if denom == 0.0:
            raise ValueError(f"acts[{i}]: all activations are zero; the participation ratio is undefined")
        out.append(float(e.sum()) ** 2 / denom)
    return out


@torch.no_grad()
def logit_lens(model: DecoderLM, input_ids: torch.Tensor, targets: torch.Tensor,
               ignore_index: int = -100) -> dict[str, np.ndarray]:
    """Decode every layer's residual stream with the model's own readout (final RMSNorm + LM head).

    input_ids, targets: [B, T] (targets usually input_ids shifted by one; ``ignore_index`` positions skipped).
    Stage ℓ = 0 (embedding) .. L (last block, where the lens equals the model's logits exactly). For a
    variable-width model the readout is applied to the whole residual buffer, i.e. the norm spans the same
    max(w_L, h) coordinates as at the end of the model (they hold the stream as it would reach the head if
    the model stopped after block ℓ).

    Returns dict of float ndarrays, means over the kept tokens:
        logprob [L+1]: log p_ℓ(target); entropy [L+1]: entropy of p_ℓ (nats);
        kl_next [L]: KL(p_{ℓ+1} ‖ p_ℓ), what block ℓ+1 changes in the prediction.
    """
    _check_ids(input_ids)
    _check_ids(targets, "targets")
    if targets.shape != input_ids.shape:
        raise ValueError(f"targets: shape {tuple(targets.shape)} must equal input_ids shape {tuple(input_ids.shape)}")
    keep = targets != ignore_index
    if not keep.any():
        raise ValueError(f"targets: every position is ignore_index={ignore_index}")
    tgt = targets[keep]
    logprob, entropy, kl_next = [], [], []
    prev = None
    for state in model.hidden_states(input_ids):
        logp = F.log_softmax(model.readout(state)[keep].double(), dim=-1)  # [N, V]
        logprob.append(float(logp.gather(-1, tgt[:, None]).mean()))
        entropy.append(float(-(logp.exp() * logp).sum(-1).mean()))
        if prev is not None:
            kl_next.append(float((logp.exp() * (logp - prev)).sum(-1).mean()))
        prev = logp
    return {"logprob": np.array(logprob), "entropy": np.array(entropy), "kl_next": np.array(kl_next)}
