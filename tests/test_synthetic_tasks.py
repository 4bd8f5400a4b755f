"""RULER-style synthetic tasks: determinism, exact lengths, needles where recorded, probing prompts,
answer scoring on a table, and greedy evaluation of real tiny DecoderLMs."""

from __future__ import annotations

import sysconfig
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrepro.data import train_bpe_tokenizer
from lmrepro.data.synthetic import (
    KINDS,
    KV_QUERY,
    KV_TEMPLATE,
    NEEDLE_TEMPLATE,
    QUERY_KEYS,
    QUERY_ONE,
    QUERY_VALUES,
    Sample,
    make_probe_samples,
    make_task,
)
from lmrepro.eval.ruler import evaluate_task, needle_answer_positions, needle_token_positions, score_answer
from lmrepro.models import DecoderLM, LMSpec
from lmrepro.models.generate import greedy_generate

STDLIB = Path(sysconfig.get_paths()["stdlib"])


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: see conftest.one_thread


@pytest.fixture(scope="module")
def tok():
    texts = [(STDLIB / n).read_text(encoding="utf-8")[:30000] for n in ("textwrap.py", "string.py", "shlex.py")]
    return train_bpe_tokenizer(texts, vocab_size=600)


@pytest.fixture(scope="module")
def hay(tok):
    """Held-out text (not in the tokenizer's training files), as token ids."""
    return np.array(tok.encode((STDLIB / "heapq.py").read_text(encoding="utf-8")).ids, dtype=np.int64)


def decode(tok, ids):
    return tok.decode(list(ids))


def queries_of(s: Sample) -> str:
    keys = [k for k, v in s.needles if v in s.values]
    if s.kind == "kv_retrieval":
        return KV_QUERY.format(key=keys[0])
    if s.kind == "multivalue":
        return QUERY_VALUES.format(key=keys[0])
    if s.kind == "multiquery":
        by_value = dict((v, k) for k, v in s.needles)
        return QUERY_KEYS.format(key=", ".join(by_value[v] for v in s.values))
    key = next(k for k, v in s.needles if v == s.values[0])
    return QUERY_ONE.format(key=key)


# (kind, context_len, n_needles): odd lengths; the multi kinds with the fewest and the default needles.
LENGTH_TABLE = [
    ("single_needle", 151, None), ("single_needle", 256, None), ("single_needle", 613, None),
    ("multikey", 200, 2), ("multikey", 613, None), ("multivalue", 201, 2), ("multivalue", 500, 4),
    ("multiquery", 233, 2), ("multiquery", 613, None), ("kv_retrieval", 97, None), ("kv_retrieval", 400, None),
]


@pytest.mark.parametrize("kind,context_len,n_needles", LENGTH_TABLE)
def test_lengths_needles_and_answers_are_where_recorded(tok, hay, kind, context_len, n_needles):
    samples = make_task(kind, tok, hay, context_len, n_samples=4, seed=3, value_digits=6, n_needles=n_needles)
    longest_answer = max(len(s.answer_ids) for s in samples)
    template = KV_TEMPLATE if kind == "kv_retrieval" else NEEDLE_TEMPLATE
    for s in samples:
        assert s.kind == kind
        assert len(s.prompt_ids) == context_len - longest_answer  # exact, identical for the whole call
        assert len(s.prompt_ids) + len(s.answer_ids) <= context_len
        # Every needle decodes to its template at its recorded range; ranges are ordered and disjoint.
        assert len(s.needles) == len(s.needle_positions) >= (1 if kind in ("single_needle", "kv_retrieval") else 2)
        for (key, value), (a, b) in zip(s.needles, s.needle_positions):
            assert decode(tok, s.prompt_ids[a:b]) == template.format(key=key, value=value)
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(s.needle_positions, s.needle_positions[1:]))
        # The expected values are the value tokens inside their needles, and equal the answer tokens.
        assert len(s.answer_positions) == len(s.values)
        for value, (a, b) in zip(s.values, s.answer_positions):
            assert decode(tok, s.prompt_ids[a:b]) == " " + value and len(value) == 6 and value[0] != "0"
            assert any(na <= a and b <= nb for na, nb in s.needle_positions)
        assert decode(tok, s.answer_ids) == " " + s.answer_text == " " + ", ".join(s.values)
        assert decode(tok, s.prompt_ids).endswith(queries_of(s))
        assert len({k for k, _ in s.needles}) == (1 if kind == "multivalue" else len(s.needles))
        assert len({v for _, v in s.needles}) == len(s.needles)


