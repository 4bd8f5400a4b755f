"""The one loss evaluator (lmrepro.eval.loss): per-window losses and the supervised fine-tuning loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmrepro.eval.loss import evaluate_loss, evaluate_sft_loss, token_nll

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: see conftest.one_thread


@pytest.fixture(scope="module")
def model():
    from conftest import tiny_spec

    from lmrepro.models import DecoderLM

    torch.manual_seed(0)
    return DecoderLM(tiny_spec())


def test_window_losses_mean_is_the_loss(model):
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, model.spec.vocab_size, (b, 17), generator=g) for b in (3, 2, 4)]
    out = evaluate_loss(model, batches)
    per_window = out["window_losses"]
    assert len(per_window) == out["windows"] == 9
    assert all(isinstance(v, float) for v in per_window)
    assert sum(per_window) / len(per_window) == pytest.approx(out["loss"], rel=1e-12, abs=0)
    # Exactly the per-window means of token_nll in float64 (the former xformer window_losses).
    expected = torch.cat([token_nll(model, b).double().mean(1) for b in batches]).tolist()
    assert per_window == expected
    assert out["loss_by_position"] and len(out["loss_by_position"]) == 16


def test_evaluate_sft_loss_matches_hand_computation(model):
    g = torch.Generator().manual_seed(2)
    n, t = 5, 12
    input_ids = torch.randint(0, model.spec.vocab_size, (n, t), generator=g)
    lengths = torch.tensor([12, 9, 10, 7, 11])
    labels = input_ids.clone()
    labels[:, :4] = -100  # prompt
    for i, length in enumerate(lengths.tolist()):
        labels[i, length:] = -100  # right padding
    data = {"input_ids": input_ids, "labels": labels, "lengths": lengths}
    model.train()

    # Hand computation: every supervised target, one row at a time, token-weighted.
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(n):
            logits = model(input_ids[i:i + 1]).float()[0, :-1]
            targets = labels[i, 1:]
            keep = targets != -100
            total += float(F.cross_entropy(logits[keep], targets[keep], reduction="sum"))
            count += int(keep.sum())
    expected = total / count

    for batch_size in (1, 2, 16):
        value = evaluate_sft_loss(model, data, batch_size=batch_size)
        assert value == pytest.approx(expected, rel=1e-5)
    assert model.training  # the model's mode is restored


def test_evaluate_sft_loss_nan_when_not_finite(model):
    data = {"input_ids": torch.zeros(2, 6, dtype=torch.long), "labels": torch.zeros(2, 6, dtype=torch.long)}
    first = next(model.parameters())
    saved = first.detach().clone()
    try:
        with torch.no_grad():
            first.fill_(math.inf)
        assert math.isnan(evaluate_sft_loss(model, data))
    finally:
        with torch.no_grad():
            first.copy_(saved)
