"""Synthetic retrieval sequences mixed into the pretraining stream, so long-range retrieval can emerge at
laptop scale (paper 1: the claims are about *how fast* full attention learns it in each hybrid).

Every batch of ``batch_size`` rows carries exactly ``round(share · batch_size)`` synthetic rows at positions
drawn from (seed, step); the other rows are the ordinary shuffled chunks of :class:`ChunkSampler`. A synthetic
row is exactly ``seq_len + 1`` tokens on a haystack window of the *training* stream (the evaluation draws its
haystacks from validation), in the RULER/probe template the evaluation uses:

* a RULER kind (``synthetic.KINDS``): one prompt of :func:`lmrepro.data.synthetic.make_task` and its answer;
* ``"recall"`` (multi-query associative recall): ``recall_pairs`` needles "One of the special magic numbers
  for {key} is: {value}." spread over the haystack, then, after the haystack, one statement per key in random
  order, "The special magic number for {key} mentioned in the provided text is {value}." (the RULER query's
  last sentence), so every row teaches ``recall_pairs`` retrievals instead of one;
* ``"repeat"`` (induction): the row ends with a copy of ``repeat_tokens`` tokens that occurred earlier in it —
  a haystack span, or (``repeat_vocab``) random ids that only copying can predict.

Every value is written at least ``min_distance`` tokens after its needle starts, i.e. beyond the stacked
receptive field of the smallest sliding window: only a layer that sees that far can copy it. Rows are a pure
function of (seed, step, row), so resumed and multi-process runs see the same data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from .batches import ChunkSampler
from .synthetic import KINDS, NEEDLE_TEMPLATE, QUERY_ONE, _keys, _values, make_task

RECALL = "recall"
REPEAT = "repeat"
# Random repeat spans draw from ids above the byte-level alphabet (ids < 256 in our BPE tokenizers).
_RANDOM_ID0 = 256
MIX_KINDS = (*KINDS, RECALL, REPEAT)
# The RULER query's last sentence: a recall statement ends exactly where the evaluation's answer starts.
RECALL_STATEMENT = QUERY_ONE[QUERY_ONE.index("The special"):]
# Haystack window per synthetic row, in multiples of seq_len: enough for make_task to pick a slice from.
_HAYSTACK_WINDOWS = 2
_MAX_TRIES = 16


@dataclass(frozen=True)
class RetrievalMix:
    """What to mix in: ``share`` of every batch, kinds cycled from ``kinds`` (MIX_KINDS), ``recall_pairs``
    needles per recall row."""

    share: float
    kinds: tuple[str, ...]
    value_digits: int
    min_distance: int
    seed: int
    recall_pairs: int = 4
    repeat_tokens: int = 32
    repeat_vocab: int | None = None
    answer_weight: float = 1.0  # loss weight of every answer label (answer_mask); 1: the plain LM loss

    def __post_init__(self):
        if not 0 < self.share < 1:
            raise ValueError(f"share must be in (0, 1), got {self.share!r}")
        if not self.kinds or any(k not in MIX_KINDS for k in self.kinds):
            raise ValueError(f"kinds must be a non-empty subset of {list(MIX_KINDS)}, got {list(self.kinds)}")
        for name, low in (("value_digits", 1), ("min_distance", 1), ("seed", 0), ("recall_pairs", 1),
                          ("repeat_tokens", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        v = self.repeat_vocab
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 2):
            raise ValueError(f"repeat_vocab must be None (haystack spans) or an int >= 2, got {v!r}")
        if not (isinstance(self.answer_weight, (int, float)) and self.answer_weight >= 1):
            raise ValueError(f"answer_weight must be a number >= 1, got {self.answer_weight!r}")

    def describe(self) -> dict:
        """The fields, for run fingerprints and provenance."""
        return {"share": self.share, "kinds": list(self.kinds), "value_digits": self.value_digits,
                "min_distance": self.min_distance, "seed": self.seed, "recall_pairs": self.recall_pairs,
                "repeat_tokens": self.repeat_tokens, "repeat_vocab": self.repeat_vocab,
                "answer_weight": self.answer_weight}

    def rows_per_batch(self, batch_size: int) -> int:
        n = round(self.share * batch_size)
        if not 1 <= n < batch_size:
            raise ValueError(f"share {self.share} of batch_size {batch_size} gives {n} synthetic rows; "
                             f"choose a share that leaves at least one of each kind of row")
        return n


@dataclass(frozen=True)
class Row:
    """One synthetic sequence. ids: [seq_len + 1]. pairs: (source, target) token indices per expected value:
    its needle tokens start at ``source``, the model writes it from ``target`` on (RULER kinds with several
    values: ``target`` is where the answer starts, a lower bound on the distance)."""

    ids: list[int]
    kind: str
    values: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]

    def distance(self) -> int:
        """Fewest tokens between a value's needle and the place it is written."""
        return min(t - s for s, t in self.pairs)


