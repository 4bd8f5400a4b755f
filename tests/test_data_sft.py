"""lmrepro.data.sft: texts and (prompt, target) examples as fine-tuning tensors, for a project tokenizer."""

from __future__ import annotations

import torch


def test_encoded_reasoning_supervises_only_the_response():
    from lmrepro.data import train_bpe_tokenizer
    from lmrepro.data.reasoning import IGNORE_INDEX, encode_sft, make_reasoning_split
    from lmrepro.data.sft import encode_examples

    train, _ = make_reasoning_split(6, 0, seed=0, steps=(1,), max_operand=9)
    tok = train_bpe_tokenizer([e.prompt + e.target for e in train] * 5, vocab_size=300)
    ours = encode_examples(train, tok, 64)
    reference = encode_sft(train, tok, 64)  # the project tokenizer's own encoder
    for key in ("input_ids", "labels", "lengths"):
        torch.testing.assert_close(ours[key], reference[key])
    assert (ours["labels"][:, 0] == IGNORE_INDEX).all()


def test_windows_tile_the_stream_with_eos():
    from lmrepro.data import train_bpe_tokenizer
    from lmrepro.data.sft import windows_from_texts
    from lmrepro.data.tokenizer import eos_id

    texts = ["alpha beta gamma " * 5, "delta epsilon " * 7]
    tok = train_bpe_tokenizer(texts * 5, vocab_size=300)
    w = windows_from_texts(tok, texts, seq_len=8)
    assert w.shape[1] == 9 and torch.equal(w[1:, 0], w[:-1, -1])  # each window starts where the last ended
    assert (w == eos_id(tok)).any()
    assert windows_from_texts(tok, texts, seq_len=8, max_windows=2).shape[0] == 2


def test_lm_tensors_and_interleaved_halves():
    from lmrepro.data.sft import interleaved_halves, lm_tensors

    windows = torch.arange(30).reshape(5, 6)
    data = lm_tensors(windows)
    assert torch.equal(data["labels"], windows) and data["labels"].data_ptr() != windows.data_ptr()
    select, report = interleaved_halves(data)
    assert torch.equal(select["input_ids"], windows[[0, 2, 4]]) and torch.equal(report["labels"], windows[[1, 3]])
