"""Byte-level BPE tokenizer (HF ``tokenizers``), trained on the corpus's train split.

Byte-level with all 256 bytes in the initial alphabet means any text encodes without an unknown
token and decodes back exactly. The special tokens come first, so ``<|endoftext|>`` (the document
separator written into the token shards) is id 0 and ``<|pad|>`` is id 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .corpus import DataError, sha256_bytes

SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")
EOS_TOKEN, PAD_TOKEN = SPECIAL_TOKENS
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def _as_text(tok: Tokenizer) -> Tokenizer:
    # Document text must never produce the EOS id: a literal "<|endoftext|>" inside a document is
    # encoded as ordinary bytes, so EOS in the shards marks only real document boundaries.
    # (This flag is not saved in tokenizer.json, hence it is set on every train and load.)
    tok.encode_special_tokens = True
    return tok


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts``.

    ``vocab_size`` is an upper bound (a tiny corpus may run out of merges first; use
    ``tok.get_vocab_size()`` for the actual size). Deterministic: the same texts give an identical
    tokenizer.json.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise DataError(
            f"vocab_size must be an integer >= {MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} special tokens), "
            f"got {vocab_size!r}"
        )
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise DataError(f"min_frequency must be a positive integer, got {min_frequency!r}")
    if isinstance(texts, str):
        raise DataError("texts must be an iterable of strings, not a single string")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.token_to_id(EOS_TOKEN) != 0 or tok.token_to_id(PAD_TOKEN) != 1:
        raise DataError("tokenizer training did not place the special tokens at ids 0 and 1")
    return _as_text(tok)


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> None:
    """Write ``tok`` as tokenizer.json (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Read a tokenizer.json written by :func:`save_tokenizer`; DataError if missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer file {str(path)!r} not found; run the tokenizer stage first")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on parse errors
        raise DataError(f"tokenizer file {str(path)!r} is not a valid tokenizer.json: {e}") from e
    eos_id(tok)  # fail now, not at shard-writing time, if the specials are missing
    return _as_text(tok)


def eos_id(tok: Tokenizer) -> int:
    """Id of ``<|endoftext|>`` (0 for tokenizers trained here)."""
    i = tok.token_to_id(EOS_TOKEN)
    if i is None:
        raise DataError(f"tokenizer has no {EOS_TOKEN!r} token; train it with train_bpe_tokenizer")
    return i


def encode_texts(tok: Tokenizer, texts: Iterable[str], batch_size: int = 256) -> Iterator[list[int]]:
    """Yield the token ids of each text (no EOS appended; write_shards adds it), batched for speed."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    _as_text(tok)
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield from (e.ids for e in tok.encode_batch(batch, add_special_tokens=False))
            batch = []
    if batch:
        yield from (e.ids for e in tok.encode_batch(batch, add_special_tokens=False))


def to_hf_tokenizer(tok: Tokenizer):
    """Wrap ``tok`` as a ``transformers.PreTrainedTokenizerFast`` with eos/bos/pad set (for HF interop)."""
    from transformers import PreTrainedTokenizerFast  # lazy: transformers is slow to import

    # Copy via JSON so the wrapper never mutates the caller's tokenizer (padding/truncation settings).
    inner = Tokenizer.from_str(tok.to_str())
    return PreTrainedTokenizerFast(
        tokenizer_object=inner, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's canonical JSON, for provenance records."""
    return sha256_bytes(json.dumps(json.loads(tok.to_str()), sort_keys=True).encode("utf-8"))