def recall_row(tokenizer, hay: np.ndarray, length: int, pairs: int, value_digits: int, min_distance: int,
               rng: np.random.Generator) -> Row:
    """A ``"recall"`` row of exactly ``length`` tokens (module doc) from haystack tokens ``hay`` (1-D)."""
    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    keys, values = _keys(rng, pairs, set()), _values(rng, pairs, value_digits, set())
    pre, post = NEEDLE_TEMPLATE.split("{value}")
    needles = [(enc("\n" + pre.format(key=k).rstrip()), enc(" " + v), enc(post)) for k, v in zip(keys, values)]
    order = rng.permutation(pairs).tolist()
    queries = [(enc("\n" + RECALL_STATEMENT.format(key=keys[i])), enc(" " + values[i]), enc(".")) for i in order]
    fixed = sum(len(a) + len(b) + len(c) for a, b, c in needles + queries)
    budget = length - fixed  # haystack tokens
    if budget < min_distance:
        raise ValueError(f"a recall row of {pairs} pairs needs {fixed + min_distance} tokens; the row has {length}")
    if len(hay) < budget:
        raise ValueError(f"haystack has {len(hay)} tokens, the row needs {budget}")
    # Needle i follows hay[:cuts[i]]; the last min_distance haystack tokens stay between needles and queries.
    cuts = np.sort(rng.integers(0, budget - min_distance + 1, size=pairs)).tolist()
    ids: list[int] = []
    sources, prev = [], 0
    for cut, (a, b, c) in zip(cuts, needles):
        ids += hay[prev:cut].tolist() + a
        sources.append(len(ids))
        ids += b + c
        prev = cut
    ids += hay[prev:budget].tolist()
    targets = {}
    for i, (a, b, c) in zip(order, queries):
        ids += a
        targets[i] = len(ids)
        ids += b + c
    return Row(ids, RECALL, tuple(values), tuple((sources[i], targets[i]) for i in range(pairs)))


def repeat_row(hay: np.ndarray, length: int, span: int, min_distance: int, rng: np.random.Generator,
               vocab: int | None = None) -> Row:
    """A ``"repeat"`` row: ``length − span`` haystack tokens, then a copy of the ``span`` tokens that start at
    a random earlier position at least ``min_distance`` back. ``vocab``: None copies a haystack span; an int
    first overwrites that span with ids drawn uniformly from [256, 256 + vocab), so only copying predicts it."""
    last = length - 2 * span - min_distance
    if last < 0:
        raise ValueError(f"a repeat row of span {span} needs {2 * span + min_distance} tokens; the row has {length}")
    start = int(rng.integers(0, last + 1))
    hay = hay[:length - span].copy()
    if vocab is not None:
        hay[start:start + span] = rng.integers(_RANDOM_ID0, _RANDOM_ID0 + vocab, size=span)
    ids = hay.tolist() + hay[start:start + span].tolist()
    return Row(ids, REPEAT, (), ((start, length - span),))


def answer_mask(row: Row, tokenizer) -> torch.Tensor:
    """[len(row.ids) − 1] bool over the *label* positions of ``row`` (label i is ``row.ids[i + 1]``): True
    where the row asks the model to reproduce something from earlier in it — in a recall row each
    ``" " + value`` from its target on; a RULER prompt and a repeat row end with what is asked for (a RULER
    answer, several values joined by ","; the repeated span), from the target on."""
    mask = torch.zeros(len(row.ids) - 1, dtype=torch.bool)
    if row.kind != RECALL:
        mask[min(t for _, t in row.pairs) - 1:] = True
    pairs = zip(row.pairs, row.values) if row.kind == RECALL else list(zip(row.pairs, row.values))[:1]
    for (_, target), value in pairs:  # the first value of a RULER answer starts at its target
        ids = tokenizer.encode(" " + value, add_special_tokens=False).ids
        n = len(ids)
        if row.ids[target:target + n] != ids:
            raise ValueError(f"row {row.kind}: the tokens at {target} are not those of value {value!r}")
        mask[target - 1:target - 1 + n] = True
    return mask


