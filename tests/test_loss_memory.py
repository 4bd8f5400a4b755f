"""Memory options that must not change the function trained: the chunked cross-entropy (never the full fp32
logits) and activation checkpointing, against the plain loss and the model's plain forward."""

import pytest
import torch
import torch.nn.functional as F

from lmrepro.models import DecoderLM
from lmrepro.models.loss import summed_cross_entropy

pytestmark = pytest.mark.usefixtures("one_thread")

SPECS = {
    "constant": {},
    "mup": {"mup_base_width": 16},
    "varwidth-learned": {"widths": [24, 32], "expansion": "learned"},
    "tied": {"tie_embeddings": True},
}


def _model(make_spec, name, seed=0):
    torch.manual_seed(seed)
    return DecoderLM(make_spec(**SPECS[name]))


def _batch(vocab, b=3, t=17, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t + 1), generator=g)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", SPECS)
def test_plain_loss_through_forward_is_the_trainers_old_formula_bit_for_bit(make_spec, name):
    model = _model(make_spec, name)
    ids = _batch(model.spec.vocab_size)
    plain = F.cross_entropy(model(ids[:, :-1]).float().flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
    assert torch.equal(model(ids[:, :-1], targets=ids[:, 1:]), plain)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("chunk", [1, 7, 16, 50])  # 51 positions: pieces of 1, uneven, a divisor-free size, 50+1
@pytest.mark.parametrize("weighted", [False, True])
def test_chunked_loss_and_gradients_match_the_full_logits(make_spec, name, chunk, weighted):
    model = _model(make_spec, name)
    ids = _batch(model.spec.vocab_size)
    w = torch.rand(ids[:, 1:].shape, generator=torch.Generator().manual_seed(2)) if weighted else None

    full = model(ids[:, :-1], targets=ids[:, 1:], target_weights=w)
    full.backward()
    ref = _grads(model)
    model.zero_grad(set_to_none=True)
    chunked = model(ids[:, :-1], targets=ids[:, 1:], target_weights=w, loss_chunk=chunk)
    chunked.backward()
    got = _grads(model)

    # Same per-position terms summed in another grouping: float32 rounding (a few 1e-7 of each tensor's scale).
    assert chunked.item() == pytest.approx(full.item(), rel=1e-6)
    assert ref.keys() == got.keys()
    for n in ref:
        assert (got[n] - ref[n]).abs().max() <= 1e-5 * ref[n].abs().max(), n


def test_chunked_loss_never_keeps_full_logits(make_spec):
    """What autograd saves for backward: without chunks, logits of all 128 positions [128, V]; with chunks of 16,
    no tensor with a vocabulary axis has more rows than a chunk or the head's own [hidden, V] weight view."""
    model = _model(make_spec, "constant")
    ids = _batch(model.spec.vocab_size, b=4, t=32)
    vocab, hidden = model.spec.vocab_size, model.spec.hidden_size

    def most_rows_saved(chunk):
        rows = []
        pack = lambda t: rows.append(t.numel() // vocab if t.dim() >= 2 and t.shape[-1] == vocab else 0) or t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(ids[:, :-1], targets=ids[:, 1:], loss_chunk=chunk).backward()
        return max(rows)

    assert most_rows_saved(0) == 4 * 32
    assert most_rows_saved(16) <= max(16, hidden) < 4 * 32


def test_bad_chunk_and_shapes_are_refused(make_spec):
    model = _model(make_spec, "constant")
    ids = _batch(model.spec.vocab_size)
    with pytest.raises(ValueError, match="chunk: positions per piece must be >= 0"):
        model(ids[:, :-1], targets=ids[:, 1:], loss_chunk=-1)
    with pytest.raises(ValueError, match="must match"):
        summed_cross_entropy(model.readout, torch.zeros(2, 5, model.spec.hidden_size), ids[:, 1:])


@pytest.mark.parametrize("name", ["constant", "varwidth-learned"])
def test_activation_checkpointing_gives_the_same_gradients_and_saves_less(make_spec, name):
    model = _model(make_spec, name)
    ids = _batch(model.spec.vocab_size, b=2, t=32)

    def run(on):
        model.zero_grad(set_to_none=True)
        model.activation_checkpointing = on
        count = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: count.append(t.numel()) or t, lambda t: t):
            loss = model(ids[:, :-1], targets=ids[:, 1:])
        loss.backward()
        return loss.detach(), _grads(model), sum(count)

    loss_off, grads_off, saved_off = run(False)
    loss_on, grads_on, saved_on = run(True)
    assert torch.equal(loss_on, loss_off)
    for n in grads_off:  # the same ops recomputed in the same order: identical on CPU
        assert torch.equal(grads_on[n], grads_off[n]), n
    assert saved_on < saved_off / 2
    with torch.no_grad():  # eval and decoding never checkpoint
        model.eval()
        assert torch.equal(model(ids[:, :-1]), model(ids[:, :-1]))


def test_trainer_with_both_options_trains_the_same_run(make_spec, make_train_config, token_dirs, tmp_path):
    """The real Trainer: the same loss curve and weights (to float rounding) with chunked loss and activation
    checkpointing on, and the same fingerprint, so a run resumes across the two settings."""
    from dataclasses import replace

    from lmrepro.train import Trainer, load_model

    train, val = token_dirs
    cfg = make_train_config()
    runs = {}
    for name, c in {"plain": cfg, "memory": replace(cfg, loss_chunk_tokens=20, activation_checkpointing=True)}.items():
        t = Trainer(make_spec(), c, train, tmp_path / name, tmp_path / f"ckpt-{name}", progress=False)
        runs[name] = (t.fingerprint, t.fit().rows, load_model(tmp_path / name / "final"))
    (fp_a, rows_a, model_a), (fp_b, rows_b, model_b) = runs["plain"], runs["memory"]
    assert fp_a == fp_b
    assert [r["loss"] for r in rows_b] == pytest.approx([r["loss"] for r in rows_a], rel=1e-5)
    for (n, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert (a - b).abs().max() <= 1e-4 * a.abs().max(), n
