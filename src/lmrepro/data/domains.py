"""Held-out-domain LM corpus for the laptop LoRA experiments: package documentation prose.

The laptop base model is pretrained on the standard library's ``*.py`` source. Its fine-tuning
domain must be text it has not seen and that needs no download. We use the long descriptions in
the ``METADATA`` files of the packages installed beside the interpreter (``*.dist-info/METADATA``
under sysconfig's "purelib", i.e. site-packages): each is a project's README — English prose in
Markdown or reStructuredText with install instructions, feature lists, changelogs and occasional
short code samples. That is a real domain shift from code (prose statistics, Markdown syntax,
URLs, version tables) yet shares the byte-level tokenizer's alphabet, so perplexity on it measures
adaptation rather than tokenization failures. It is disjoint from pretraining by construction: the
stdlib corpus lists only ``*.py`` files and skips site-packages, and these documents are non-Python
files under site-packages.

Distributions installed in editable mode (``pip install -e``; PEP 610 ``direct_url.json`` with
``dir_info.editable``) are skipped: their METADATA is a snapshot of a working copy's README, not a
released package. That includes this project itself, whose README holds the results of the very runs
that would train on it, and changes whenever they are refreshed.

Only the description body is used (the text after the header block: the e-mail-style
``Name:``/``Requires-Dist:`` headers are boilerplate). Bodies shorter than ``min_chars`` are
skipped, and identical bodies (one README shipped by two distributions) are kept once, so a text
can never be in both splits.

Like the stdlib corpus, the corpus is pinned by a manifest (per-file sha256 and a split from
:func:`~lmrepro.data.corpus.assign_split`), and :func:`iter_domain_documents` re-checks the hashes:
the installed packages differ between machines, and the manifest records which ones were used.
"""

from __future__ import annotations

import json
import os
import platform
import sysconfig
from pathlib import Path
from typing import Iterator

import torch

from .corpus import (
    SPLITS,
    DataError,
    _check_positive_int,
    _check_seed,
    _check_val_fraction,
    _require_both_splits,
    _split_counts,
    assign_split,
    sha256_bytes,
)
from .tokenizer import encode_texts, eos_id

DOMAIN_SOURCE = "package-docs"


def site_packages_root() -> Path:
    """The running interpreter's site-packages (sysconfig's "purelib" path; the venv's in a venv)."""
    return Path(sysconfig.get_paths()["purelib"])


def metadata_body(data: bytes) -> str:
    """Description body of a METADATA file: the text after the first blank line (headers dropped)."""
    text = data.decode("utf-8").replace("\r\n", "\n")
    _, sep, body = text.partition("\n\n")
    return body.strip() if sep else ""


