"""LongPPL: truncated scoring against a per-token sliced-context loop, exact thresholds, aggregation
against a loop, the key-token cache file."""

from __future__ import annotations

import math

import pytest
import torch

from lmrepro.eval.longppl import (
    key_token_scores,
    load_key_tokens,
    long_ppl,
    save_key_tokens,
    scaled_truncation,
    select_key_tokens,
)
from lmrepro.models import DecoderLM, LMSpec
from lmrepro.models.hybrid import layers_from_pattern

VOCAB = 53


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: see conftest.one_thread


def make_model(pattern=("full", "full"), seed=0) -> DecoderLM:
    torch.manual_seed(seed)
    spec = LMSpec(vocab_size=VOCAB, hidden_size=32, num_layers=len(pattern), num_heads=2, num_kv_heads=2,
                  intermediate_size=64, max_seq_len=64, layers=layers_from_pattern(list(pattern)), init_std=0.3)
    return DecoderLM(spec).double().eval()


def docs_of(n, t, seed=1):
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logprob_loop(model, doc, p, context_start):
    """log p(doc[p] | doc[context_start:p]) from one forward of exactly that slice."""
    logits = model(doc[None, context_start:p])[0, -1].double()
    return torch.log_softmax(logits, -1)[doc[p]].item()


def reference_context_start(p, t, k, block):
    """The documented rule, written per target: targets p < K see everything; otherwise p lies in block
    number (p-K)//block starting at K, whose shared context starts K tokens before the block's first target."""
    if p < k:
        return 0
    return ((p - k) // block) * block


# (T, K, block): odd lengths, block = 1, block = K, block > K, a short last block, K >= T (nothing truncated).
CASES = [(23, 8, 3), (20, 4, 4), (17, 6, 1), (16, 15, 2), (9, 20, 2), (30, 7, 5), (25, 3, 7)]


@pytest.mark.parametrize("t,k,block", CASES)
@pytest.mark.parametrize("pattern", [("full", "full"), ("swa-4", "full")])
def test_scores_equal_sliced_context_loop(t, k, block, pattern):
    model = make_model(pattern)
    docs = docs_of(3, t)
    got = key_token_scores(model, docs, truncation=k, block=block, batch_size=2)
    assert got["lsd"].shape == got["lcl"].shape == (3, t - 1)
    for d in range(3):
        for p in range(1, t):
            c = reference_context_start(p, t, k, block)
            assert k <= p - c <= k + block - 1 or c == 0  # every truncated target sees between K and K+block-1
            full = logprob_loop(model, docs[d], p, 0)
            trunc = logprob_loop(model, docs[d], p, c)
            assert got["lcl"][d, p - 1].item() == pytest.approx(full, abs=2e-5)
            assert got["lsd"][d, p - 1].item() == pytest.approx(full - trunc, abs=4e-5)


@pytest.mark.parametrize("t,k,block", CASES)
def test_lsd_exactly_zero_without_truncation_and_nonzero_after(t, k, block):
    got = key_token_scores(make_model(), docs_of(2, t), truncation=k, block=block)
    lsd = got["lsd"]
    assert torch.all(lsd[:, :k + block - 1] == 0)  # targets p < K + block (block 0): identical contexts
    if t - 1 > k + block - 1:
        assert torch.all(lsd[:, k + block - 1:].abs() > 0)  # a random model always notices a cut context


def test_batch_size_does_not_change_scores():
    model, docs = make_model(("swa-4", "full")), docs_of(5, 21)
    a = key_token_scores(model, docs, truncation=6, block=2, batch_size=1)
    b = key_token_scores(model, docs, truncation=6, block=2, batch_size=7)
    torch.testing.assert_close(a["lsd"], b["lsd"], atol=1e-5, rtol=0)
    torch.testing.assert_close(a["lcl"], b["lcl"], atol=1e-5, rtol=0)


# (lsd, lcl, key?): both comparisons are strict, NaN is never a key token.
THRESHOLD_TABLE = [
    (2.0, 0.0, False), (2.0 + 1e-6, 0.0, True), (5.0, -2.0, False), (5.0, -2.0 + 1e-6, True),
    (1.9, -0.1, False), (3.0, -3.0, False), (float("nan"), 0.0, False), (3.0, float("nan"), False),
    (float("inf"), -1.0, True), (-4.0, -0.5, False),
]


def test_select_key_tokens_table():
    lsd = torch.tensor([[row[0] for row in THRESHOLD_TABLE]], dtype=torch.float64)
    lcl = torch.tensor([[row[1] for row in THRESHOLD_TABLE]], dtype=torch.float64)
    expected = torch.tensor([[row[2] for row in THRESHOLD_TABLE]])
    assert torch.equal(select_key_tokens(lsd, lcl), expected)
    # Other thresholds are honoured too (the paper's values are only the defaults).
    assert torch.equal(select_key_tokens(lsd, lcl, lsd_threshold=1.5, lcl_threshold=-2.5),
                       torch.tensor([[True, True, True, True, True, False, False, False, True, False]]))


def test_long_ppl_equals_loop_and_is_key_token_weighted():
    model, docs = make_model(seed=3), docs_of(3, 19, seed=4)
    mask = torch.zeros(3, 18, dtype=torch.bool)
    mask[0, [2, 5, 17]] = True
    mask[2, 10] = True  # doc 1 has none: weighting by key tokens, not by documents
    got = long_ppl(model, docs, mask, batch_size=2)
    nlls = [-logprob_loop(model, docs[d], j + 1, 0) for d in range(3) for j in range(18) if mask[d, j]]
    ref = sum(nlls) / len(nlls)
    assert got["n_key_tokens"] == 4 and got["warning"] == ""
    assert got["key_nll_mean"] == pytest.approx(ref, abs=1e-5)
    assert got["longppl"] == pytest.approx(math.exp(ref), rel=1e-5)
    per_doc_mean = (sum(nlls[:3]) / 3 + nlls[3]) / 2  # what document weighting would give instead
    assert abs(per_doc_mean - ref) > 1e-3
    all_nll = [-logprob_loop(model, docs[d], p, 0) for d in range(3) for p in range(1, 19)]
    assert got["ppl_all"] == pytest.approx(math.exp(sum(all_nll) / len(all_nll)), rel=1e-5)
    assert got["n_tokens"] == 54


def test_long_ppl_without_key_tokens_is_nan_with_warning():
    model, docs = make_model(), docs_of(2, 9)
    with pytest.warns(RuntimeWarning, match="no key tokens"):
        got = long_ppl(model, docs, torch.zeros(2, 8, dtype=torch.bool))
    assert math.isnan(got["longppl"]) and math.isnan(got["key_nll_mean"])
    assert got["n_key_tokens"] == 0 and "no key tokens" in got["warning"] and math.isfinite(got["ppl_all"])


def test_end_to_end_key_tokens_then_long_ppl(tmp_path):
    """Evaluator → key tokens → cache → LongPPL of another model, against the loop definition."""
    evaluator, model = make_model(seed=5), make_model(("swa-4", "full"), seed=6)
    docs = docs_of(4, 25, seed=7)
    scores = key_token_scores(evaluator, docs, truncation=6, block=2)
    # Thresholds picked from the data so the test has key tokens whatever the random weights are.
    lsd_t = scores["lsd"].quantile(0.7).item()
    lcl_t = scores["lcl"].quantile(0.2).item()
    mask = save_key_tokens(tmp_path / "key.safetensors", docs, scores["lsd"], scores["lcl"], evaluator_id="tiny@0",
                           truncation=6, block=2, lsd_threshold=lsd_t, lcl_threshold=lcl_t)
    cached = load_key_tokens(tmp_path / "key.safetensors", docs=docs)
    assert torch.equal(cached["key_mask"], mask) and mask.any() and not mask[:, :6].any()
    got = long_ppl(model, cached["docs"], cached["key_mask"])
    nlls = [-logprob_loop(model, docs[d], j + 1, 0) for d in range(4) for j in range(24) if mask[d, j]]
    assert got["longppl"] == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-5)


