"""Text corpora recorded by manifest: the Python standard library (laptop) and HF corpora (paper).

The laptop corpus is the source of the running interpreter's standard library: real code with
long-range dependencies that needs no download. A corpus is pinned by a *manifest*: every document's
id, sha256, size and split. Later stages read documents only through :func:`iter_documents`, which
re-checks the hashes, so a changed file can never silently change the training data.

Splits are assigned per document by hashing ``f"{seed}:{doc_id}"``: a document's split depends on
nothing else (not on file order, nor on which other files exist), so adding files never moves an
existing document between train and validation.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sysconfig
from pathlib import Path
from typing import Any, Iterator

SPLITS = ("train", "validation")
SOURCES = ("stdlib", "hf")
# Folders below the stdlib root that hold third-party or generated code, not the standard library.
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


class DataError(ValueError):
    """Bad data input or a data artifact that does not match its record."""


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large shards never sit in memory at once."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def stdlib_root() -> Path:
    """Directory of the running interpreter's standard library (sysconfig's "stdlib" path)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _check_positive_int(name: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")


def _valid_utf8(path: Path) -> bool:
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def list_stdlib_files(
    root: str | os.PathLike,
    max_documents: int | None = None,
    max_bytes_per_document: int | None = None,
) -> list[str]:
    """Relative POSIX paths of the standard library's ``*.py`` files, sorted.

    Excludes site-packages, dist-packages and __pycache__ folders; skips empty files (they would add
    only an EOS token), files larger than ``max_bytes_per_document`` and files that are not valid UTF-8
    (a few test fixtures are deliberately mis-encoded). With ``max_documents`` the subset is the first N
    valid files in order of sha256(path): deterministic, yet spread over the whole tree rather than
    the alphabetically first folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"corpus root {str(root)!r} does not exist or is not a directory")
    _check_positive_int("max_documents", max_documents)
    _check_positive_int("max_bytes_per_document", max_bytes_per_document)

    candidates: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune in place so os.walk never descends into excluded folders.
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS]
        rel_dir = Path(dirpath).relative_to(root)
        candidates.extend((rel_dir / f).as_posix() for f in filenames if f.endswith(".py"))

    if max_documents is not None:
        # Visit in hash order and stop early: no need to read the whole tree for a small subset.
        candidates.sort(key=lambda p: sha256_bytes(p.encode("utf-8")))
    else:
        candidates.sort()

    chosen: list[str] = []
    for rel in candidates:
        path = root / rel
        if not path.is_file():
            continue
        size = path.stat().st_size
        if size == 0 or (max_bytes_per_document is not None and size > max_bytes_per_document):
            continue
        if not _valid_utf8(path):
            continue
        chosen.append(rel)
        if max_documents is not None and len(chosen) == max_documents:
            break
    if not chosen:
        raise DataError(f"no usable *.py files under {str(root)!r} (max_bytes_per_document={max_bytes_per_document})")
    return sorted(chosen)


def _check_val_fraction(val_fraction: Any) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an integer, got {seed!r}")


def assign_split(doc_id: str, val_fraction: float, seed: int) -> str:
    """"train" or "validation" for one document, from sha256(f"{seed}:{doc_id}") alone."""
    _check_val_fraction(val_fraction)
    _check_seed(seed)
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    return "validation" if u < val_fraction else "train"


def _split_counts(documents: list[dict]) -> tuple[dict, dict]:
    num_documents = {s: 0 for s in SPLITS}
    num_bytes = {s: 0 for s in SPLITS}
    for d in documents:
        num_documents[d["split"]] += 1
        num_bytes[d["split"]] += d["bytes"]
    return num_documents, num_bytes


def _require_both_splits(num_documents: dict, val_fraction: float) -> None:
    empty = [s for s in SPLITS if num_documents[s] == 0]
    if empty:
        raise DataError(
            f"split {empty[0]!r} is empty ({num_documents['train']} train / {num_documents['validation']} "
            f"validation documents with val_fraction={val_fraction}); use more documents (raise "
            "max_documents) or change val_fraction"
        )


def build_stdlib_manifest(root: str | os.PathLike, files: list[str], val_fraction: float, seed: int) -> dict:
    """Manifest of ``files`` (relative POSIX paths under ``root``): per-document sha256, size and split.

    Returns a dict with keys source="stdlib", root, python_version, val_fraction, seed,
    documents=[{id, sha256, bytes, split}] (in the order of ``files``), num_documents and
    num_bytes (per split). Raises DataError if either split would be empty.
    """
    _check_val_fraction(val_fraction)
    _check_seed(seed)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"corpus root {str(root)!r} does not exist or is not a directory")
    if not files:
        raise DataError("files is empty: list_stdlib_files found nothing to put in the manifest")
    if len(set(files)) != len(files):
        raise DataError("files contains duplicate paths; each document id must be unique")
    documents = []
    for rel in files:
        path = root / rel
        if Path(rel).is_absolute() or not path.is_file():
            raise DataError(f"corpus file {rel!r} is not a file relative to root {str(root)!r}")
        data = path.read_bytes()
        documents.append(
            {"id": rel, "sha256": sha256_bytes(data), "bytes": len(data),
             "split": assign_split(rel, val_fraction, seed)}
        )
    num_documents, num_bytes = _split_counts(documents)
    _require_both_splits(num_documents, val_fraction)
    return {
        "source": "stdlib",
        "root": str(root),
        "python_version": platform.python_version(),
        "val_fraction": val_fraction,
        "seed": seed,
        "documents": documents,
        "num_documents": num_documents,
        "num_bytes": num_bytes,
    }


def write_manifest(manifest: dict, path: str | os.PathLike) -> None:
    """Write ``manifest`` as JSON with sorted keys (byte-identical for identical manifests)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written manifest


def load_manifest(path: str | os.PathLike) -> dict:
    """Read a manifest written by :func:`write_manifest`; DataError if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {str(path)!r} not found; run the corpus stage first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"manifest {str(path)!r} is not valid JSON: {e}") from e
    missing = [k for k in ("source", "root", "documents") if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise DataError(f"manifest {str(path)!r} lacks required keys {missing}")
    if manifest["source"] not in SOURCES:
        raise DataError(f"manifest {str(path)!r} has source {manifest['source']!r}; allowed: {list(SOURCES)}")
    return manifest


def _mismatch(what: str, expected: str, actual: str) -> DataError:
    return DataError(
        f"{what} changed since the manifest was written: expected sha256 {expected}, got {actual}; "
        "rerun the corpus stage to rebuild the manifest"
    )


def _iter_stdlib(manifest: dict, root: Path, docs: list[dict], verify: bool) -> Iterator[tuple[str, str]]:
    for d in docs:
        path = root / d["id"]
        if not path.is_file():
            raise DataError(
                f"corpus file {str(path)!r} is missing (expected sha256 {d['sha256']}); "
                "rerun the corpus stage to rebuild the manifest"
            )
        data = path.read_bytes()
        if verify and (actual := sha256_bytes(data)) != d["sha256"]:
            raise _mismatch(f"corpus file {str(path)!r}", d["sha256"], actual)
        yield d["id"], data.decode("utf-8")


def _iter_hf(manifest: dict, root: Path, split: str, docs: list[dict], verify: bool) -> Iterator[tuple[str, str]]:
    entry = manifest["files"][split]
    path = root / entry["file"]
    if not path.is_file():
        raise DataError(f"corpus file {str(path)!r} is missing (expected sha256 {entry['sha256']}); "
                        "rerun the corpus stage")
    if verify and (actual := sha256_file(path)) != entry["sha256"]:
        raise _mismatch(f"corpus file {str(path)!r}", entry["sha256"], actual)
    with open(path, encoding="utf-8") as f:
        lines = iter(f)
        for d in docs:
            line = next(lines, None)
            if line is None:
                raise DataError(f"corpus file {str(path)!r} ends before document {d['id']!r} listed in the manifest")
            record = json.loads(line)
            if record["id"] != d["id"]:
                raise DataError(f"corpus file {str(path)!r} has document {record['id']!r} "
                                f"where the manifest lists {d['id']!r}")
            text = record["text"]
            if verify and (actual := sha256_bytes(text.encode("utf-8"))) != d["sha256"]:
                raise _mismatch(f"document {d['id']!r} in {str(path)!r}", d["sha256"], actual)
            yield d["id"], text


def iter_documents(
    manifest: dict, split: str, verify: bool = True, root: str | os.PathLike | None = None
) -> Iterator[tuple[str, str]]:
    """Yield (doc_id, text) for every document of ``split``, in manifest order.

    With ``verify`` each document (stdlib) or split file (hf) is checked against its recorded sha256;
    a missing or changed file raises DataError naming the file and both hashes. ``root`` overrides the
    manifest's root (e.g. a corpus directory moved to another machine).
    """
    if split not in SPLITS:
        raise DataError(f"split must be one of {list(SPLITS)}, got {split!r}")
    source = manifest.get("source")
    if source not in SOURCES:
        raise DataError(f"manifest source must be one of {list(SOURCES)}, got {source!r}")
    root_path = Path(root if root is not None else manifest["root"])
    docs = [d for d in manifest["documents"] if d["split"] == split]
    if source == "stdlib":
        return _iter_stdlib(manifest, root_path, docs, verify)
    if split not in manifest.get("files", {}):
        raise DataError(f"hf manifest lacks files[{split!r}]; rebuild it with write_hf_corpus")
    return _iter_hf(manifest, root_path, split, docs, verify)