@pytest.mark.parametrize("kind", ["single_needle", "multikey", "multivalue", "multiquery"])
def test_haystack_is_an_intact_slice_of_the_held_out_tokens(tok, hay, kind):
    """Removing the needles, their newline separators and the query leaves a contiguous haystack slice."""
    nl = tok.encode("\n").ids
    assert len(nl) == 1
    for s in make_task(kind, tok, hay, 300, n_samples=3, seed=1, n_needles=None if kind == "single_needle" else 2):
        drop = set()
        for a, b in s.needle_positions:
            drop.update(range(a - 1, b + 1))  # "\n" NEEDLE "\n"
        query_len = len(tok.encode(queries_of(s)).ids)
        drop.update(range(len(s.prompt_ids) - query_len - 1, len(s.prompt_ids)))
        rest = np.array([t for i, t in enumerate(s.prompt_ids) if i not in drop])
        windows = np.lib.stride_tricks.sliding_window_view(hay, len(rest))
        assert (windows == rest).all(axis=1).any()


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_by_seed(tok, hay, kind):
    n = None if kind in ("single_needle", "kv_retrieval") else 2
    a = make_task(kind, tok, hay, 300, n_samples=3, seed=11, n_needles=n)
    b = make_task(kind, tok, hay, 300, n_samples=3, seed=11, n_needles=n)
    c = make_task(kind, tok, hay, 300, n_samples=3, seed=12, n_needles=n)
    assert a == b
    assert [s.prompt_ids for s in a] != [s.prompt_ids for s in c]
    assert [s.values for s in a] != [s.values for s in c]


def test_depth_places_the_queried_needle(tok, hay):
    start = make_task("single_needle", tok, hay, 300, 2, seed=0, depth=0.0)
    end = make_task("single_needle", tok, hay, 300, 2, seed=0, depth=1.0)
    for s in start:
        assert s.needle_positions[0][0] == 1 and s.depth == 0.0  # right after the first "\n"
    for s in end:  # NEEDLE "\n" "\n" QUERY closes the prompt
        assert s.needle_positions[0][1] + 2 + len(tok.encode(queries_of(s)).ids) == len(s.prompt_ids)
    mid = make_task("multikey", tok, hay, 613, 6, seed=0, depth=[0.25, 0.75], n_needles=2)
    assert [s.depth for s in mid] == [0.25, 0.75] * 3
    for s in mid:  # depth = fraction of the haystack before the needle, up to snapping (<= 16 tokens)
        q = next(i for i, (k, v) in enumerate(s.needles) if v == s.values[0])
        sizes = [b - a + 2 for a, b in s.needle_positions]  # "\n" NEEDLE "\n"
        haystack_before = s.needle_positions[q][0] - 1 - sum(sizes[:q])
        haystack_total = len(s.prompt_ids) - sum(sizes) - 1 - len(tok.encode(queries_of(s)).ids)
        assert abs(haystack_before - s.depth * haystack_total) <= 16.5
    kv = make_task("kv_retrieval", tok, hay, 400, 2, seed=0, depth=1.0)
    for s in kv:
        assert s.needles[-1][1] == s.values[0]


