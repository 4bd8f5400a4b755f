"""Token shards: one flat token stream on disk, read through memory maps, checked against hashes.

Layout of a shard directory::

    index.json        {dtype, vocab_size, eos_id, num_tokens, num_documents, shards: [{file, num_tokens, sha256}]}
    shard_00000.bin   raw little-endian uint16 (vocab_size <= 65536) or uint32 token ids
    shard_00001.bin   ...

Documents are concatenated, each followed by ``eos_id``. Raw arrays (no header) keep the files
readable by any tool (``np.fromfile``); the index carries the dtype and every shard's sha256, so a
truncated or corrupted shard is caught before training instead of silently training on garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..missing import missing_input
from .corpus import DataError, sha256_file

INDEX_FILE = "index.json"
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


class CorruptShardError(DataError):
    """A shard file does not match the size or sha256 recorded in index.json."""


def shard_dtype(vocab_size: int) -> str:
    """Smallest on-disk dtype name that holds every id below ``vocab_size``."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


def _shard_name(i: int) -> str:
    return f"shard_{i:05d}.bin"


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise DataError(f"{name} must be an integer >= {low}, got {value!r}")


def write_shards(
    docs: Iterable[list[int]],
    out_dir: str | os.PathLike,
    eos_id: int,
    vocab_size: int,
    shard_tokens: int = 2**24,
) -> dict:
    """Write ``docs`` (each a sequence of token ids) as shards of ``shard_tokens`` tokens + index.json.

    Returns the index dict. Stale ``shard_*.bin`` files in ``out_dir`` are removed first so the
    directory always matches its index; index.json is written last, so an interrupted run leaves
    no index and readers fail clearly. Ids outside [0, vocab_size) raise DataError.
    """
    _check_int("vocab_size", vocab_size, 1)
    _check_int("shard_tokens", shard_tokens, 1)
    _check_int("eos_id", eos_id, 0)
    if eos_id >= vocab_size:
        raise DataError(f"eos_id {eos_id} must be below vocab_size {vocab_size}")
    dtype_name = shard_dtype(vocab_size)
    dtype = _DTYPES[dtype_name]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / INDEX_FILE, *out.glob("shard_*.bin")]:
        stale.unlink(missing_ok=True)

    shards: list[dict] = []
    buf = np.empty(shard_tokens, dtype=dtype)
    fill = 0
    num_tokens = num_documents = 0

    def flush(n: int) -> None:
        name = _shard_name(len(shards))
        data = buf[:n].tobytes()  # dtype is explicitly little-endian, so the bytes are platform-independent
        (out / name).write_bytes(data)
        shards.append({"file": name, "num_tokens": n, "sha256": hashlib.sha256(data).hexdigest()})

    for doc in docs:
        ids = np.asarray(doc, dtype=np.int64)
        if ids.ndim != 1:
            raise DataError(f"document {num_documents} must be a 1-D sequence of token ids, got shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
            raise DataError(f"document {num_documents} has token id {bad}; allowed ids are 0..{vocab_size - 1}")
        ids = np.append(ids, eos_id)
        pos = 0
        while pos < ids.size:
            take = min(shard_tokens - fill, ids.size - pos)
            buf[fill : fill + take] = ids[pos : pos + take]
            fill += take
            pos += take
            if fill == shard_tokens:
                flush(fill)
                fill = 0
        num_tokens += ids.size
        num_documents += 1
    if fill:
        flush(fill)
    if num_documents == 0:
        raise DataError("docs is empty: no documents to write into shards")

    index = {
        "dtype": dtype_name,
        "vocab_size": int(vocab_size),
        "eos_id": int(eos_id),
        "num_tokens": num_tokens,
        "num_documents": num_documents,
        "shards": shards,
    }
    tmp = out / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / INDEX_FILE)
    return index


