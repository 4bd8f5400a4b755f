"""The retrieval mixer: exact share per batch, answers where stated and far enough back, plain rows untouched,
a pure function of (seed, step), and the trainer's fingerprint tells mixed runs apart."""

from __future__ import annotations

import sysconfig
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lmrepro.data import ChunkSampler, ShardedTokens, train_bpe_tokenizer, write_shards
from lmrepro.data.retrieval_mix import MIX_KINDS, RECALL_STATEMENT, MixedSampler, RetrievalMix, Row, answer_mask
from lmrepro.data.synthetic import NEEDLE_TEMPLATE

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SEQ = 320


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    texts = [(STDLIB / n).read_text(encoding="utf-8")[:30000] for n in ("textwrap.py", "string.py", "heapq.py")]
    tok = train_bpe_tokenizer(texts, vocab_size=600)
    folder = tmp_path_factory.mktemp("shards")
    write_shards([tok.encode(t).ids for t in texts], folder, eos_id=0, vocab_size=tok.get_vocab_size(),
                 shard_tokens=4096)
    return tok, ShardedTokens(folder)


def sampler(stream, share=0.25, kinds=("single_needle", "multikey", "kv_retrieval", "multiquery"), seed=3,
            min_distance=40, recall_pairs=2, repeat_tokens=32, repeat_vocab=None) -> MixedSampler:
    tok, tokens = stream
    mix = RetrievalMix(share=share, kinds=tuple(kinds), value_digits=3, min_distance=min_distance, seed=seed,
                       recall_pairs=recall_pairs, repeat_tokens=repeat_tokens, repeat_vocab=repeat_vocab)
    return MixedSampler(ChunkSampler(tokens, SEQ, seed=7), mix, tok)


@pytest.mark.parametrize("share,batch_size,rows", [(0.25, 8, 2), (0.5, 8, 4), (0.1, 20, 2), (0.3, 10, 3)])
def test_exact_share_and_plain_rows_untouched(stream, share, batch_size, rows):
    s = sampler(stream, share=share)
    for step in range(6):
        batch, plain = s.batch(step, batch_size), s.base.batch(step, batch_size)
        where = s.positions(step, batch_size)
        assert batch.shape == (batch_size, SEQ + 1) and len(where) == rows
        others = [r for r in range(batch_size) if r not in where]
        assert torch.equal(batch[others], plain[others])  # the ordinary chunks, exactly
        assert all(not torch.equal(batch[r], plain[r]) for r in where)
    # Synthetic rows move around the batch (not always the same slots).
    assert len({tuple(s.positions(step, batch_size)) for step in range(20)}) > 1


@pytest.mark.parametrize("kind", ["single_needle", "multikey", "multiquery", "kv_retrieval", "recall"])
def test_values_are_where_stated_and_far_enough_back(stream, kind):
    tok, _ = stream
    s = sampler(stream, kinds=(kind,), min_distance=60)
    for step in range(8):
        for r in s.positions(step, 8):
            row = s.row(step, r)
            ids = s.batch(step, 8)[r].tolist()
            assert ids == row.ids and len(ids) == SEQ + 1 and row.kind == kind
            assert len(row.pairs) == len(row.values) and row.distance() >= 60
            for value, (source, target) in zip(row.values, row.pairs):
                assert target - source >= 60
                assert tok.decode(ids[source:source + 8]).strip().startswith(value)  # the needle's value ...
                assert value in tok.decode(ids[target:])  # ... is written again from the target on
            text = tok.decode(ids)
            if kind == "recall":  # every key's needle, then its statement with the same value, in the template
                keys = [line.split(" for ")[1].split(" is:")[0] for line in text.split("\n")
                        if line.startswith("One of the special magic numbers for ")]
                assert len(keys) == len(row.values)  # needle order = the order of values and pairs
                for key, value, (source, target) in zip(keys, row.values, row.pairs):
                    assert NEEDLE_TEMPLATE.format(key=key, value=value) in text
                    assert tok.decode(ids[:target]).endswith("\n" + RECALL_STATEMENT.format(key=key))
                    assert tok.decode(ids[target:]).startswith(f" {value}.")
            elif kind == "single_needle":
                assert NEEDLE_TEMPLATE.format(key=_needle_key(text), value=row.values[0]) in text


def _needle_key(text: str) -> str:
    return text.split("One of the special magic numbers for ")[1].split(" is:")[0]


def test_kinds_are_cycled_and_all_occur(stream):
    s = sampler(stream, kinds=MIX_KINDS)
    seen = {s.row(step, r).kind for step in range(12) for r in s.positions(step, 8)}
    assert seen == set(MIX_KINDS)