def test_probe_samples(tok, hay):
    samples = make_probe_samples(tok, hay, 200, n_samples=20, seed=5, n_candidates=8)
    counts = Counter(s.label for s in samples)
    assert set(counts) == set(range(8)) and max(counts.values()) - min(counts.values()) <= 1
    assert len({len(s.prompt_ids) for s in samples}) == 1 and len(samples[0].prompt_ids) <= 200
    for s in samples:
        assert s.kind == "probe" and len(s.candidates) == 8 and s.values[0] == s.candidates[s.label]
        assert {c[:-1] for c in s.candidates} == {s.values[0][:-1]}
        assert [c[-1] for c in s.candidates] == [str(d) for d in range(8)]
        assert decode(tok, s.prompt_ids).endswith(" mentioned in the provided text is")
        a, b = s.answer_positions[0]
        assert decode(tok, s.prompt_ids[a:b]) == " " + s.values[0]
    assert make_probe_samples(tok, hay, 200, n_samples=20, seed=5) == samples
    with pytest.raises(ValueError, match="n_candidates"):
        make_probe_samples(tok, hay, 200, n_samples=4, seed=0, n_candidates=11)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="needle"), "kind 'needle' is unknown"),
    (dict(context_len=40), "context_len=40 is too small"),
    (dict(kind="multiquery", context_len=150), "context_len=150 is too small"),
    (dict(haystack_tokens=np.arange(50)), "haystack_tokens has 50 tokens"),
    (dict(haystack_tokens=np.array([5, 10_000])), "not\\s+tokenized with this tokenizer"),
    (dict(haystack_tokens=np.zeros((3, 3), dtype=np.int64)), "1-D integer array"),
    (dict(depth=1.5), "depth must be"),
    (dict(depth=[]), "depth must be"),
    (dict(n_needles=2), "n_needles must be None for 'single_needle'"),
    (dict(kind="multikey", n_needles=1), "n_needles must be an int >= 2"),
    (dict(n_samples=0), "n_samples must be an int >= 1"),
    (dict(value_digits=0), "value_digits must be an int >= 1"),
    (dict(seed=-1), "seed must be an int >= 0"),
])
def test_bad_arguments_are_named(tok, hay, kwargs, match):
    args = dict(kind="single_needle", tokenizer=tok, haystack_tokens=hay, context_len=256, n_samples=2, seed=0)
    with pytest.raises(ValueError, match=match):
        make_task(**{**args, **kwargs})


SCORE_TABLE = [
    ("single_needle", " 1234567.", "1234567", True),
    ("single_needle", "1234567", ["1234567"], True),
    ("single_needle", " the number 1234567 and 99", "1234567", True),
    ("single_needle", " 12345678", "1234567", False),  # runs on past the value
    ("single_needle", " 123456", "1234567", False),
    ("single_needle", " 7654321, 1234567", "1234567", False),  # only the first number counts
    ("single_needle", " no number here", "1234567", False),
    ("multikey", " 0042", "0042", True),
    ("kv_retrieval", " 42\n", "42", True),
    ("probe", " 5526843", "5526845", False),
    ("multivalue", " 111, 222, 333", ["111", "222", "333"], True),
    ("multivalue", " 333, 111 and 222.", ["111", "222", "333"], True),  # any order
    ("multivalue", " 111, 222", ["111", "222", "333"], False),
    ("multivalue", " 111222333", ["111", "222", "333"], False),
    ("multiquery", " 9, 8, 7, 6", ["6", "9"], True),
    ("multiquery", " 96", ["6", "9"], False),
]


@pytest.mark.parametrize("kind,text,answer,expected", SCORE_TABLE)
def test_score_answer_table(kind, text, answer, expected):
    assert score_answer(kind, text, answer) is expected


@pytest.mark.parametrize("kind,answer,match", [("needle", "1", "kind 'needle' is unknown"),
                                               ("single_needle", ["1", "2"], "one answer value"),
                                               ("multivalue", [], "non-empty"), ("multikey", "12a", "digit")])