def test_key_token_file_round_trip_and_checks(tmp_path):
    docs = docs_of(2, 11)
    lsd = torch.linspace(-3, 5, 20).view(2, 10)
    lcl = torch.linspace(-4, 0, 20).view(2, 10)
    path = tmp_path / "sub" / "key_tokens.safetensors"
    mask = save_key_tokens(path, docs, lsd, lcl, evaluator_id="full-S1@step500", truncation=4, block=2,
                           lsd_threshold=2.0, lcl_threshold=-2.0, extra={"tokenizer_sha256": "abc"})
    out = load_key_tokens(path)
    assert torch.equal(out["docs"], docs) and torch.equal(out["lsd"], lsd) and torch.equal(out["lcl"], lcl)
    assert torch.equal(out["key_mask"], mask) and torch.equal(mask, (lsd > 2) & (lcl > -2))
    meta = out["meta"]
    assert (meta["evaluator_id"], meta["truncation"], meta["block"]) == ("full-S1@step500", 4, 2)
    assert (meta["lsd_threshold"], meta["lcl_threshold"], meta["tokenizer_sha256"]) == (2.0, -2.0, "abc")
    with pytest.raises(ValueError, match="differ from the documents"):
        load_key_tokens(path, docs=docs.flip(1))
    with pytest.raises(ValueError, match="reserved"):
        save_key_tokens(path, docs, lsd, lcl, evaluator_id="x", truncation=4, block=2, extra={"block": "3"})
    with pytest.raises(ValueError, match="lsd has shape"):
        save_key_tokens(path, docs, lsd[:, :5], lcl, evaluator_id="x", truncation=4, block=2)
    (tmp_path / "other.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(Exception):
        load_key_tokens(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="dvc repro pipelines/hybrid_attention/dvc.yaml:key-tokens"):
        load_key_tokens(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("kwargs,match", [
    (dict(truncation=0, block=1), "truncation must be an int >= 1"),
    (dict(truncation=4, block=0), "block must be an int >= 1"),
    (dict(truncation=4, block=2, batch_size=0), "batch_size"),
])
def test_key_token_scores_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        key_token_scores(make_model(), docs_of(1, 10), **kwargs)


@pytest.mark.parametrize("docs", [torch.zeros(5, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long),
                                  torch.zeros(2, 5)])
def test_bad_docs_are_rejected(docs):
    with pytest.raises(ValueError, match="docs"):
        key_token_scores(make_model(), docs, truncation=2, block=1)


def test_long_ppl_rejects_mismatched_mask():
    with pytest.raises(ValueError, match="key_mask has shape"):
        long_ppl(make_model(), docs_of(2, 9), torch.zeros(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        long_ppl(make_model(), docs_of(2, 9), torch.zeros(2, 8))


@pytest.mark.parametrize("doc_len,expected", [(32768, (4096, 1024)), (16384, (2048, 512)), (2048, (256, 64)),
                                              (512, (64, 16)), (20, (2, 1))])
def test_scaled_truncation_keeps_paper_ratios(doc_len, expected):
    assert scaled_truncation(doc_len) == expected
