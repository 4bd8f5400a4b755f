"""The data stage, end to end: corpus manifest → BPE tokenizer → token shards per split.

Called by notebooks/foundation/01_prepare_data.ipynb; each step writes under ``Paths.data``.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

from ..config import DataConfig, TokenizerConfig
from ..paths import Paths
from .corpus import build_stdlib_manifest, iter_documents, list_stdlib_files, stdlib_root, write_manifest
from .hf_source import stream_hf_documents, write_hf_corpus
from .revisions import resolve_revision
from .shards import write_shards
from .tokenizer import encode_texts, eos_id, save_tokenizer, train_bpe_tokenizer

SPLITS = ("train", "validation")


def build_corpus(cfg: DataConfig, paths: Paths) -> dict:
    """Record the corpus in ``data/corpus/manifest.json`` (stdlib: file list + sha256; hf: JSONL copies, with
    the Hub commit they came from in ``meta.revision``)."""
    # Resolved before the old corpus is deleted: an offline or unknown revision must not cost the data we have.
    revision = resolve_revision(cfg.hf.path, cfg.hf.revision, "data.hf.revision") if cfg.source == "hf" else None
    if paths.corpus.exists():
        shutil.rmtree(paths.corpus)
    paths.corpus.mkdir(parents=True)
    if cfg.source == "stdlib":
        root = stdlib_root()
        files = list_stdlib_files(root, cfg.max_documents, cfg.max_bytes_per_document)
        manifest = build_stdlib_manifest(root, files, cfg.val_fraction, cfg.seed)
    else:
        hf = cfg.hf
        docs = stream_hf_documents(hf.path, hf.name, hf.split, hf.text_field, hf.data_files, hf.max_documents,
                                   revision=revision)
        meta = {"path": hf.path, "name": hf.name, "split": hf.split, "text_field": hf.text_field,
                "revision": revision}
        manifest = write_hf_corpus(docs, paths.corpus, cfg.val_fraction, cfg.seed, meta)
    write_manifest(manifest, paths.manifest)
    return manifest


def build_tokenizer(cfg: TokenizerConfig, manifest: dict, paths: Paths):
    """Train byte-level BPE on (at most ``train_max_documents`` of) the train split only."""
    texts = (text for _, text in iter_documents(manifest, "train"))
    if cfg.train_max_documents:
        texts = itertools.islice(texts, cfg.train_max_documents)
    tok = train_bpe_tokenizer(texts, cfg.vocab_size, cfg.min_frequency)
    paths.tokenizer.parent.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tok, paths.tokenizer)
    return tok


def build_shards(tok, manifest: dict, cfg: DataConfig, vocab_size: int, paths: Paths) -> dict[str, dict]:
    """Tokenize each split into ``data/tokens/<split>/`` shards; returns the shard indexes."""
    indexes = {}
    for split in SPLITS:
        out = paths.tokens(split)
        if out.exists():
            shutil.rmtree(out)
        texts = (text for _, text in iter_documents(manifest, split))
        indexes[split] = write_shards(encode_texts(tok, texts), out, eos_id(tok), vocab_size, cfg.shard_tokens)
    return indexes


def summarize(manifest: dict, indexes: dict[str, dict], tok) -> dict:
    """Flat, finite numbers for ``dvc metrics``."""
    docs = manifest["documents"]
    out = {"tokenizer_vocab": tok.get_vocab_size()}
    for split in SPLITS:
        chosen = [d for d in docs if d["split"] == split]
        out[f"{split}_documents"] = len(chosen)
        out[f"{split}_bytes"] = sum(d["bytes"] for d in chosen)
        out[f"{split}_tokens"] = indexes[split]["num_tokens"]
    out["bytes_per_token"] = out["train_bytes"] / max(1, out["train_tokens"])
    return out


def write_json(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path