def is_editable_install(dist_info: Path) -> bool:
    """Whether a ``*.dist-info`` folder belongs to an editable install (PEP 610 direct_url.json)."""
    try:
        direct_url = json.loads((dist_info / "direct_url.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(isinstance(direct_url, dict) and (direct_url.get("dir_info") or {}).get("editable"))


def _usable(path: Path, min_chars: int) -> bytes | None:
    try:
        data = path.read_bytes()
        return data if len(metadata_body(data)) >= min_chars else None
    except (OSError, UnicodeDecodeError):
        return None


def build_domain_corpus(max_documents: int | None = None, seed: int = 0, val_fraction: float = 0.1,
                        root: str | os.PathLike | None = None, min_chars: int = 500) -> dict:
    """Manifest of the package-documentation corpus under ``root`` (default: site-packages).

    With ``max_documents`` the subset is the first N usable files in order of
    sha256(f"subset:{seed}:{id}"): deterministic and spread over all packages. Returns a dict with
    source="package-docs", root, python_version, seed, val_fraction, min_chars,
    documents=[{id, sha256, bytes, split}] (ids are relative paths, sorted), num_documents and
    num_bytes per split. Raises DataError if no file is usable or a split would be empty.
    """
    _check_positive_int("max_documents", max_documents)
    _check_seed(seed)
    _check_val_fraction(val_fraction)
    if isinstance(min_chars, bool) or not isinstance(min_chars, int) or min_chars < 1:
        raise DataError(f"min_chars must be a positive integer, got {min_chars!r}")
    root = Path(root) if root is not None else site_packages_root()
    if not root.is_dir():
        raise DataError(f"domain root {str(root)!r} does not exist or is not a directory")
    candidates = [p.relative_to(root).as_posix() for p in root.glob("*.dist-info/METADATA")
                  if not is_editable_install(p.parent)]
    # A different key from assign_split's: with the same hash the first N would all be validation.
    candidates.sort(key=lambda rel: (sha256_bytes(f"subset:{seed}:{rel}".encode()), rel))
    documents, seen_bodies = [], set()
    for rel in candidates:
        data = _usable(root / rel, min_chars)
        if data is None:
            continue
        body_hash = sha256_bytes(metadata_body(data).encode("utf-8"))
        if body_hash in seen_bodies:
            continue  # the same README under two names would leak across the split
        seen_bodies.add(body_hash)
        documents.append({"id": rel, "sha256": sha256_bytes(data), "bytes": len(data),
                          "split": assign_split(rel, val_fraction, seed)})
        if max_documents is not None and len(documents) == max_documents:
            break
    if not documents:
        raise DataError(f"no */METADATA file under {str(root)!r} has a description of >= {min_chars} characters")
    documents.sort(key=lambda d: d["id"])
    num_documents, num_bytes = _split_counts(documents)
    _require_both_splits(num_documents, val_fraction)
    return {
        "source": DOMAIN_SOURCE,
        "root": str(root),
        "python_version": platform.python_version(),
        "seed": seed,
        "val_fraction": val_fraction,
        "min_chars": min_chars,
        "documents": documents,
        "num_documents": num_documents,
        "num_bytes": num_bytes,
    }


def iter_domain_documents(manifest: dict, split: str, verify: bool = True,
                          root: str | os.PathLike | None = None) -> Iterator[tuple[str, str]]:
    """Yield (doc_id, description body) for ``split`` in manifest order, checking each file's sha256."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if manifest.get("source") != DOMAIN_SOURCE:
        raise DataError(f"manifest source must be {DOMAIN_SOURCE!r} (from build_domain_corpus), "
                        f"got {manifest.get('source')!r}")
    base = Path(root if root is not None else manifest["root"])
    return _iter(base, [d for d in manifest["documents"] if d["split"] == split], verify)


def _iter(base: Path, docs: list[dict], verify: bool) -> Iterator[tuple[str, str]]:
    for d in docs:
        path = base / d["id"]
        if not path.is_file():
            raise DataError(f"domain file {str(path)!r} is missing (expected sha256 {d['sha256']}); "
                            "rebuild the manifest with build_domain_corpus")
        data = path.read_bytes()
        if verify and (actual := sha256_bytes(data)) != d["sha256"]:
            raise DataError(f"domain file {str(path)!r} changed since the manifest was written: expected "
                            f"sha256 {d['sha256']}, got {actual}; rebuild the manifest")
        yield d["id"], metadata_body(data)


def domain_windows(tokenizer, manifest: dict, split: str, seq_len: int,
                   max_windows: int | None = None) -> torch.Tensor:
    """Token windows of ``split``: LongTensor [N, seq_len + 1].

    Documents are encoded, each followed by EOS (as in the pretraining shards), and concatenated in
    manifest order; window w covers tokens [w*seq_len, w*seq_len + seq_len + 1) — the convention of
    :func:`lmrepro.data.eval_windows`, so targets tile the stream without gaps. At most
    ``max_windows`` windows (None: all full windows). Raises DataError if not one window fits.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise DataError(f"seq_len must be an integer >= 1, got {seq_len!r}")
    _check_positive_int("max_windows", max_windows)
    eos = eos_id(tokenizer)
    texts = (text for _, text in iter_domain_documents(manifest, split))
    stream: list[int] = []
    enough = None if max_windows is None else max_windows * seq_len + 1
    for ids in encode_texts(tokenizer, texts, batch_size=16):
        stream.extend(ids)
        stream.append(eos)
        if enough is not None and len(stream) >= enough:
            break  # later documents cannot change the first max_windows windows
    n = max(0, (len(stream) - 1) // seq_len)
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise DataError(f"split {split!r} has {len(stream)} tokens, fewer than one window of seq_len + 1 = "
                        f"{seq_len + 1}; use a shorter seq_len or more documents")
    tokens = torch.tensor(stream[: n * seq_len + 1], dtype=torch.long)
    # unfold gives overlapping views (each window shares its last token with the next window's first);
    # contiguous() copies them into independent rows.
    return tokens.unfold(0, seq_len + 1, seq_len).contiguous()