def test_score_answer_rejects_bad_arguments(kind, answer, match):
    with pytest.raises(ValueError, match=match):
        score_answer(kind, "1", answer)


def test_answer_position_helpers(tok, hay):
    s = make_task("multiquery", tok, hay, 400, 1, seed=2, n_needles=3)[0]
    pos = needle_answer_positions(s)
    assert decode(tok, [s.prompt_ids[i] for i in pos]) == "".join(" " + v for v in s.values)
    all_needles = needle_token_positions(s)
    assert set(pos) < set(all_needles) and all_needles == sorted(all_needles)
    assert len(all_needles) == sum(b - a for a, b in s.needle_positions)


def tiny_model(vocab: int, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    spec = LMSpec(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2,
                  intermediate_size=64, max_seq_len=256)
    return DecoderLM(spec).eval()


def test_evaluate_task_matches_per_sample_greedy_loop(tok, hay):
    model = tiny_model(tok.get_vocab_size())
    samples = (make_task("single_needle", tok, hay, 150, 3, seed=0, depth=[0.0, 0.5, 1.0])
               + make_task("multivalue", tok, hay, 211, 2, seed=0, n_needles=2))  # two prompt lengths
    out = evaluate_task(model, samples, tok, batch_size=2)
    assert out["n"] == 5 and 0.0 <= out["accuracy"] <= 1.0 and out["n_correct"] == sum(out["correct"])
    assert sum(v["n"] for v in out["per_depth"].values()) == 5
    assert {0.1, 0.5, 0.9} <= set(out["per_depth"])  # depth 0, 0.5, 1 fall in the first/middle/last bin
    n_new = max(len(s.answer_ids) for s in samples) + 2
    for s, text, ok in zip(samples, out["generated"], out["correct"]):
        ids = torch.tensor([s.prompt_ids])
        ref = tok.decode(greedy_generate(model, ids, n_new)[0, ids.shape[1]:].tolist())
        assert text == ref and ok == score_answer(s.kind, ref, list(s.values))


def copy_last_token_model(vocab: int) -> DecoderLM:
    """A real DecoderLM whose blocks add nothing (zero output projections) and whose head is the tied
    embedding: the logits are <norm(e_t), e_j>, so greedy decoding repeats the last token."""
    torch.manual_seed(0)
    spec = LMSpec(vocab_size=vocab, hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=2,
                  intermediate_size=64, max_seq_len=256, tie_embeddings=True, init_std=1.0)
    model = DecoderLM(spec).eval()
    with torch.no_grad():
        for block in model.layers:
            block.mixer.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    return model


def test_evaluate_task_scores_a_model_that_answers(tok):
    """Hand-built samples whose correct answer is "7" repeated: the copy model answers them exactly
    when given as many tokens as the answer, and is caught running on with the default +2 tokens."""
    seven = tok.token_to_id("7")
    model = copy_last_token_model(tok.get_vocab_size())
    assert greedy_generate(model, torch.tensor([[3, seven]]), 3)[0, 2:].tolist() == [seven] * 3  # precondition
    prompt = tok.encode("The special magic number is 7").ids
    assert prompt[-1] == seven
    right = Sample(prompt, tok.encode(" 7777").ids, "7777", ("7777",), (), (), (), 0.3, "single_needle")
    wrong = Sample(prompt, tok.encode(" 1234").ids, "1234", ("1234",), (), (), (), 0.9, "single_needle")
    out = evaluate_task(model, [right, wrong], tok, max_new_tokens=4)
    assert out["generated"] == ["7777", "7777"] and out["correct"] == [True, False] and out["accuracy"] == 0.5
    assert out["per_depth"] == {0.3: {"accuracy": 1.0, "n": 1}, 0.9: {"accuracy": 0.0, "n": 1}}
    assert evaluate_task(model, [right], tok)["correct"] == [False]  # "777777..." is not "7777"