def load_index(directory: str | os.PathLike) -> dict:
    """Read and validate ``directory/index.json``."""
    path = Path(directory) / INDEX_FILE
    if not path.is_file():
        raise DataError(missing_input(f"shard index {str(path)!r}", "foundation-data"))
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"shard index {str(path)!r} is not valid JSON: {e}; rerun the data stage") from e
    required = ("dtype", "vocab_size", "eos_id", "num_tokens", "num_documents", "shards")
    missing = [k for k in required if k not in index]
    if missing:
        raise DataError(f"shard index {str(path)!r} lacks keys {missing}; rerun the data stage")
    if index["dtype"] not in _DTYPES:
        raise DataError(f"shard index {str(path)!r} has dtype {index['dtype']!r}; allowed: {sorted(_DTYPES)}")
    if sum(s["num_tokens"] for s in index["shards"]) != index["num_tokens"]:
        raise DataError(f"shard index {str(path)!r} is inconsistent: shard sizes do not add up to num_tokens")
    return index


class ShardedTokens:
    """Read-only view of a shard directory as one flat token stream.

    ``read(start, length)`` returns an int64 array of ``length`` tokens and may span shard
    boundaries. With ``verify`` every shard's size and sha256 are checked on open
    (CorruptShardError names the shard and both hashes).
    """

    def __init__(self, directory: str | os.PathLike, verify: bool = True):
        self.directory = Path(directory)
        self.index = load_index(self.directory)
        self._dtype = _DTYPES[self.index["dtype"]]
        if verify:
            self.verify()
        self._open()

    def _open(self) -> None:
        self._maps = []
        for s in self.index["shards"]:
            self._check_size(s)
            self._maps.append(np.memmap(self.directory / s["file"], dtype=self._dtype, mode="r",
                                        shape=(s["num_tokens"],)))
        # _starts[i] = stream offset of shard i's first token; last entry = num_tokens.
        self._starts = np.cumsum([0] + [s["num_tokens"] for s in self.index["shards"]])

    def _check_size(self, s: dict) -> None:
        path = self.directory / s["file"]
        if not path.is_file():
            raise CorruptShardError(f"shard {str(path)!r} is missing; rerun the data stage to rebuild the shards")
        expected = s["num_tokens"] * self._dtype.itemsize
        actual = path.stat().st_size
        if actual != expected:
            raise CorruptShardError(
                f"shard {str(path)!r} has {actual} bytes but index.json records {expected} "
                f"({s['num_tokens']} {self.index['dtype']} tokens): truncated or overwritten; "
                "rerun the data stage to rebuild the shards"
            )

    def verify(self) -> None:
        """Check every shard's size and sha256 against index.json (raises CorruptShardError)."""
        for s in self.index["shards"]:
            self._check_size(s)
            actual = sha256_file(self.directory / s["file"])
            if actual != s["sha256"]:
                raise CorruptShardError(
                    f"shard {str(self.directory / s['file'])!r} is corrupt: expected sha256 {s['sha256']}, "
                    f"got {actual}; rerun the data stage to rebuild the shards"
                )

    # Memory maps are not picklable as maps (numpy would copy the data); reopen them instead, which
    # lets DataLoader worker processes share the page cache. The parent already verified the hashes.
    def __getstate__(self) -> dict:
        return {"directory": self.directory, "index": self.index, "_dtype": self._dtype}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return self.num_tokens

    @property
    def num_tokens(self) -> int:
        return int(self.index["num_tokens"])

    @property
    def num_documents(self) -> int:
        return int(self.index["num_documents"])

    @property
    def vocab_size(self) -> int:
        return int(self.index["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.index["eos_id"])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the stream as an int64 array of shape [length]."""
        _check_int("start", start, 0)
        _check_int("length", length, 0)
        if start + length > self.num_tokens:
            raise DataError(f"read({start}, {length}) goes past the end of the stream ({self.num_tokens} tokens)")
        out = np.empty(length, dtype=np.int64)
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        done = 0
        while done < length:
            lo = start + done - int(self._starts[shard])
            take = min(length - done, self.index["shards"][shard]["num_tokens"] - lo)
            out[done : done + take] = self._maps[shard][lo : lo + take]
            done += take
            shard += 1
        return out

    def __repr__(self) -> str:
        return (
            f"ShardedTokens({str(self.directory)!r}, num_tokens={self.num_tokens}, "
            f"shards={len(self.index['shards'])}, dtype={self.index['dtype']})"
        )
