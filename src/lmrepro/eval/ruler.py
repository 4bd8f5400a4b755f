"""RULER-style evaluation of the synthetic tasks in :mod:`lmrepro.data.synthetic` by greedy decoding.

Scoring (:func:`score_answer`) reads the maximal digit runs of the decoded continuation:

* one-answer kinds (single_needle, multikey, kv_retrieval, probe): correct iff the FIRST number the
  model writes is exactly the value ("4817204." is right, "48172041" and "4817" are wrong);
* multivalue / multiquery: correct iff every expected value appears among the numbers written, in any
  order (RULER's all-values criterion; extra numbers are not penalised).
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

from ..data.synthetic import Sample
from ..models.generate import greedy_generate

ONE_ANSWER_KINDS = ("single_needle", "multikey", "kv_retrieval", "probe")
ALL_ANSWER_KINDS = ("multivalue", "multiquery")
_NUMBER = re.compile(r"\d+")


def score_answer(kind: str, generated_text: str, answer) -> bool:
    """Whether ``generated_text`` answers a sample of ``kind`` whose expected values are ``answer``
    (one value string, or a sequence of them in answer order); rules in the module doc."""
    values = [answer] if isinstance(answer, str) else list(answer)
    if not values or not all(isinstance(v, str) and v.isdigit() for v in values):
        raise ValueError(f"answer must be a digit string or a non-empty sequence of them, got {answer!r}")
    numbers = _NUMBER.findall(generated_text)
    if kind in ONE_ANSWER_KINDS:
        if len(values) != 1:
            raise ValueError(f"kind {kind!r} has one answer value, got {len(values)}: {values}")
        return bool(numbers) and numbers[0] == values[0]
    if kind in ALL_ANSWER_KINDS:
        return all(v in numbers for v in values)
    raise ValueError(f"kind {kind!r} is unknown; choose one of {list(ONE_ANSWER_KINDS + ALL_ANSWER_KINDS)}")


def needle_answer_positions(sample: Sample) -> list[int]:
    """Prompt token indices of the expected value(s) inside their needles (the tokens a retrieval head
    should attend to / copy), in answer order."""
    return [i for start, end in sample.answer_positions for i in range(start, end)]


def needle_token_positions(sample: Sample) -> list[int]:
    """Prompt token indices covered by any needle (distractors included), ascending."""
    return sorted(i for start, end in sample.needle_positions for i in range(start, end))


def _depth_bin(depth: float, bins: int) -> float:
    """Midpoint of the equal-width bin of [0, 1] that holds ``depth`` (1.0 falls in the last bin)."""
    b = min(int(depth * bins), bins - 1)
    return round((b + 0.5) / bins, 6)


@torch.no_grad()
def evaluate_task(model: torch.nn.Module, samples: list[Sample], tokenizer, max_new_tokens: int | None = None,
                  batch_size: int = 8, depth_bins: int = 5) -> dict:
    """Greedy-decode every sample with the model's cache and score it with :func:`score_answer`.

    tokenizer: decodes the generated ids (the one the samples were made with).
    max_new_tokens: None = longest answer + 2, so a number that runs on past the answer is caught.
    Samples of equal prompt length are batched (prompts of one make_task call all are).
    Returns {"accuracy", "n", "n_correct", "per_depth": {bin midpoint: {"accuracy", "n"}},
    "correct": list[bool], "generated": list[str]} (lists in the order of ``samples``).
    """
    if not samples:
        raise ValueError("samples must be a non-empty list of Sample")
    for name, value in (("batch_size", batch_size), ("depth_bins", depth_bins)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    n_new = max(len(s.answer_ids) for s in samples) + 2 if max_new_tokens is None else max_new_tokens
    if isinstance(n_new, bool) or not isinstance(n_new, int) or n_new < 1:
        raise ValueError(f"max_new_tokens must be None or an int >= 1, got {max_new_tokens!r}")
    device = next(model.parameters()).device
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_len[len(s.prompt_ids)].append(i)
    generated: list[str] = [""] * len(samples)
    for idx in by_len.values():
        for k in range(0, len(idx), batch_size):
            chunk = idx[k:k + batch_size]
            ids = torch.tensor([samples[i].prompt_ids for i in chunk], dtype=torch.long, device=device)
            out = greedy_generate(model, ids, n_new)[:, ids.shape[1]:].tolist()
            for i, row in zip(chunk, out):
                generated[i] = tokenizer.decode(row)
    correct = [score_answer(s.kind, g, list(s.values)) for s, g in zip(samples, generated)]
    groups: dict[float, list[bool]] = defaultdict(list)
    for s, c in zip(samples, correct):
        groups[_depth_bin(s.depth, depth_bins)].append(c)
    per_depth = {d: {"accuracy": sum(v) / len(v), "n": len(v)} for d, v in sorted(groups.items())}
    return {"accuracy": sum(correct) / len(correct), "n": len(correct), "n_correct": sum(correct),
            "per_depth": per_depth, "correct": correct, "generated": generated}
