"""Paper-scale corpora streamed from the Hugging Face Hub with ``datasets``.

Streaming keeps memory flat for multi-GB corpora. The streamed documents are written once to
``train.jsonl`` / ``validation.jsonl`` and pinned by a manifest of the same shape as the stdlib one,
so every later stage reads both sources through :func:`lmrepro.data.corpus.iter_documents`.
The same code path runs on a local JSON/parquet dataset (``load_dataset("json", data_files=...)``),
which is how it is tested without network.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Iterable, Iterator

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
    sha256_file,
)


def stream_hf_documents(
    path: str,
    name: str | None = None,
    split: str = "train",
    text_field: str = "text",
    data_files: Any = None,
    max_documents: int | None = None,
    min_chars: int = 1,
    revision: str | None = None,
) -> Iterator[tuple[str, str]]:
    """Yield (doc_id, text) from a streamed HF dataset, doc_id = f"{split}:{index}".

    ``index`` is the row's position in the source split (counted before the ``min_chars`` filter),
    so ids stay stable when the filter changes. At most ``max_documents`` documents are yielded.
    A missing ``text_field`` raises DataError listing the available columns. ``revision``: the Hub commit
    to read (:func:`lmrepro.data.revisions.resolve_revision`), None for local data.
    """
    _check_positive_int("max_documents", max_documents)
    if isinstance(min_chars, bool) or not isinstance(min_chars, int) or min_chars < 0:
        raise DataError(f"min_chars must be a non-negative integer, got {min_chars!r}")
    if not isinstance(text_field, str) or not text_field:
        raise DataError(f"text_field must be a non-empty column name, got {text_field!r}")
    return _stream(path, name, split, text_field, data_files, max_documents, min_chars, revision)


def _stream(path, name, split, text_field, data_files, max_documents, min_chars, revision) -> Iterator[tuple[str, str]]:
    import datasets  # lazy: importing datasets is slow and only the paper profile needs it

    ds = datasets.load_dataset(path, name, split=split, data_files=data_files, streaming=True, revision=revision)
    # Check declared features first so a wrong column fails before any row is downloaded.
    features = getattr(ds, "features", None)
    if features is not None and text_field not in features:
        raise DataError(f"dataset {path!r} has no column {text_field!r}; available columns: {sorted(features)}")
    yielded = 0
    for index, row in enumerate(ds):
        if text_field not in row:
            raise DataError(f"dataset {path!r} has no column {text_field!r}; available columns: {sorted(row)}")
        text = row[text_field]
        if not isinstance(text, str):
            raise DataError(f"dataset {path!r} column {text_field!r} row {index} is {type(text).__name__}, not str")
        if len(text) < min_chars:
            continue
        yield f"{split}:{index}", text
        yielded += 1
        if max_documents is not None and yielded >= max_documents:
            return  # stop before pulling another row from the stream


def write_hf_corpus(
    documents: Iterable[tuple[str, str]],
    out_dir: str | os.PathLike,
    val_fraction: float,
    seed: int,
    meta: dict,
) -> dict:
    """Write ``out_dir/{train,validation}.jsonl`` ({"id", "text"} per line) and return their manifest.

    The manifest has source="hf", root=out_dir, files={split: {file, sha256, bytes}},
    documents=[{id, sha256, bytes, split}] in file order, num_documents/num_bytes per split, and
    ``meta`` (e.g. dataset path/name/revision) recorded verbatim. Raises DataError on duplicate ids
    or if a split ends up empty.
    """
    _check_val_fraction(val_fraction)
    _check_seed(seed)
    try:
        json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise DataError(f"meta must be JSON-serializable (it is stored in the manifest): {e}") from e
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    records: list[dict] = []
    handles = {s: open(out / f"{s}.jsonl", "w", encoding="utf-8", newline="\n") for s in SPLITS}
    try:
        for doc_id, text in documents:
            if not isinstance(doc_id, str) or not isinstance(text, str):
                raise DataError(f"documents must be (str id, str text) pairs, "
                                f"got ({type(doc_id).__name__}, {type(text).__name__})")
            if doc_id in seen:
                raise DataError(f"duplicate document id {doc_id!r}; ids must be unique within a corpus")
            seen.add(doc_id)
            split = assign_split(doc_id, val_fraction, seed)
            data = text.encode("utf-8")
            # ensure_ascii=False keeps the file readable; JSON escapes newlines so one line = one document.
            handles[split].write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
            records.append({"id": doc_id, "sha256": sha256_bytes(data), "bytes": len(data), "split": split})
    finally:
        for h in handles.values():
            h.close()
    num_documents, num_bytes = _split_counts(records)
    _require_both_splits(num_documents, val_fraction)
    files = {
        s: {"file": f"{s}.jsonl", "sha256": sha256_file(out / f"{s}.jsonl"),
            "bytes": (out / f"{s}.jsonl").stat().st_size}
        for s in SPLITS
    }
    return {
        "source": "hf",
        "root": str(out),
        "python_version": platform.python_version(),
        "val_fraction": val_fraction,
        "seed": seed,
        "documents": records,
        "num_documents": num_documents,
        "num_bytes": num_bytes,
        "files": files,
        "meta": meta,
    }
