"""Layer-wise linear probing of NIAH prompts (hybrid-attention paper, claim 4).

Protocol of the paper's analysis: for each prompt take every layer's residual state at the last prompt
token (and the per-layer delta state_ℓ − state_{ℓ−1}); per layer fit a standardized logistic regression
(C = 0.1) on a stratified 80/20 split and report the test accuracy (chance = 1 / #classes, 1/8 there).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["layer_features", "layerwise_probe", "probe_accuracy", "stratified_split"]


def _as_prompts(prompts) -> list[torch.Tensor]:
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"prompts: a tensor must be [N, T], got shape {list(prompts.shape)}")
        return list(prompts)
    out = [torch.as_tensor(p, dtype=torch.long) for p in prompts]
    bad = [i for i, p in enumerate(out) if p.dim() != 1 or p.numel() == 0]
    if bad:
        raise ValueError(f"prompts: entries {bad[:5]} are not non-empty 1-D token sequences")
    return out


@torch.no_grad()
def layer_features(model, prompts, position: int = -1, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Residual states at one token of each prompt.

    Args:
        prompts: LongTensor [N, T] or a list of N 1-D token sequences (lengths may differ).
        position: index inside each prompt (negative counts from its end; -1 = last prompt token).
    Returns:
        {"residual": [L+1, N, hidden] (embedding output first, last block's output before the final norm),
         "delta": [L, N, hidden] = residual[1:] − residual[:-1]} as float32 arrays.
    """
    prompts = _as_prompts(prompts)
    if not prompts:
        raise ValueError("prompts: empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    picks = []
    for i, p in enumerate(prompts):
        n = p.numel()
        if not -n <= position < n:
            raise ValueError(f"position {position} is outside prompt {i} of {n} tokens")
        picks.append(position % n)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        # Right padding is exact: every mixer is causal, so a state never depends on later (pad) tokens.
        ids = torch.zeros(len(batch), max(p.numel() for p in batch), dtype=torch.long)
        for r, p in enumerate(batch):
            ids[r, :p.numel()] = p
        idx = torch.tensor(picks[start:start + batch_size], device=device)
        rows = torch.arange(len(batch), device=device)
        states = model.hidden_states(ids.to(device))
        chunks.append(torch.stack([s[rows, idx] for s in states]).float().cpu())  # [L+1, b, hidden]
    model.train(was_training)
    residual = torch.cat(chunks, dim=1).numpy()
    return {"residual": residual, "delta": np.diff(residual, axis=0)}


def stratified_split(labels, test_size: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of a stratified split: each class keeps its share in both parts."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D [N], got shape {labels.shape}")
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size!r}")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"labels: need at least 2 classes to probe, got {classes.tolist()}")
    if counts.min() < 2:
        raise ValueError(f"labels: every class needs >= 2 examples for a stratified split; "
                         f"class {classes[counts.argmin()]!r} has {counts.min()}")
    n_test = int(np.ceil(test_size * len(labels)))
    if n_test < len(classes) or len(labels) - n_test < len(classes):
        raise ValueError(f"test_size={test_size} with {len(labels)} examples leaves fewer examples than the "
                         f"{len(classes)} classes in one part; use more examples")
    return train_test_split(np.arange(len(labels)), test_size=test_size, random_state=seed, stratify=labels)


def probe_accuracy(features, labels, C: float = 0.1, test_size: float = 0.2, seed: int = 0) -> float:
    """features [N, d], labels [N] → test accuracy of a standardized logistic regression (L2, ``C``)
    trained on a stratified split (:func:`stratified_split`)."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise ValueError(f"features must be [N, d] and labels [N]; got {features.shape} and {labels.shape}")
    if not C > 0:
        raise ValueError(f"C must be > 0, got {C!r}")
    train, test = stratified_split(labels, test_size, seed)
    # lbfgs on standardized features converges well within this many steps at these sizes.
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
    probe.fit(features[train], labels[train])
    return float(probe.score(features[test], labels[test]))


def layerwise_probe(features_by_layer: Sequence | np.ndarray, labels, C: float = 0.1, test_size: float = 0.2,
                    seed: int = 0) -> list[float]:
    """features_by_layer [L, N, d] (e.g. ``layer_features(...)["residual"]``) → test accuracy per layer."""
    return [probe_accuracy(f, labels, C=C, test_size=test_size, seed=seed) for f in features_by_layer]
