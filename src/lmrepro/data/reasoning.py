"""A small synthetic reasoning SFT task: multi-step integer arithmetic with a scratchpad.

One problem is a chain ``a0 op1 b1 op2 b2 ...`` evaluated left to right, written with the fewest
parentheses that make standard precedence agree with that order::

    prompt: "Q: (17+5)*3-4=?\\nA:"
    target: " 17+5=22; 22*3=66; 66-4=62. #### 62"      (EOS is appended by the encoder)
    answer: "62"

The scratchpad makes every intermediate result a supervised token sequence, so a small model can
learn the task step by step, and the final ``#### <answer>`` gives an exact-match metric
(:func:`exact_match`) in the style of GSM8K.

Difficulty knobs: ``steps`` (the allowed numbers of operations), ``max_operand`` (operands of + and -
are drawn from 1..max_operand) and ``max_multiplier`` (operands of * from 2..max_multiplier, so values
stay a few digits long). Subtraction never goes below zero, so every value is a non-negative integer.

Splits: problems are drawn from one ``random.Random(seed)`` stream and deduplicated by prompt; the
first ``n_val`` distinct problems are the validation split and the next ``n_train`` the training
split. Validation therefore does not depend on ``n_train`` (growing the training set never changes
what is evaluated) and no problem is in both splits.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from .corpus import DataError
from .tokenizer import PAD_TOKEN, eos_id

IGNORE_INDEX = -100  # the label value cross_entropy (and every HF causal LM) skips
OPS = ("+", "-", "*")
ANSWER_MARK = "####"
# An optional sign, then digits; whitespace between the mark and the number is allowed.
_ANSWER_RE = re.compile(re.escape(ANSWER_MARK) + r"\s*([+-]?\d+)")


@dataclass(frozen=True)
class Example:
    """One SFT example: the model sees ``prompt`` and is trained to continue with ``target``."""

    prompt: str
    target: str
    answer: str


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DataError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_steps(steps) -> tuple[int, ...]:
    if isinstance(steps, int) and not isinstance(steps, bool):
        steps = (steps,)
    try:
        steps = tuple(steps)
    except TypeError:
        raise DataError(f"steps must be an int or a non-empty sequence of ints >= 1, got {steps!r}") from None
    if not steps or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps):
        raise DataError(f"steps must be an int or a non-empty sequence of ints >= 1, got {steps!r}")
    return tuple(sorted(set(steps)))


def _check_ops(ops) -> tuple[str, ...]:
    ops = tuple(ops)
    bad = [o for o in ops if o not in OPS]
    if not ops or bad:
        raise DataError(f"ops must be a non-empty subset of {list(OPS)}, got {list(ops)!r}")
    return tuple(dict.fromkeys(ops))  # keep order, drop repeats


def make_problem(rng: random.Random, num_steps: int, max_operand: int, max_multiplier: int,
                 ops: Sequence[str] = OPS) -> Example:
    """One problem with ``num_steps`` operations drawn from ``rng`` (see the module docstring)."""
    value = rng.randint(1, max_operand)
    expr, top_op = str(value), None  # top_op: the lowest-precedence operator at the expression's top
    lines = []
    for _ in range(num_steps):
        choices = [o for o in ops if not (o == "-" and value < 1)]  # 0 - b would go negative
        op = rng.choice(choices or ["+"])
        if op == "*":
            b = rng.randint(2, max_multiplier)
            new = value * b
            # Left-to-right order needs parentheses only when * follows a + or - chain.
            expr, top_op = (f"({expr})" if top_op in ("+", "-") else expr) + f"*{b}", "*"
        else:
            b = rng.randint(1, min(max_operand, value)) if op == "-" else rng.randint(1, max_operand)
            new = value + b if op == "+" else value - b
            expr, top_op = f"{expr}{op}{b}", op
        lines.append(f"{value}{op}{b}={new}")
        value = new
    return Example(
        prompt=f"Q: {expr}=?\nA:",
        target=" " + "; ".join(lines) + f". {ANSWER_MARK} {value}",
        answer=str(value),
    )


def make_reasoning_split(n_train: int, n_val: int, seed: int, steps: int | Iterable[int] = (2, 3),
                         max_operand: int = 20, max_multiplier: int = 9,
                         ops: Sequence[str] = OPS) -> tuple[list[Example], list[Example]]:
    """(train, val) lists of distinct problems; deterministic in all arguments.

    Each problem's number of operations is drawn uniformly from ``steps``. Raises DataError if the
    knobs allow fewer than ``n_train + n_val`` distinct problems (raise max_operand or add steps).
    """
    _check_int("n_train", n_train, 0)
    _check_int("n_val", n_val, 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an integer, got {seed!r}")
    steps = _check_steps(steps)
    _check_int("max_operand", max_operand, 1)
    _check_int("max_multiplier", max_multiplier, 2)
    ops = _check_ops(ops)
    rng = random.Random(f"reasoning:{seed}")  # str seeds hash with sha512: stable across runs
    need = n_train + n_val
    seen: set[str] = set()
    problems: list[Example] = []
    # Generous bound: a small problem space shows up as many repeats, then as this error.
    for _ in range(50 * need + 1000):
        if len(problems) == need:
            break
        ex = make_problem(rng, rng.choice(steps), max_operand, max_multiplier, ops)
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            problems.append(ex)
    if len(problems) < need:
        raise DataError(
            f"found only {len(problems)} distinct problems for n_train + n_val = {need} with steps={steps}, "
            f"max_operand={max_operand}, max_multiplier={max_multiplier}; raise max_operand or allow more steps"
        )
    return problems[n_val:], problems[:n_val]


def exact_match(generated_text: str, answer: str) -> bool:
    """True if the first number after ``####`` in ``generated_text`` equals ``answer`` as an integer.

    Text before the mark (the scratchpad) is ignored; a missing mark or number is a miss.
    """
    m = _ANSWER_RE.search(generated_text)
    if m is None:
        return False
    try:
        return int(m.group(1)) == int(str(answer).strip())
    except ValueError:
        return False


def pad_id(tokenizer) -> int:
    """The ``<|pad|>`` id of a project tokenizer (EOS if it has none)."""
    i = tokenizer.token_to_id(PAD_TOKEN)
    return eos_id(tokenizer) if i is None else i


def pack_sft(pairs: Sequence[tuple[list[int], list[int]]], pad: int, max_len: int) -> dict[str, torch.Tensor]:
    """Right-pad (prompt_ids, target_ids) pairs into one batch.

    Returns input_ids [N, T] (long, ``pad`` after each sequence), labels [N, T] (the target ids at
    their own positions, -100 on prompt and padding) and lengths [N] (real tokens per row), with T the
    longest sequence. Labels are aligned with the inputs (HF convention): the loss predicts
    labels[:, t+1] from positions <= t. Right padding is harmless for a causal model: a real position
    never attends to the padding after it. Raises DataError if a sequence exceeds ``max_len`` (a cut
    target would teach the model to stop mid-answer) or a target is empty.
    """
    _check_int("max_len", max_len, 2)
    if not pairs:
        raise DataError("no examples to encode")
    for i, (p, t) in enumerate(pairs):
        if not t:
            raise DataError(f"example {i} has an empty target; nothing would be supervised")
        if len(p) + len(t) > max_len:
            raise DataError(f"example {i} has {len(p)} prompt + {len(t)} target tokens > max_len={max_len}; "
                            "raise max_len or use shorter problems")
    width = max(len(p) + len(t) for p, t in pairs)
    input_ids = torch.full((len(pairs), width), pad, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    lengths = torch.empty(len(pairs), dtype=torch.long)
    for i, (p, t) in enumerate(pairs):
        n = len(p) + len(t)
        input_ids[i, :n] = torch.tensor(p + t, dtype=torch.long)
        labels[i, len(p):n] = torch.tensor(t, dtype=torch.long)
        lengths[i] = n
    return {"input_ids": input_ids, "labels": labels, "lengths": lengths}


def encode_sft(examples: Sequence[Example], tokenizer, max_len: int) -> dict[str, torch.Tensor]:
    """Tokenize examples with a project tokenizer (``tokenizers.Tokenizer``) and pack them.

    Prompt and target are encoded separately and concatenated, then EOS is appended to the target:
    generation later starts from exactly the prompt ids seen in training and learns to stop.
    Returns input_ids [N, T], labels [N, T] (-100 on prompt and padding), lengths [N]; see
    :func:`pack_sft`.
    """
    eos = eos_id(tokenizer)
    prompts = tokenizer.encode_batch([e.prompt for e in examples], add_special_tokens=False)
    targets = tokenizer.encode_batch([e.target for e in examples], add_special_tokens=False)
    pairs = [(p.ids, t.ids + [eos]) for p, t in zip(prompts, targets)]
    return pack_sft(pairs, pad_id(tokenizer), max_len)
