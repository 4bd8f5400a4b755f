"""Key-token selection against the LongPPL authors' reference package (``longppl`` 0.3.0, ``find_key_token``):
the same evaluator, text, truncation K and block must select exactly the same tokens."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from longppl.longppl import find_key_token, merge_intervals

from lmrepro.data.tokenizer import to_hf_tokenizer, train_bpe_tokenizer
from lmrepro.eval.longppl import key_token_scores, select_key_tokens
from lmrepro.models import DecoderLM, LMSpec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: see conftest.one_thread

SOURCE = Path(__file__).resolve().parents[1] / "src" / "lmrepro" / "eval"


class HFLike(torch.nn.Module):
    """Our model behind the two things ``find_key_token`` uses: ``.device`` and ``model(ids).logits``."""

    def __init__(self, model: DecoderLM):
        super().__init__()
        self.model = model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.model(input_ids))


@pytest.fixture(scope="module")
def setup():
    texts = [p.read_text() for p in sorted(SOURCE.glob("*.py"))]
    tok = train_bpe_tokenizer(texts, vocab_size=400)
    # ASCII text: every token has its own character span, so token sets and merged spans correspond.
    text = max(texts, key=len)[:1500].encode("ascii", "ignore").decode()
    hf = to_hf_tokenizer(tok)
    enc = hf(text, return_offsets_mapping=True, return_tensors="pt")
    ids, offsets = enc["input_ids"], enc["offset_mapping"][0]
    torch.manual_seed(0)
    spec = LMSpec(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2,
                  intermediate_size=64, max_seq_len=ids.shape[1], init_std=0.3)
    model = DecoderLM(spec).double().eval()
    return SimpleNamespace(text=text, hf=hf, ids=ids, offsets=offsets, model=model)


# (K, block): block < K, block = K, block > K, and a short last block in each (the text is not a multiple).
# Thresholds (LSD > alpha, LCL > beta): the paper's (2, −2) and looser ones so a random evaluator selects many.
@pytest.mark.parametrize("k,block", [(32, 8), (24, 24), (16, 40)])
@pytest.mark.parametrize("alpha,beta", [(2.0, -2.0), (0.5, -7.0), (0.1, -9.0)])
def test_key_tokens_equal_the_reference_package(setup, k, block, alpha, beta):
    want = find_key_token(setup.text, HFLike(setup.model), setup.hf, trunc_len=k, sliding_window=block,
                          alpha=alpha, beta=beta)
    scores = key_token_scores(setup.model, setup.ids, truncation=k, block=block, batch_size=3)
    key = select_key_tokens(scores["lsd"], scores["lcl"], lsd_threshold=alpha, lcl_threshold=beta)[0]
    positions = (torch.nonzero(key).flatten() + 1).tolist()  # score column j is target token j + 1
    got = merge_intervals(setup.offsets[positions])
    assert got.tolist() == want.tolist()
    if alpha < 1:  # the loose thresholds really select tokens, so agreement is not agreement on "none"
        assert len(positions) > 20