class MixedSampler:
    """A :class:`ChunkSampler` whose batches carry the synthetic rows of ``mix`` (module doc).

    tokenizer: the ``tokenizers.Tokenizer`` of the stream (needles and queries are encoded with it).
    """

    def __init__(self, base: ChunkSampler, mix: RetrievalMix, tokenizer):
        if mix.min_distance >= base.seq_len // 2:
            raise ValueError(f"min_distance {mix.min_distance} must be below half of seq_len {base.seq_len}")
        if mix.repeat_vocab is not None and _RANDOM_ID0 + mix.repeat_vocab > tokenizer.get_vocab_size():
            raise ValueError(f"repeat_vocab {mix.repeat_vocab} needs ids up to {_RANDOM_ID0 + mix.repeat_vocab}; the "
                             f"tokenizer has {tokenizer.get_vocab_size()}")
        self.base, self.mix, self.tokenizer = base, mix, tokenizer
        self.seq_len = base.seq_len
        self._hay_len = min(len(base.tokens), _HAYSTACK_WINDOWS * (base.seq_len + 1))
        self._rows: dict[tuple[int, int], Row] = {}  # the last step's rows: batch() and weights() share them

    def describe(self) -> dict:
        """What makes this stream differ from its base (for the Trainer's run fingerprint)."""
        return {"retrieval_mix": self.mix.describe(), "base": {"seq_len": self.base.seq_len, "seed": self.base.seed}}

    def epoch_of(self, step: int, batch_size: int) -> int:
        return self.base.epoch_of(step, batch_size)

    def positions(self, step: int, batch_size: int) -> list[int]:
        """Row indices of batch ``step`` that hold synthetic sequences, ascending."""
        rng = np.random.default_rng([self.mix.seed, step, 0])
        n = self.mix.rows_per_batch(batch_size)
        return sorted(rng.choice(batch_size, size=n, replace=False).tolist())

    def row(self, step: int, row: int) -> Row:
        """The synthetic sequence of (step, row): ``seq_len + 1`` tokens, every value >= min_distance back."""
        if (step, row) not in self._rows:
            if any(s != step for s, _ in self._rows):
                self._rows.clear()
            self._rows[step, row] = self._make_row(step, row)
        return self._rows[step, row]

    def _make_row(self, step: int, row: int) -> Row:
        kind = self.mix.kinds[(step + row) % len(self.mix.kinds)]
        tokens = self.base.tokens
        for attempt in range(_MAX_TRIES):
            seed = int.from_bytes(hashlib.sha256(f"{self.mix.seed}/{step}/{row}/{attempt}".encode()).digest()[:4],
                                  "little")
            start = seed % (len(tokens) - self._hay_len + 1)
            hay = tokens.read(start, self._hay_len)
            if kind == REPEAT:
                return repeat_row(hay, self.seq_len + 1, self.mix.repeat_tokens, self.mix.min_distance,
                                  np.random.default_rng(seed), self.mix.repeat_vocab)
            if kind == RECALL:  # distance holds by construction
                return recall_row(self.tokenizer, hay, self.seq_len + 1, self.mix.recall_pairs,
                                  self.mix.value_digits, self.mix.min_distance, np.random.default_rng(seed))
            # Depth uniform over the prompt; a too-close answer is redrawn with the next attempt.
            s = make_task(kind, self.tokenizer, hay, self.seq_len + 1, 1, seed, self.mix.value_digits)[0]
            out = Row(s.prompt_ids + s.answer_ids, kind, s.values,
                      tuple((a, len(s.prompt_ids)) for a, _ in s.answer_positions))
            if out.distance() >= self.mix.min_distance:
                return out
        raise RuntimeError(f"no {kind} sample with the answer >= {self.mix.min_distance} tokens back in "
                           f"{_MAX_TRIES} tries (step {step}, row {row}); lower min_distance")

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """Tokens of batch ``step``: LongTensor [batch_size, seq_len + 1]."""
        out = self.base.batch(step, batch_size)
        for row in self.positions(step, batch_size):
            out[row] = torch.tensor(self.row(step, row).ids, dtype=torch.long)
        return out

    def weights(self, step: int, batch_size: int) -> torch.Tensor | None:
        """[batch_size, seq_len] loss weights of batch ``step``: ``mix.answer_weight`` on the answer labels of
        its synthetic rows (:func:`answer_mask`), 1 elsewhere; None when ``answer_weight`` is 1 (plain loss)."""
        if self.mix.answer_weight == 1:
            return None
        out = torch.ones(batch_size, self.seq_len)
        for r in self.positions(step, batch_size):
            out[r][answer_mask(self.row(step, r), self.tokenizer)] = self.mix.answer_weight
        return out
