"""Greedy decoding with the model's incremental cache (KV cache / recurrent state)."""

from __future__ import annotations

import torch

from .lm import DecoderLM


@torch.no_grad()
def greedy_generate(model: DecoderLM, input_ids: torch.Tensor, max_new_tokens: int,
                    eos_id: int | None = None) -> torch.Tensor:
    """input_ids [B, T] → [B, T + n] with n ≤ max_new_tokens greedy tokens (stops when every row hit eos)."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    was_training = model.training
    model.eval()
    cache = model.new_cache()
    logits = model(input_ids, cache)
    out = [input_ids]
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        if eos_id is not None:
            nxt = torch.where(done[:, None], torch.full_like(nxt, eos_id), nxt)
            done |= nxt[:, 0] == eos_id
        out.append(nxt)
        if eos_id is not None and bool(done.all()):
            break
        logits = model(nxt, cache)
    model.train(was_training)
    return torch.cat(out, dim=1)
