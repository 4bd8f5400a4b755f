"""HF streaming source on a local dataset fixture (no network) and its manifest round trip."""

import json
import os

import pytest

# Must be set before `datasets` is imported anywhere in this process: no test may touch the network.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

from lmrepro.data import (  # noqa: E402
    DataError,
    assign_split,
    iter_documents,
    load_manifest,
    stream_hf_documents,
    write_hf_corpus,
    write_manifest,
)

ROWS = [
    {"content": "def f(x):\n    return x + 1\n", "lang": "py"},
    {"content": "", "lang": "py"},  # filtered by min_chars
    {"content": "naïve café — 日本語 🐍\n", "lang": "txt"},
    {"content": 'print("<|endoftext|>")\n', "lang": "py"},
] + [{"content": f"x{i} = {i}\n" * (i + 1), "lang": "py"} for i in range(16)]


@pytest.fixture
def jsonl(tmp_path, monkeypatch):
    # Keep any cache the datasets library writes inside the test's temp dir.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    path = tmp_path / "fixture.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    return str(path)


def stream(jsonl, **kw):
    return list(stream_hf_documents("json", data_files=jsonl, text_field="content", **kw))


def test_stream_ids_filter_and_limit(jsonl):
    docs = stream(jsonl)
    assert [d[0] for d in docs[:3]] == ["train:0", "train:2", "train:3"]  # ids keep the source row index
    assert [t for _, t in docs] == [r["content"] for r in ROWS if r["content"]]
    assert stream(jsonl, max_documents=3) == docs[:3]
    assert stream(jsonl, min_chars=0)[1] == ("train:1", "")


def test_missing_text_field_lists_columns(jsonl):
    with pytest.raises(DataError) as e:
        list(stream_hf_documents("json", data_files=jsonl, text_field="text"))
    assert "'text'" in str(e.value) and "content" in str(e.value) and "lang" in str(e.value)


def test_bad_arguments_fail_early():
    with pytest.raises(DataError, match="max_documents"):
        stream_hf_documents("json", max_documents=0)
    with pytest.raises(DataError, match="min_chars"):
        stream_hf_documents("json", min_chars=-1)


def test_write_corpus_manifest_roundtrip(jsonl, tmp_path):
    docs = stream(jsonl)
    meta = {"path": "json", "data_files": jsonl, "text_field": "content"}
    m = write_hf_corpus(iter(docs), tmp_path / "corpus", 0.3, seed=1, meta=meta)
    assert m["source"] == "hf" and m["meta"] == meta
    assert m["num_documents"]["train"] > 0 and m["num_documents"]["validation"] > 0
    path = tmp_path / "corpus" / "manifest.json"
    write_manifest(m, path)
    loaded = load_manifest(path)
    got = {s: list(iter_documents(loaded, s)) for s in ("train", "validation")}
    for split, items in got.items():
        assert items == [d for d in docs if assign_split(d[0], 0.3, 1) == split]
    # Deterministic: a second write gives byte-identical files.
    m2 = write_hf_corpus(iter(docs), tmp_path / "corpus2", 0.3, seed=1, meta=meta)
    assert m2["files"] == m["files"] and m2["documents"] == m["documents"]


def test_parquet_source(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": ["alpha\n", "beta\n", "gamma\n"]}), path)
    docs = list(stream_hf_documents("parquet", data_files=str(path)))
    assert docs == [("train:0", "alpha\n"), ("train:1", "beta\n"), ("train:2", "gamma\n")]


def test_corrupted_jsonl_is_reported(jsonl, tmp_path):
    m = write_hf_corpus(stream(jsonl), tmp_path / "c", 0.3, seed=1, meta={})
    f = tmp_path / "c" / "train.jsonl"
    f.write_text(f.read_text(encoding="utf-8").replace("x1 = 1", "x1 = 9"), encoding="utf-8")
    with pytest.raises(DataError) as e:
        list(iter_documents(m, "train"))
    assert "train.jsonl" in str(e.value) and m["files"]["train"]["sha256"] in str(e.value)


def test_write_corpus_errors(tmp_path):
    with pytest.raises(DataError, match="duplicate"):
        write_hf_corpus([("a", "x"), ("a", "y")], tmp_path / "d", 0.5, seed=0, meta={})
    with pytest.raises(DataError, match="JSON-serializable"):
        write_hf_corpus([("a", "x")], tmp_path / "d", 0.5, seed=0, meta={"f": object()})
    with pytest.raises(DataError, match="empty"):
        write_hf_corpus([("a", "x")], tmp_path / "d", 0.5, seed=0, meta={})


# ---- revisions: which commit of a Hub dataset a stream reads

def test_resolve_revision_local_commit_and_offline():
    from lmrepro.data.revisions import resolve_revision

    commit = "0123456789abcdef0123456789abcdef01234567"
    assert resolve_revision("json", None, "k") is None  # local data has no revision
    assert resolve_revision("HuggingFaceFW/fineweb-edu", commit, "k") == commit  # pinned: no network needed
    with pytest.raises(DataError, match="k is 'main' but 'json' is local data"):
        resolve_revision("json", "main", "k")
    with pytest.raises(DataError, match="must be a commit id"):
        resolve_revision("org/name", "", "k")
    # Not a commit id: it must be looked up, which this process cannot (HF_HUB_OFFLINE): the error names the
    # setting that pins it.
    with pytest.raises(DataError, match=r"fineweb-edu.*data\.hf\.revision to a 40-character commit id"):
        resolve_revision("HuggingFaceFW/fineweb-edu", "main", "data.hf.revision")


def test_build_corpus_records_revision_and_keeps_data_on_failure(jsonl, tmp_path):
    from lmrepro.config import DataConfig, HFSourceConfig
    from lmrepro.data import prepare
    from lmrepro.paths import Paths

    paths = Paths(tmp_path / "project")
    local = DataConfig(source="hf", val_fraction=0.3, hf=HFSourceConfig(path="json", data_files=jsonl,
                                                                         text_field="content"))
    manifest = prepare.build_corpus(local, paths)
    assert manifest["meta"]["revision"] is None and manifest["num_documents"]["train"] > 0
    before = {p.name: p.read_bytes() for p in paths.corpus.iterdir()}
    hub = DataConfig(source="hf", val_fraction=0.3, hf=HFSourceConfig(path="HuggingFaceFW/fineweb-edu"))
    with pytest.raises(DataError, match="data.hf.revision"):
        prepare.build_corpus(hub, paths)
    # The revision is resolved before anything is deleted: the corpus on disk is untouched.
    assert {p.name: p.read_bytes() for p in paths.corpus.iterdir()} == before
