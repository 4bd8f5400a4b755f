"""Byte-level BPE: determinism, exact round trips, specials, save/load and HF interop."""

import pytest

from lmrepro.data import (
    SPECIAL_TOKENS,
    DataError,
    encode_texts,
    eos_id,
    iter_documents,
    build_stdlib_manifest,
    list_stdlib_files,
    load_tokenizer,
    save_tokenizer,
    stdlib_root,
    to_hf_tokenizer,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n\tprint(i)\n",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    sys.exit(main())\n",
] * 8

ODD = [
    "",
    " leading space and trailing  ",
    "naïve café — 日本語 🐍 Ωμέγα\n",
    "crlf line\r\nnext\r\n\x00\x7f\u200b",
    'print("<|endoftext|>")  # a literal special token inside a document\n',
    "<|pad|><|endoftext|>",
    "\t\t  \n\n\n   x",
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(iter(TEXTS), vocab_size=320)


def test_specials_first(tok):
    assert tok.token_to_id(SPECIAL_TOKENS[0]) == 0 == eos_id(tok)
    assert tok.token_to_id(SPECIAL_TOKENS[1]) == 1
    assert 258 < tok.get_vocab_size() <= 320  # merges were learned


def test_deterministic(tok):
    again = train_bpe_tokenizer(list(TEXTS), vocab_size=320)
    assert again.to_str() == tok.to_str()
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)


@pytest.mark.parametrize("text", TEXTS[:4] + ODD)
def test_round_trip_exact_and_no_eos_inside_documents(tok, text):
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert eos_id(tok) not in ids and 1 not in ids


def test_round_trip_real_stdlib(tok):
    root = stdlib_root()
    files = list_stdlib_files(root, max_documents=6, max_bytes_per_document=50_000)
    m = build_stdlib_manifest(root, files, 0.5, seed=1)
    for split in ("train", "validation"):
        for _, text in iter_documents(m, split):
            assert tok.decode(tok.encode(text).ids) == text


def test_encode_texts_matches_encode(tok):
    texts = TEXTS[:4] + ODD
    assert list(encode_texts(tok, iter(texts), batch_size=3)) == [tok.encode(t).ids for t in texts]


def test_save_load(tok, tmp_path):
    path = tmp_path / "sub" / "tokenizer.json"
    save_tokenizer(tok, path)
    loaded = load_tokenizer(path)
    assert loaded.to_str() == tok.to_str()
    for text in ODD:
        assert loaded.encode(text).ids == tok.encode(text).ids


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="not a valid tokenizer"):
        load_tokenizer(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vocab_size": 257}, "vocab_size must be an integer >= 258"),
        ({"vocab_size": 300.0}, "vocab_size"),
        ({"vocab_size": 300, "min_frequency": 0}, "min_frequency"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(DataError, match=match):
        train_bpe_tokenizer(TEXTS, **kwargs)


def test_single_string_rejected():
    with pytest.raises(DataError, match="iterable of strings"):
        train_bpe_tokenizer("def f(): pass", vocab_size=300)


def test_hf_wrapper(tok):
    hf = to_hf_tokenizer(tok)
    assert hf.eos_token_id == 0 and hf.pad_token_id == 1
    text = TEXTS[1] + "naïve 🐍"
    ids = hf(text, add_special_tokens=False)["input_ids"]
    assert ids == tok.encode(text).ids
    assert hf.decode(ids) == text
