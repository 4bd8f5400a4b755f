"""Synthetic reasoning SFT task (arithmetic with a scratchpad) and the package-docs domain corpus.

References are independent of the code under test: Python's own ``eval`` for the expressions, the
tokenizer called directly for the encodings, and the stdlib files read from disk for disjointness.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from lmrepro.data import DataError, build_stdlib_manifest, list_stdlib_files, stdlib_root, train_bpe_tokenizer
from lmrepro.data.domains import (
    build_domain_corpus,
    is_editable_install,
    domain_windows,
    iter_domain_documents,
    metadata_body,
    site_packages_root,
)
from lmrepro.data.corpus import sha256_bytes
from lmrepro.data.reasoning import (
    IGNORE_INDEX,
    Example,
    encode_sft,
    exact_match,
    make_reasoning_split,
)

STEP_RE = re.compile(r"^(\d+)([+\-*])(\d+)=(\d+)$")


@pytest.fixture(scope="module")
def tokenizer():
    train, _ = make_reasoning_split(200, 0, seed=123)
    return train_bpe_tokenizer([e.prompt + e.target for e in train], vocab_size=320)


# -- problems -------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps, max_operand, max_multiplier", [((2, 3), 20, 9), ((1,), 15, 3), ((4, 5), 99, 12)])
def test_problems_are_correct_and_respect_knobs(steps, max_operand, max_multiplier):
    train, val = make_reasoning_split(150, 50, seed=7, steps=steps, max_operand=max_operand,
                                      max_multiplier=max_multiplier)
    for ex in train + val:
        expr = re.fullmatch(r"Q: (.+)=\?\nA:", ex.prompt).group(1)
        assert set(expr) <= set("0123456789+-*()")
        assert eval(expr) == int(ex.answer)  # Python's precedence agrees with the scratchpad order
        pad, final = ex.target.split(" #### ")
        assert ex.target.startswith(" ") and pad.endswith(".") and final == ex.answer
        lines = pad[1:-1].split("; ")
        assert len(lines) in steps
        previous = None
        for line in lines:
            a, op, b, c = STEP_RE.match(line).groups()
            a, b, c = int(a), int(b), int(c)
            assert c == {"+": a + b, "-": a - b, "*": a * b}[op] and c >= 0
            assert (2 <= b <= max_multiplier) if op == "*" else (1 <= b <= max_operand)
            assert previous is None or a == previous  # each step continues from the last result
            previous = c
        assert previous == int(ex.answer)


def test_split_is_deterministic_and_seeded():
    a = make_reasoning_split(40, 10, seed=3)
    assert a == make_reasoning_split(40, 10, seed=3)
    assert a != make_reasoning_split(40, 10, seed=4)


def test_splits_are_disjoint_and_validation_is_fixed():
    train, val = make_reasoning_split(300, 100, seed=0)
    prompts = [e.prompt for e in train + val]
    assert len(set(prompts)) == len(prompts) == 400
    # More training data never changes (or leaks into) the validation split.
    train2, val2 = make_reasoning_split(600, 100, seed=0)
    assert val2 == val and train2[:300] == train
    assert not {e.prompt for e in train2} & {e.prompt for e in val}


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_train=-1), "n_train"),
    (dict(steps=()), "steps"),
    (dict(steps=(0, 2)), "steps"),
    (dict(max_operand=0), "max_operand"),
    (dict(max_multiplier=1), "max_multiplier"),
    (dict(ops=("/",)), "ops"),
    (dict(seed="a"), "seed"),
    # 1 step, operands 1..2, * by 2 only: far fewer than 100 distinct problems.
    (dict(n_train=100, steps=1, max_operand=2, max_multiplier=2), "max_operand"),
])
def test_bad_arguments_fail_early(kwargs, match):
    args = dict(n_train=10, n_val=5, seed=0) | kwargs
    with pytest.raises(DataError, match=match):
        make_reasoning_split(**args)


# -- exact match ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, answer, expected", [
    (" 17+5=22; 22*3=66; 66-4=62. #### 62", "62", True),
    (" 17+5=22; 22*3=66; 66-4=62. #### 61", "62", False),
    ("#### 62", "62", True),
    ("####62", "62", True),
    ("#### 62\nQ: 1+1=?", "62", True),       # text after the answer is ignored
    ("#### 620", "62", False),               # whole number, not a prefix
    ("#### 062", "62", True),                # compared as integers
    ("#### -3", "-3", True),
    (" 62", "62", False),                    # no mark: a miss even if the number appears
    ("#### ", "62", False),
    ("", "62", False),
    ("#### 62 #### 5", "62", True),          # the first marked answer counts
    ("#### 5 #### 62", "62", False),
    ("#### abc", "62", False),
])
def test_exact_match_table(text, answer, expected):
    assert exact_match(text, answer) is expected


# -- encoding ---------------------------------------------------------------------------------------

def test_encode_sft_masks_prompt_and_padding(tokenizer):
    _, val = make_reasoning_split(0, 12, seed=5, steps=(1, 2, 3))
    batch = encode_sft(val, tokenizer, max_len=96)
    ids, labels, lengths = batch["input_ids"], batch["labels"], batch["lengths"]
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
    pad = tokenizer.token_to_id("<|pad|>")
    eos = tokenizer.token_to_id("<|endoftext|>")
    for i, ex in enumerate(val):
        p = tokenizer.encode(ex.prompt).ids
        t = tokenizer.encode(ex.target).ids + [eos]
        n = len(p) + len(t)
        assert lengths[i] == n
        assert ids[i, :n].tolist() == p + t
        assert (ids[i, n:] == pad).all()
        assert (labels[i, :len(p)] == IGNORE_INDEX).all() and (labels[i, n:] == IGNORE_INDEX).all()
        assert labels[i, len(p):n].tolist() == t  # aligned with the inputs, not shifted
        assert tokenizer.decode(ids[i, len(p):n - 1].tolist()) == ex.target
    assert ids.shape[1] == int(lengths.max())  # padded to the longest row only


def test_encode_sft_rejects_too_long(tokenizer):
    ex = Example("Q: 1+2=?\nA:", " 1+2=3. #### 3", "3")
    with pytest.raises(DataError, match="max_len=4"):
        encode_sft([ex], tokenizer, max_len=4)
    with pytest.raises(DataError, match="max_len"):
        encode_sft([ex], tokenizer, max_len=1)


# -- domain-shift corpus ----------------------------------------------------------------------------

def test_domain_corpus_is_deterministic_and_split():
    a = build_domain_corpus(max_documents=30, seed=1, val_fraction=0.2)
    assert a == build_domain_corpus(max_documents=30, seed=1, val_fraction=0.2)
    assert a["source"] == "package-docs" and sum(a["num_documents"].values()) == 30
    ids = [d["id"] for d in a["documents"]]
    assert ids == sorted(ids) and len(set(ids)) == 30
    # The subset must not select by the same hash as the split (that put the whole subset in validation).
    assert 1 <= a["num_documents"]["validation"] <= 15
    other = build_domain_corpus(max_documents=30, seed=2, val_fraction=0.2)
    assert {d["id"] for d in other["documents"]} != set(ids)
    for d in a["documents"]:
        assert sha256_bytes((site_packages_root() / d["id"]).read_bytes()) == d["sha256"]


def test_domain_corpus_is_disjoint_from_stdlib_training_text():
    manifest = build_domain_corpus(max_documents=40, seed=0)
    train_texts = {text for _, text in iter_domain_documents(manifest, "train")}
    val_texts = {text for _, text in iter_domain_documents(manifest, "validation")}
    assert train_texts and val_texts and not train_texts & val_texts
    assert all(len(t) >= 500 and not t.startswith("Metadata-Version") for t in train_texts | val_texts)
    # Independent of list_stdlib_files' own exclusions: every stdlib *.py file read straight from disk.
    root = stdlib_root()
    stdlib_hashes = {sha256_bytes(p.read_bytes()) for p in root.rglob("*.py")
                     if "site-packages" not in p.parts and p.is_file()}
    domain_hashes = {sha256_bytes(t.encode()) for t in train_texts | val_texts}
    assert not domain_hashes & stdlib_hashes
    assert not {d["sha256"] for d in manifest["documents"]} & stdlib_hashes
    # And no domain file is a document of the stdlib pretraining manifest.
    files = list_stdlib_files(root, max_documents=50)
    pretrain = build_stdlib_manifest(root, files, val_fraction=0.1, seed=0)
    pretrain_paths = {(root / d["id"]).resolve() for d in pretrain["documents"]}
    assert not pretrain_paths & {(site_packages_root() / d["id"]).resolve() for d in manifest["documents"]}


def test_domain_corpus_skips_editable_installs(tmp_path):
    """An editable install's METADATA is a working copy's README (this project's holds its own results)."""
    body = "Metadata-Version: 2.1\nName: {}\n\n" + "Prose about a package. " * 40
    for name, direct_url in (("released", None), ("checkout", {"url": "file:///src", "dir_info": {"editable": True}}),
                             ("local", {"url": "file:///src", "dir_info": {}}), ("other", None)):
        dist = tmp_path / f"{name}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(body.format(name) + name)
        if direct_url is not None:
            (dist / "direct_url.json").write_text(json.dumps(direct_url))
    manifest = build_domain_corpus(seed=0, val_fraction=0.5, root=tmp_path)
    assert {d["id"].split("-")[0] for d in manifest["documents"]} == {"released", "local", "other"}
    ours = [p for p in site_packages_root().glob("lmrepro-*.dist-info") if is_editable_install(p)]
    if ours:  # `make setup` installs this project in editable mode
        assert not any(d["id"].startswith("lmrepro-") for d in build_domain_corpus(seed=0)["documents"])


def test_domain_windows_tile_the_token_stream(tokenizer, tmp_path):
    # A copy of a few METADATA files in a temp root: also checks that changed files are detected.
    src = build_domain_corpus(max_documents=6, seed=0, val_fraction=0.5)
    for d in src["documents"]:
        (tmp_path / d["id"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / d["id"]).write_bytes((site_packages_root() / d["id"]).read_bytes())
    manifest = build_domain_corpus(seed=0, val_fraction=0.5, root=tmp_path)
    assert [d["id"] for d in manifest["documents"]] == [d["id"] for d in src["documents"]]
    seq, eos = 33, tokenizer.token_to_id("<|endoftext|>")
    windows = domain_windows(tokenizer, manifest, "train", seq)
    stream = []
    for d in manifest["documents"]:
        if d["split"] == "train":
            stream += tokenizer.encode(metadata_body((tmp_path / d["id"]).read_bytes())).ids + [eos]
    n = (len(stream) - 1) // seq
    assert windows.shape == (n, seq + 1) and windows.dtype == torch.long
    for w in (0, n // 2, n - 1):
        assert windows[w].tolist() == stream[w * seq: w * seq + seq + 1]
    assert torch.equal(domain_windows(tokenizer, manifest, "train", seq, max_windows=3), windows[:3])
    changed = manifest["documents"][0]["id"]
    (tmp_path / changed).write_bytes((tmp_path / changed).read_bytes() + b"\nedited\n")
    with pytest.raises(DataError, match="sha256"):
        domain_windows(tokenizer, manifest, manifest["documents"][0]["split"], seq)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_documents=0), "max_documents"),
    (dict(val_fraction=1.0), "val_fraction"),
    (dict(min_chars=0), "min_chars"),
    (dict(root="/nonexistent/folder"), "does not exist"),
])
def test_domain_bad_arguments(kwargs, match):
    with pytest.raises(DataError, match=match):
        build_domain_corpus(**kwargs)


def test_domain_windows_bad_arguments(tokenizer):
    manifest = build_domain_corpus(max_documents=10, seed=0, val_fraction=0.3)
    with pytest.raises(DataError, match="split"):
        domain_windows(tokenizer, manifest, "test", 16)
    with pytest.raises(DataError, match="seq_len"):
        domain_windows(tokenizer, manifest, "train", 0)
    with pytest.raises(DataError, match="fewer than one window"):
        domain_windows(tokenizer, manifest, "validation", 10**8)
    with pytest.raises(DataError, match="package-docs"):
        domain_windows(tokenizer, dict(manifest, source="stdlib"), "train", 16)