def test_pure_function_of_seed_and_step(stream):
    a, b = sampler(stream), sampler(stream)
    order = [5, 0, 3, 5, 1]
    first = {step: a.batch(step, 8) for step in order}
    for step in reversed(order):  # any order, a fresh sampler: the same batches (resume-exact)
        assert torch.equal(b.batch(step, 8), first[step])
    other = sampler(stream, seed=4)
    assert not torch.equal(other.batch(0, 8), first[0])


@pytest.mark.parametrize("kwargs,match", [
    (dict(share=0.0), "share must be in"), (dict(share=1.0), "share must be in"),
    (dict(kinds=()), "kinds must be"), (dict(kinds=("needle",)), "kinds must be"),
    (dict(min_distance=0), "min_distance must be"), (dict(min_distance=160), "below half of seq_len"),
])
def test_bad_mix_is_refused(stream, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sampler(stream, **kwargs)


def test_too_small_share_for_the_batch_is_refused(stream):
    with pytest.raises(ValueError, match="gives 0 synthetic rows"):
        sampler(stream, share=0.05).batch(0, 8)


def test_distance_is_the_closest_pair():
    assert Row(ids=[], kind="recall", values=("1", "2"), pairs=((30, 90), (12, 40))).distance() == 28


def test_recall_row_that_cannot_fit_is_refused(stream):
    with pytest.raises(ValueError, match="recall row of 12 pairs needs"):
        sampler(stream, kinds=("recall",), recall_pairs=12).row(0, 0)


@pytest.mark.parametrize("vocab", [None, 50])
def test_repeat_rows_end_with_a_copy_of_an_earlier_span(stream, vocab):
    s = sampler(stream, kinds=("repeat",), repeat_tokens=48, repeat_vocab=vocab)
    plain = ChunkSampler(stream[1], SEQ, seed=7)
    for step in range(6):
        for r in s.positions(step, 8):
            row = s.row(step, r)
            (source, target), = row.pairs
            assert len(row.ids) == SEQ + 1 and target == SEQ + 1 - 48
            assert row.ids[target:] == row.ids[source:source + 48]
            assert target - source >= 40 == s.mix.min_distance
            span = row.ids[source:source + 48]
            if vocab is not None:  # random ids from [256, 306): nothing but the copy predicts them
                assert all(256 <= t < 306 for t in span) and len(set(span)) > 20
        assert torch.equal(s.batch(step, 8)[[i for i in range(8) if i not in s.positions(step, 8)]],
                           plain.batch(step, 8)[[i for i in range(8) if i not in s.positions(step, 8)]])


@pytest.mark.parametrize("kwargs,match", [
    (dict(repeat_vocab=1), "repeat_vocab must be"), (dict(repeat_vocab=True), "repeat_vocab must be"),
    (dict(repeat_vocab=400), "repeat_vocab 400 needs ids up to 656; the tokenizer has 600"),
    (dict(repeat_tokens=0), "repeat_tokens must be"),
])
def test_bad_repeat_settings_are_refused(stream, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sampler(stream, kinds=("repeat",), **kwargs)


def test_repeat_row_that_cannot_fit_is_refused(stream):
    with pytest.raises(ValueError, match="repeat row of span 150 needs 340 tokens; the row has 321"):
        sampler(stream, kinds=("repeat",), repeat_tokens=150).row(0, 0)


@pytest.mark.parametrize("kind", ["single_needle", "recall", "multiquery"])
def test_answer_weights_fall_exactly_on_the_value_tokens(stream, kind):
    """The weighted labels of a synthetic row (MixedSampler.weights) are the tokens of its values, where the
    row writes them, or a repeat row's copied span; plain rows keep weight 1."""
    tok, _ = stream
    s = sampler(stream, kinds=(kind, "repeat"), min_distance=60)
    assert s.weights(0, 8) is None  # answer_weight 1: the plain loss
    s = MixedSampler(s.base, replace(s.mix, answer_weight=7.0), tok)
    for step in range(4):
        w = s.weights(step, 8)
        assert w.shape == (8, SEQ)
        where = s.positions(step, 8)
        for r in range(8):
            if r not in where:
                assert torch.equal(w[r], torch.ones(SEQ))
                continue
            row = s.row(step, r)
            if row.kind == "repeat":  # the copied span, exactly: the row's last repeat_tokens labels
                assert torch.equal(w[r] == 7.0, torch.arange(SEQ) >= SEQ - 32)
                continue
            labels = torch.tensor(row.ids[1:])
            mask = answer_mask(row, tok)
            assert torch.equal(w[r] == 7.0, mask) and torch.equal(w[r][~mask], torch.ones(int((~mask).sum())))
            if kind != "multiquery":
                assert int(mask.sum()) == sum(len(tok.encode(" " + v, add_special_tokens=False).ids)
                                              for v in row.values)
            if kind == "multiquery":  # the prompt ends with its whole answer: the values joined by ","
                assert tok.decode(labels[mask].tolist()).replace(" ", "") == ",".join(row.values)
                continue
            # Label runs, in the order the row writes them, decode to its values.
            for value, (_, target) in zip(row.values, row.pairs):
                n = len(tok.encode(" " + value, add_special_tokens=False).ids)
                assert tok.decode(labels[target - 1:target - 1 + n].tolist()).strip() == value
                assert mask[target - 1:target - 1 + n].all()


# ------------------------------------------------------------ the Trainer on a weighted mixed stream
def _weighted_trainer(stream, make_spec, make_train_config, root, weight=16.0, **cfg_kw):
    from lmrepro.train import Trainer

    tok, tokens = stream
    cfg = make_train_config(**{"seq_len": 160, "batch_size": 4, "micro_batch_size": 2, "max_tokens": 4 * 160 * 6,
                               "save_every_steps": 2, "checkpoint_tokens": [], "eval_every_steps": None, **cfg_kw})
    mix = RetrievalMix(share=0.5, kinds=("single_needle", "recall"), value_digits=3, min_distance=20, seed=5,
                       recall_pairs=1, answer_weight=weight)
    s = MixedSampler(ChunkSampler(tokens, cfg.seq_len, cfg.seed), mix, tok)
    spec = make_spec(vocab_size=tok.get_vocab_size(), max_seq_len=cfg.seq_len)
    return Trainer(spec, cfg, tokens.directory, root / "out", root / "ckpt", progress=False, sampler=s), s, cfg


def test_trainer_loss_is_the_weighted_mean_over_the_global_batch(stream, make_spec, make_train_config, tmp_path):
    """Step 1's logged loss and the weights it trains on are Σ w·CE / Σ w of the initial model on batch 0,
    with w = answer_weight on the answer labels (two micro-batches: the normalizer is the global total)."""
    import torch.nn.functional as F
    from accelerate.utils import set_seed

    from lmrepro.models import DecoderLM

    t, s, cfg = _weighted_trainer(stream, make_spec, make_train_config, tmp_path, max_tokens=4 * 160)
    result = t.fit()
    set_seed(cfg.seed)
    model = DecoderLM(t.spec)
    batch, w = s.batch(0, 4), s.weights(0, 4)
    assert w.max() == 16.0 and (w == 16.0).sum() >= 2 * 3  # two synthetic rows, >= 3 value tokens each
    ce = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
    expected = (ce * w.flatten()).sum() / w.sum()
    assert result.rows[0]["loss"] == pytest.approx(expected.item(), rel=1e-6)
    assert abs(expected.item() - ce.mean().item()) > 1e3 * abs(result.rows[0]["loss"] - expected.item())


def test_weighted_run_resumes_bit_identically_and_has_its_own_fingerprint(stream, make_spec, make_train_config,
                                                                           tmp_path):
    from lmrepro.train import load_model

    full, _, _ = _weighted_trainer(stream, make_spec, make_train_config, tmp_path / "a")
    full.fit()
    part, _, _ = _weighted_trainer(stream, make_spec, make_train_config, tmp_path / "b")
    assert not part.fit(until_step=3).completed
    again, _, _ = _weighted_trainer(stream, make_spec, make_train_config, tmp_path / "b")
    assert again.fit().resumed_from_step == 3
    a, b = load_model(tmp_path / "a/out/final"), load_model(tmp_path / "b/out/final")
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    other, _, _ = _weighted_trainer(stream, make_spec, make_train_config, tmp_path / "c", weight=32.0)
    assert len({full.fingerprint, other.fingerprint}) == 2


def test_trainer_refuses_a_sampler_of_another_context(stream, make_spec, make_train_config, tmp_path):
    """A stream cut for one seq_len under a config of another would train on rows of the wrong length."""
    tok, tokens = stream
    cfg = make_train_config(seq_len=96, batch_size=4, micro_batch_size=4, max_tokens=4 * 96)
    s = sampler(stream)  # rows of SEQ = 320 tokens
    from lmrepro.train import Trainer

    with pytest.raises(ValueError, match="seq_len 320; the training config has 96"):
        Trainer(make_spec(vocab_size=tok.get_vocab_size(), max_seq_len=96), cfg, tokens.directory, tmp_path / "o",
                tmp_path / "c", progress=False, sampler=s)
