"""ChunkSampler and eval_windows against a naive reference built from the flat token array."""

import numpy as np
import pytest
import torch

from lmrepro.data import ChunkSampler, DataError, ShardedTokens, eval_windows, write_shards


def make_tokens(tmp_path, n_tokens, shard_tokens=17, seed=0):
    """Shards holding one document of random ids (plus its EOS); returns (ShardedTokens, flat reference)."""
    rng = np.random.default_rng(seed)
    doc = rng.integers(1, 500, size=n_tokens - 1).tolist()
    write_shards([doc], tmp_path, eos_id=0, vocab_size=500, shard_tokens=shard_tokens)
    return ShardedTokens(tmp_path), np.array(doc + [0], dtype=np.int64)


def naive_chunks(flat, seq_len):
    """Every chunk c = flat[c*seq_len : c*seq_len + seq_len + 1] that fits in the stream."""
    out, c = [], 0
    while c * seq_len + seq_len + 1 <= len(flat):
        out.append(flat[c * seq_len : c * seq_len + seq_len + 1])
        c += 1
    return out


@pytest.mark.parametrize("n_tokens, seq_len", [(101, 10), (100, 10), (11, 10), (57, 7), (200, 1), (64, 33)])
def test_num_chunks(tmp_path, n_tokens, seq_len):
    tokens, flat = make_tokens(tmp_path, n_tokens)
    assert ChunkSampler(tokens, seq_len, seed=0).num_chunks == len(naive_chunks(flat, seq_len))


@pytest.mark.parametrize("seq_len, batch_size", [(5, 3), (7, 4), (16, 1), (3, 64)])
def test_batches_match_naive_reference_and_cover_each_epoch(tmp_path, seq_len, batch_size):
    tokens, flat = make_tokens(tmp_path, 203)
    chunks = naive_chunks(flat, seq_len)
    n = len(chunks)
    s = ChunkSampler(tokens, seq_len, seed=123)
    steps = -(-2 * n // batch_size) + 1  # enough steps to cover two full epochs
    rows, ids = [], []
    for step in range(steps):
        b = s.batch(step, batch_size)
        assert b.shape == (batch_size, seq_len + 1) and b.dtype == torch.long
        cid = s.chunk_ids(step, batch_size)
        for row, c in zip(b, cid.tolist()):
            assert np.array_equal(row.numpy(), chunks[c])
        rows.extend(b.numpy())
        ids.extend(cid.tolist())
    for epoch in range(2):
        epoch_ids = ids[epoch * n : (epoch + 1) * n]
        assert sorted(epoch_ids) == list(range(n))  # every chunk exactly once per epoch
        # Content check, independent of chunk_ids: the epoch's rows are exactly the naive chunks.
        epoch_rows = sorted(tuple(r) for r in rows[epoch * n : (epoch + 1) * n])
        assert epoch_rows == sorted(tuple(c) for c in chunks)
    assert ids[:n] != ids[n : 2 * n]  # epochs are shuffled differently


def test_pure_function_of_step_and_resumable(tmp_path):
    tokens, _ = make_tokens(tmp_path, 301)
    a = ChunkSampler(tokens, 6, seed=5)
    ref = [a.batch(step, 4) for step in range(30)]  # crosses several epoch boundaries (49 chunks)
    b = ChunkSampler(ShardedTokens(tmp_path), 6, seed=5)  # a "resumed" run or another process
    for step in (29, 3, 12, 0, 24):
        assert torch.equal(b.batch(step, 4), ref[step])
    # The order does not depend on how it is batched: one big batch equals the small ones stacked.
    assert torch.equal(a.batch(0, 120), torch.cat(ref))
    assert torch.equal(a.batch(1, 60), torch.cat(ref[15:]))


def test_seed_changes_order(tmp_path):
    tokens, _ = make_tokens(tmp_path, 301)
    a, b = ChunkSampler(tokens, 6, seed=1), ChunkSampler(tokens, 6, seed=2)
    assert not torch.equal(a.chunk_ids(0, 20), b.chunk_ids(0, 20))
    assert a.epoch_of(0, 20) == 0 and a.epoch_of(3, 20) == 1


def test_too_few_tokens(tmp_path):
    tokens, _ = make_tokens(tmp_path, 10)
    with pytest.raises(DataError, match=r"seq_len=10 .*11 tokens.*has 10"):
        ChunkSampler(tokens, 10, seed=0)
    with pytest.raises(DataError, match="seq_len=10"):
        eval_windows(tokens, 10, None, 2)


@pytest.mark.parametrize(
    "args, match",
    [((0, 0), "seq_len"), ((4, 1.5), "seed")],
)
def test_sampler_bad_arguments(tmp_path, args, match):
    tokens, _ = make_tokens(tmp_path, 50)
    with pytest.raises(DataError, match=match):
        ChunkSampler(tokens, *args)
    with pytest.raises(DataError, match="batch_size"):
        ChunkSampler(tokens, 4, 0).batch(0, 0)
    with pytest.raises(DataError, match="step"):
        ChunkSampler(tokens, 4, 0).batch(-1, 2)


@pytest.mark.parametrize("max_windows, batch_size", [(None, 4), (None, 100), (5, 2), (1, 3), (1000, 3)])
def test_eval_windows(tmp_path, max_windows, batch_size):
    tokens, flat = make_tokens(tmp_path, 97)
    chunks = naive_chunks(flat, 8)
    if max_windows is None or max_windows >= len(chunks):
        expected = chunks
    else:  # spread evenly over the stream, first and last window included
        expected = [chunks[round(i * (len(chunks) - 1) / (max_windows - 1))] if max_windows > 1 else chunks[0]
                    for i in range(max_windows)]
    batches = list(eval_windows(tokens, 8, max_windows, batch_size))
    assert all(b.shape[0] == batch_size for b in batches[:-1]) and 1 <= batches[-1].shape[0] <= batch_size
    got = torch.cat(batches)
    assert got.dtype == torch.long and np.array_equal(got.numpy(), np.stack(expected))
    again = list(eval_windows(tokens, 8, max_windows, batch_size))
    assert len(again) == len(batches) and all(torch.equal(x, y) for x, y in zip(batches, again))


def test_eval_windows_bad_arguments(tmp_path):
    tokens, _ = make_tokens(tmp_path, 50)
    with pytest.raises(DataError, match="max_windows"):
        eval_windows(tokens, 4, 0, 2)
    with pytest.raises(DataError, match="batch_size"):
        eval_windows(tokens, 4, None, 0)
