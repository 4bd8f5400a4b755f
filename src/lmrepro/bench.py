"""Training throughput on this machine: the number ``make bench`` prints and ``stage_times --bench`` records, so
timings measured on two machines can be compared."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def tokens_per_second(model: torch.nn.Module, vocab: int, batch: int, seq_len: int, steps: int,
                      hf: bool = False) -> float:
    """Median training tokens/s (forward + backward + AdamW step) of ``model`` on random [batch, seq_len] ids;
    the first step only warms up. ``hf``: the model returns an output with ``.logits`` (transformers)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, vocab, (batch, seq_len + 1))
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        logits = model(x[:, :-1]).logits if hf else model(x[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
    times.sort()
    return batch * seq_len / times[len(times) // 2]


def laptop_tokens_per_second(steps: int = 3) -> float:
    """:func:`tokens_per_second` of the laptop profile's full-attention baseline at its training shape."""
    from .config import load_config
    from .models import DecoderLM, LMSpec

    cfg = load_config(profile="laptop")
    spec = LMSpec.from_config(cfg.model, cfg.tokenizer.vocab_size)
    torch.manual_seed(0)
    return tokens_per_second(DecoderLM(spec), spec.vocab_size, cfg.train.micro_batch_size, cfg.train.seq_len, steps)
