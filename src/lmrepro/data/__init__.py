"""Data: corpora pinned by manifest, byte-level BPE tokenizer, token shards, deterministic batches.

Pipeline: corpus manifest (stdlib or HF) -> tokenizer trained on the train split -> token shards
per split (checked by sha256) -> ChunkSampler / eval_windows batches.
"""

from .batches import ChunkSampler, eval_windows
from .corpus import (
    DataError,
    assign_split,
    build_stdlib_manifest,
    iter_documents,
    list_stdlib_files,
    load_manifest,
    stdlib_root,
    write_manifest,
)
from .hf_source import stream_hf_documents, write_hf_corpus
from .shards import CorruptShardError, ShardedTokens, load_index, write_shards
from .tokenizer import (
    SPECIAL_TOKENS,
    encode_texts,
    eos_id,
    load_tokenizer,
    save_tokenizer,
    to_hf_tokenizer,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)

__all__ = [
    "SPECIAL_TOKENS",
    "ChunkSampler",
    "CorruptShardError",
    "DataError",
    "ShardedTokens",
    "assign_split",
    "build_stdlib_manifest",
    "encode_texts",
    "eos_id",
    "eval_windows",
    "iter_documents",
    "list_stdlib_files",
    "load_index",
    "load_manifest",
    "load_tokenizer",
    "save_tokenizer",
    "stdlib_root",
    "stream_hf_documents",
    "to_hf_tokenizer",
    "tokenizer_fingerprint",
    "train_bpe_tokenizer",
    "write_hf_corpus",
    "write_manifest",
    "write_shards",
]
