"""Token shards: layout, determinism, reads across boundaries, corruption and truncation detection."""

import hashlib
import json
import pickle

import numpy as np
import pytest

from lmrepro.data import CorruptShardError, DataError, ShardedTokens, write_shards

EOS = 0


def make_docs(seed, n_docs=9, vocab=300):
    rng = np.random.default_rng(seed)
    # Odd lengths and an empty document (which still contributes its EOS).
    return [rng.integers(1, vocab, size=int(n)).tolist() for n in rng.integers(0, 12, size=n_docs)] + [[]]


def reference(docs):
    return np.array([t for d in docs for t in (*d, EOS)], dtype=np.int64)


@pytest.mark.parametrize("shard_tokens", [1, 7, 13, 1000])
def test_layout_and_reads_across_boundaries(tmp_path, shard_tokens):
    docs = make_docs(0)
    ref = reference(docs)
    index = write_shards(docs, tmp_path, eos_id=EOS, vocab_size=300, shard_tokens=shard_tokens)
    assert index["num_tokens"] == len(ref) and index["num_documents"] == len(docs)
    assert index["dtype"] == "uint16" and index["eos_id"] == EOS and index["vocab_size"] == 300
    assert [s["file"] for s in index["shards"]] == [f"shard_{i:05d}.bin" for i in range(len(index["shards"]))]
    assert all(s["num_tokens"] == shard_tokens for s in index["shards"][:-1])
    assert json.loads((tmp_path / "index.json").read_text()) == index
    flat = np.concatenate([np.fromfile(tmp_path / s["file"], dtype="<u2") for s in index["shards"]])
    assert np.array_equal(flat, ref)

    st = ShardedTokens(tmp_path)
    assert len(st) == st.num_tokens == len(ref) and st.vocab_size == 300 and st.eos_id == EOS
    n = len(ref)
    for start in range(n):
        for length in range(0, n - start + 1, 3 if shard_tokens > 1 else 7):
            got = st.read(start, length)
            assert got.dtype == np.int64 and np.array_equal(got, ref[start : start + length])


def test_uint32_for_large_vocab(tmp_path):
    docs = [[70_000, 5, 65_536], [1]]
    index = write_shards(docs, tmp_path, eos_id=EOS, vocab_size=70_001, shard_tokens=4)
    assert index["dtype"] == "uint32"
    assert (tmp_path / "shard_00000.bin").stat().st_size == 4 * 4
    assert ShardedTokens(tmp_path).read(0, 6).tolist() == [70_000, 5, 65_536, 0, 1, 0]


def test_deterministic(tmp_path):
    a = write_shards(make_docs(1), tmp_path / "a", eos_id=EOS, vocab_size=300, shard_tokens=10)
    b = write_shards(iter(make_docs(1)), tmp_path / "b", eos_id=EOS, vocab_size=300, shard_tokens=10)
    assert a == b
    assert (tmp_path / "a" / "index.json").read_bytes() == (tmp_path / "b" / "index.json").read_bytes()
    for s in a["shards"]:
        data = (tmp_path / "a" / s["file"]).read_bytes()
        assert data == (tmp_path / "b" / s["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"]


def test_rewrite_removes_stale_shards(tmp_path):
    write_shards(make_docs(2), tmp_path, eos_id=EOS, vocab_size=300, shard_tokens=5)
    index = write_shards([[1, 2]], tmp_path, eos_id=EOS, vocab_size=300, shard_tokens=5)
    assert sorted(p.name for p in tmp_path.glob("shard_*.bin")) == ["shard_00000.bin"]
    assert ShardedTokens(tmp_path).read(0, 3).tolist() == [1, 2, 0] and index["num_tokens"] == 3


@pytest.mark.parametrize("bad", [[1, 300], [-1], [5, 1000]])
def test_out_of_range_ids(tmp_path, bad):
    with pytest.raises(DataError, match=r"allowed ids are 0\.\.299"):
        write_shards([[1, 2], bad], tmp_path, eos_id=EOS, vocab_size=300)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eos_id": 300, "vocab_size": 300}, "eos_id"),
        ({"eos_id": 0, "vocab_size": 0}, "vocab_size"),
        ({"eos_id": 0, "vocab_size": 300, "shard_tokens": 0}, "shard_tokens"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(DataError, match=match):
        write_shards([[1]], tmp_path, **kwargs)


def test_no_documents(tmp_path):
    with pytest.raises(DataError, match="no documents"):
        write_shards([], tmp_path, eos_id=EOS, vocab_size=300)


def test_flipped_byte_raises_corrupt_shard(tmp_path):
    index = write_shards(make_docs(3), tmp_path, eos_id=EOS, vocab_size=300, shard_tokens=8)
    victim = index["shards"][1]
    path = tmp_path / victim["file"]
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError) as e:
        ShardedTokens(tmp_path)
    msg = str(e.value)
    assert victim["file"] in msg and victim["sha256"] in msg
    assert hashlib.sha256(bytes(data)).hexdigest() in msg and "rerun the data stage" in msg
    assert isinstance(e.value, DataError)
    ShardedTokens(tmp_path, verify=False)  # same size: opens when the caller skips verification


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_shard_detected(tmp_path, verify):
    index = write_shards(make_docs(4), tmp_path, eos_id=EOS, vocab_size=300, shard_tokens=8)
    path = tmp_path / index["shards"][0]["file"]
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(CorruptShardError, match="shard_00000.bin.*truncated"):
        ShardedTokens(tmp_path, verify=verify)


def test_missing_index_and_shard(tmp_path):
    with pytest.raises(DataError, match="index.json.* is missing: run `dvc repro foundation-data`"):
        ShardedTokens(tmp_path)
    write_shards(make_docs(5), tmp_path, eos_id=EOS, vocab_size=300, shard_tokens=8)
    (tmp_path / "shard_00001.bin").unlink()
    with pytest.raises(CorruptShardError, match="shard_00001.bin.*missing"):
        ShardedTokens(tmp_path)


def test_read_bounds_and_pickle(tmp_path):
    docs = make_docs(6)
    ref = reference(docs)
    write_shards(docs, tmp_path, eos_id=EOS, vocab_size=300, shard_tokens=8)
    st = ShardedTokens(tmp_path)
    with pytest.raises(DataError, match="past the end"):
        st.read(len(ref) - 2, 3)
    with pytest.raises(DataError, match="start"):
        st.read(-1, 2)
    clone = pickle.loads(pickle.dumps(st))
    assert np.array_equal(clone.read(0, len(ref)), ref)
    assert len(pickle.dumps(st)) < 4096  # the maps are reopened, not copied
