"""RULER-style synthetic long-context tasks and the hybrid-attention paper's needle-probing prompts.

Prompts are token ids of the caller's tokenizer. Haystack text is a contiguous slice of a held-out
token array (already tokenized with the same tokenizer, e.g. ``ShardedTokens(validation).read(...)``);
needles, queries and answers are encoded piece by piece, so every needle and every value occupies a
known token range and the value tokens inside a needle are exactly the answer's tokens.

Layout of the needle kinds ("single_needle", "multikey", "multivalue", "multiquery")::

    [haystack] "\\n" NEEDLE "\\n" [haystack] ... [haystack] "\\n" QUERY

NEEDLE = "One of the special magic numbers for {key} is: {value}." and QUERY ends with "... is" (one
value) or "... are" (several), right where the answer starts. "kv_retrieval" fills the context with
"{key}: {value}" lines instead, after a few haystack tokens that make the length exact::

    [haystack] "\\n" KEY: VALUE "\\n" KEY: VALUE "\\n" ... QUERY

Every prompt of one call has the same length: ``context_len`` minus the longest answer of the call,
so prompts batch without padding and prompt + answer always fit in ``context_len``.

Choices (ours; RULER's details differ): keys are random pronounceable ids ("bofaki") so thousands stay
unique; values are random digit strings without a leading zero; needles go to the newline boundary of
the haystack nearest to their depth (within ``SNAP_TOKENS``), else to the exact token boundary;
``depth`` places needle 0 (the queried one; for multivalue / multiquery the first one drawn), the other
needles are uniform; haystack EOS tokens are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real

import numpy as np

KINDS = ("single_needle", "multikey", "multivalue", "multiquery", "kv_retrieval")
NEEDLE_TEMPLATE = "One of the special magic numbers for {key} is: {value}."
QUERY_ONE = ("What is the special magic number for {key} mentioned in the provided text? "
             "The special magic number for {key} mentioned in the provided text is")
QUERY_VALUES = ("What are all the special magic numbers for {key} mentioned in the provided text? "
                "The special magic numbers for {key} mentioned in the provided text are")
QUERY_KEYS = ("What are the special magic numbers for {key} mentioned in the provided text? "
              "The special magic numbers for {key} mentioned in the provided text are")
KV_TEMPLATE = "{key}: {value}"
KV_QUERY = "What is the value of {key} in the list above? The value of {key} is"
DEFAULT_NEEDLES = {"single_needle": 1, "multikey": 4, "multivalue": 4, "multiquery": 4, "kv_retrieval": 1}
SNAP_TOKENS = 16
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"


@dataclass
class Sample:
    """One prompt of a synthetic task.

    prompt_ids: [P] token ids, ending right after the query ("... is" / "... are").
    answer_ids: [A] ids of " " + answer_text: the expected greedy continuation.
    answer_text: the expected values joined by ", " ("4817204" or "4817204, 1650273").
    values: the expected values in answer order.
    needles: (key, value) of every needle (kv_retrieval: every line) in prompt order.
    needle_positions: [start, end) token range of each needle in prompt_ids, aligned with ``needles``.
    answer_positions: [start, end) range of each expected value inside its needle, in answer order.
    depth: requested depth in [0, 1] of needle 0 (the queried one; see the module doc): the fraction of
        the haystack tokens before it (up to snapping to a line end).
    kind: one of KINDS, or "probe" (:func:`make_probe_samples`).
    label, candidates: probe samples only: ``values[0] == candidates[label]``; -1 and () otherwise.
    """

    prompt_ids: list[int]
    answer_ids: list[int]
    answer_text: str
    values: tuple[str, ...]
    needles: tuple[tuple[str, str], ...]
    needle_positions: tuple[tuple[int, int], ...]
    answer_positions: tuple[tuple[int, int], ...]
    depth: float
    kind: str
    label: int = -1
    candidates: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class _Plan:
    """What one sample says, drawn before the shared prompt length is known."""

    keys: list[str]            # per needle
    values: list[str]          # per needle
    queried: list[int] | None  # needle indices in answer order; None = every needle, prompt order
    query: str
    depths: list[float]        # per needle
    start: float               # where the haystack slice starts, as a fraction of the free range
    answer_ids: list[int]
    rng: np.random.Generator   # kv_retrieval keeps drawing distractor lines from it


def _encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def _answer_ids(tok, values: list[str]) -> list[int]:
    ids: list[int] = []
    for i, v in enumerate(values):
        ids += (_encode(tok, ",") if i else []) + _encode(tok, f" {v}")
    return ids


def _keys(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    """``n`` new unique keys of three consonant-vowel syllables (not in ``taken``, which grows)."""
    out = []
    while len(out) < n:
        c, v = rng.integers(len(_CONSONANTS), size=3), rng.integers(len(_VOWELS), size=3)
        key = "".join(_CONSONANTS[a] + _VOWELS[b] for a, b in zip(c, v))
        if key not in taken:
            taken.add(key)
            out.append(key)
    return out


def _value_capacity(digits: int) -> int:
    """How many distinct values of ``digits`` digits without a leading zero exist."""
    return 10 if digits == 1 else 9 * 10 ** (digits - 1)


def _values(rng: np.random.Generator, n: int, digits: int, taken: set[str]) -> list[str]:
    """``n`` new unique values (not in ``taken``, which grows)."""
    if len(taken) + n > _value_capacity(digits):
        raise ValueError(f"value_digits={digits} allows only {_value_capacity(digits)} distinct values; "
                         f"{len(taken) + n} are needed")
    out = []
    while len(out) < n:
        first = str(rng.integers(1, 10)) if digits > 1 else ""  # no leading zero: "0412" is not a number
        value = first + "".join(map(str, rng.integers(0, 10, size=digits - len(first))))
        if value not in taken:
            taken.add(value)
            out.append(value)
    return out


def _depth_of(depth, i: int, rng: np.random.Generator) -> float:
    if depth is None:
        return float(rng.uniform())
    return float(depth) if isinstance(depth, Real) else float(depth[i % len(depth)])


def _plan(kind, tok, rng, i, n_needles, value_digits, depth, forced_value=None) -> _Plan:
    keys_taken: set[str] = set()
    values_taken: set[str] = set() if forced_value is None else {forced_value}
    d0 = _depth_of(depth, i, rng)
    n = 1 if kind == "kv_retrieval" else n_needles
    keys = _keys(rng, 1 if kind == "multivalue" else n, keys_taken)
    if kind == "multivalue":
        keys = keys * n
    values = ([forced_value] if forced_value is not None else []) + _values(
        rng, n - (forced_value is not None), value_digits, values_taken)
    depths = [d0] + [float(x) for x in rng.uniform(size=n - 1)]
    queried: list[int] | None = [0]
    if kind == "multivalue":
        queried, query = None, QUERY_VALUES.format(key=keys[0])
    elif kind == "multiquery":
        queried, query = list(range(n)), QUERY_KEYS.format(key=", ".join(keys))
    elif kind == "kv_retrieval":
        query = KV_QUERY.format(key=keys[0])
    else:
        query = QUERY_ONE.format(key=keys[0])
    answer_values = values if queried is None else [values[j] for j in queried]
    return _Plan(keys, values, queried, query, depths, float(rng.uniform()), _answer_ids(tok, answer_values), rng)


class _Prompt:
    """Token ids under construction; ``add`` returns the [start, end) range of the added piece."""

    def __init__(self):
        self.ids: list[int] = []

    def add(self, ids) -> tuple[int, int]:
        start = len(self.ids)
        self.ids.extend(int(x) for x in ids)
        return start, len(self.ids)


def _needle_pieces(tok, key: str, value: str, template: str) -> tuple[list[int], list[int], list[int]]:
    head, tail = template.split(" {value}")
    return _encode(tok, head.format(key=key)), _encode(tok, f" {value}"), _encode(tok, tail)


def _slice(haystack: np.ndarray, length: int, start: float, context_len: int, kind: str) -> np.ndarray:
    """``length`` haystack tokens starting at fraction ``start`` of the free range; clear errors if impossible."""
    if length < 0:
        raise ValueError(f"context_len={context_len} is too small for {kind!r}: needles, query and answer "
                         f"alone need {context_len - length} tokens")
    if len(haystack) < length:
        raise ValueError(f"haystack_tokens has {len(haystack)} tokens; {kind!r} at context_len={context_len} "
                         f"needs {length}")
    first = int(start * (len(haystack) - length + 1))
    return haystack[min(first, len(haystack) - length):][:length]


def _snap(breaks: np.ndarray, target: int) -> int:
    """Nearest allowed boundary (``breaks``) within SNAP_TOKENS of ``target`` (ties: the earlier), else target."""
    lo, hi = max(0, target - SNAP_TOKENS), min(len(breaks) - 1, target + SNAP_TOKENS)
    cands = np.flatnonzero(breaks[lo:hi + 1]) + lo
    return target if len(cands) == 0 else int(cands[np.argmin(np.abs(cands - target))])


def _breaks(tok, hay: np.ndarray, newline_ids: dict) -> np.ndarray:
    """[H+1] bool: the boundaries a needle may snap to: start, end, and line ends (after a token ending
    in a newline or before one starting with it; BPE often glues a newline to the next line's indent)."""
    for t in set(hay.tolist()) - newline_ids.keys():
        text = tok.decode([t])
        newline_ids[t] = (text.startswith("\n"), text.endswith("\n"))
    out = np.zeros(len(hay) + 1, dtype=bool)
    out[0] = out[-1] = True
    ids = hay.tolist()
    out[1:-1] = [newline_ids[a][1] or newline_ids[b][0] for a, b in zip(ids[:-1], ids[1:])]
    return out


def _render_needles(kind, tok, plan: _Plan, haystack, budget: int, newline_ids: dict, context_len: int) -> Sample:
    nl = _encode(tok, "\n")
    pieces = [_needle_pieces(tok, k, v, NEEDLE_TEMPLATE) for k, v in zip(plan.keys, plan.values)]
    query = _encode(tok, plan.query)
    fixed = sum(len(nl) * 2 + sum(map(len, p)) for p in pieces) + len(nl) + len(query)
    hay = _slice(haystack, budget - fixed, plan.start, context_len, kind)
    breaks = _breaks(tok, hay, newline_ids)
    where = [_snap(breaks, round(d * len(hay))) for d in plan.depths]
    order = sorted(range(len(pieces)), key=lambda j: (where[j], j))
    prompt, prev = _Prompt(), 0
    needle_span, value_span = {}, {}
    for j in order:
        prompt.add(hay[prev:where[j]])
        prompt.add(nl)
        head, val, tail = pieces[j]
        start, _ = prompt.add(head)
        value_span[j] = prompt.add(val)
        needle_span[j] = (start, prompt.add(tail)[1])
        prompt.add(nl)
        prev = where[j]
    prompt.add(hay[prev:])
    prompt.add(nl)
    prompt.add(query)
    queried = order if plan.queried is None else plan.queried
    values = tuple(plan.values[j] for j in queried)
    # multivalue answers in prompt order, known only now; the length (hence the budget) is order-free.
    answer_ids = _answer_ids(tok, list(values))
    assert len(answer_ids) == len(plan.answer_ids)
    return Sample(prompt.ids, answer_ids, ", ".join(values), values,
                  tuple((plan.keys[j], plan.values[j]) for j in order), tuple(needle_span[j] for j in order),
                  tuple(value_span[j] for j in queried), plan.depths[0], kind)


def _render_kv(tok, plan: _Plan, haystack, budget: int, value_digits: int, context_len: int) -> Sample:
    nl = _encode(tok, "\n")
    query = _encode(tok, plan.query)
    keys_taken, values_taken = set(plan.keys), set(plan.values)
    lines = [(plan.keys[0], plan.values[0], _needle_pieces(tok, plan.keys[0], plan.values[0], KV_TEMPLATE))]
    used = len(nl) + len(query) + sum(map(len, lines[0][2])) + len(nl)
    _slice(haystack, budget - used, plan.start, context_len, "kv_retrieval")  # fails early if even one line is too many
    # Distractor lines until the next one does not fit (or no unused value is left).
    while len(values_taken) < _value_capacity(value_digits):
        key, value = _keys(plan.rng, 1, keys_taken)[0], _values(plan.rng, 1, value_digits, values_taken)[0]
        pieces = _needle_pieces(tok, key, value, KV_TEMPLATE)
        if used + sum(map(len, pieces)) + len(nl) > budget:
            break
        used += sum(map(len, pieces)) + len(nl)
        lines.append((key, value, pieces))
    depth = plan.depths[0]
    target = round(depth * (len(lines) - 1))
    lines = lines[1:target + 1] + lines[:1] + lines[target + 1:]
    prompt = _Prompt()
    prompt.add(_slice(haystack, budget - used, plan.start, context_len, "kv_retrieval"))
    prompt.add(nl)
    spans, answer_span = [], None
    for i, (key, value, (head, val, tail)) in enumerate(lines):
        start, _ = prompt.add(head)
        span = prompt.add(val)
        spans.append((start, prompt.add(tail)[1]))
        prompt.add(nl)
        if i == target:
            answer_span = span
    prompt.add(query)
    return Sample(prompt.ids, plan.answer_ids, plan.values[0], (plan.values[0],),
                  tuple((k, v) for k, v, _ in lines), tuple(spans), (answer_span,), depth, "kv_retrieval")


def _check_args(tokenizer, haystack_tokens, context_len, n_samples, seed, value_digits, depth) -> np.ndarray:
    for name, value, low in (("context_len", context_len, 1), ("n_samples", n_samples, 1), ("seed", seed, 0),
                             ("value_digits", value_digits, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    try:
        depths = [] if depth is None else [depth] if isinstance(depth, Real) else list(depth)
    except TypeError:
        depths = []
    if depth is not None and (not depths or not all(isinstance(d, Real) and 0 <= d <= 1 for d in depths)):
        raise ValueError(f"depth must be None (uniform), a number in [0, 1] or a non-empty sequence of them, "
                         f"got {depth!r}")
    hay = np.asarray(haystack_tokens)
    if hay.ndim != 1 or not np.issubdtype(hay.dtype, np.integer):
        raise ValueError(f"haystack_tokens must be a 1-D integer array of token ids, got {hay.dtype} {hay.shape}")
    if len(hay) and (hay.min() < 0 or hay.max() >= tokenizer.get_vocab_size()):
        raise ValueError(f"haystack_tokens has ids outside [0, {tokenizer.get_vocab_size()}): it was not "
                         "tokenized with this tokenizer")
    return hay.astype(np.int64)


def _make(kind, tokenizer, haystack_tokens, context_len, n_samples, seed, value_digits, depth, n_needles,
          forced=None) -> list[Sample]:
    hay = _check_args(tokenizer, haystack_tokens, context_len, n_samples, seed, value_digits, depth)
    plans = [_plan(kind, tokenizer, np.random.default_rng([seed, i]), i, n_needles, value_digits, depth,
                   None if forced is None else forced[i]) for i in range(n_samples)]
    budget = context_len - max(len(p.answer_ids) for p in plans)
    newline_ids: dict[int, bool] = {}
    if kind == "kv_retrieval":
        return [_render_kv(tokenizer, p, hay, budget, value_digits, context_len) for p in plans]
    return [_render_needles(kind, tokenizer, p, hay, budget, newline_ids, context_len) for p in plans]


def make_task(kind: str, tokenizer, haystack_tokens, context_len: int, n_samples: int, seed: int,
              value_digits: int = 7, depth=None, n_needles: int | None = None) -> list[Sample]:
    """``n_samples`` prompts of task ``kind`` (see KINDS and the module doc), deterministic in the arguments.

    tokenizer: ``tokenizers.Tokenizer`` that produced ``haystack_tokens`` (1-D int array, held-out text).
    context_len: prompt + answer budget; every prompt has length context_len − (longest answer of the call).
    depth: None (uniform per sample), a number in [0, 1], or a sequence cycled over the samples; it places
        the first queried needle (kv_retrieval: the queried line).
    n_needles: needles per prompt: 1 for single_needle; for multikey the queried needle plus distractors
        with other keys (default 4); multivalue the values of the one key (4); multiquery the keys queried (4).
        kv_retrieval fills the context with as many lines as fit and takes no n_needles.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is unknown; choose one of {list(KINDS)}")
    n = DEFAULT_NEEDLES[kind] if n_needles is None else n_needles
    if kind in ("single_needle", "kv_retrieval") and n != DEFAULT_NEEDLES[kind]:
        raise ValueError(f"n_needles must be None for {kind!r}, got {n_needles!r}")
    if isinstance(n, bool) or not isinstance(n, int) or (n < 2 and kind not in ("single_needle", "kv_retrieval")):
        raise ValueError(f"n_needles must be an int >= 2 for {kind!r}, got {n_needles!r}")
    return _make(kind, tokenizer, haystack_tokens, context_len, n_samples, seed, value_digits, depth, n)


def make_probe_samples(tokenizer, haystack_tokens, context_len: int, n_samples: int, seed: int,
                       n_candidates: int = 8, value_digits: int = 7, depth=None) -> list[Sample]:
    """Single-needle prompts for layer-wise probing (kind "probe"), ending right after "... is".

    Each sample draws a random prefix of value_digits − 1 digits; its candidates are that prefix followed
    by the digits 0 … n_candidates−1, so they differ only in the last digit and ``label`` is also the
    last digit of the hidden value. Labels are balanced (each class n_samples // n_candidates times or
    one more) and shuffled, so a stratified split is possible.
    """
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, int) or not 2 <= n_candidates <= 10:
        raise ValueError(f"n_candidates must be an int in [2, 10] (one last digit each), got {n_candidates!r}")
    if isinstance(value_digits, bool) or not isinstance(value_digits, int) or value_digits < 2:
        raise ValueError(f"value_digits must be an int >= 2 for probes (prefix + last digit), got {value_digits!r}")
    _check_args(tokenizer, haystack_tokens, context_len, n_samples, seed, value_digits, depth)
    rng = np.random.default_rng([seed, 1 << 20])  # its own stream: labels do not shift the samples' draws
    labels = rng.permutation(np.arange(n_samples) % n_candidates).tolist()
    candidates = []
    for _ in range(n_samples):
        prefix = str(rng.integers(1, 10)) + "".join(map(str, rng.integers(0, 10, size=value_digits - 2)))
        candidates.append(tuple(prefix + str(d) for d in range(n_candidates)))
    forced = [c[label] for c, label in zip(candidates, labels)]
    samples = _make("single_needle", tokenizer, haystack_tokens, context_len, n_samples, seed, value_digits,
                    depth, 1, forced)
    for s, c, label in zip(samples, candidates, labels):
        s.kind, s.label, s.candidates = "probe", int(label), c
    return samples
