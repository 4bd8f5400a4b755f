"""Signal/drift probe: a hand-computed step, ∇_W L from hooks against the base weight's own gradient, the exact
split ΔW = S + D, and what Adam's first step guarantees (S ∝ s·η, D ∝ s·η², ρ ∝ η and flat in α)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

TARGETS = ["q_proj", "v_proj", "up_proj"]


def _one_layer(alpha: float, r: int = 1):
    """PEFT LoRA over a bias-free Linear(3 → 2) named "0"."""
    from lmrepro.lora import alpha_for, apply_lora, lora_layers

    base = torch.nn.Sequential(torch.nn.Linear(3, 2, bias=False)).double()
    model = apply_lora(base, r, alpha_for("fixed", r, alpha=alpha), ["0"], seed=0)
    (name, (layer, adapter)), = lora_layers(model).items()
    return model, name, layer, adapter


def test_hand_computed_step():
    """s = 2, A = [1 0 0], B = [0 2]ᵀ; SGD (lr 1) with hand-set grads gives δA = [0 1 0], δB = [3 0]ᵀ:
    S = 2·(δB·A + B·δA) = [[6 0 0] [0 4 0]], D = 2·δB·δA = [[0 6 0] [0 0 0]];
    L = ⟨W·x, c⟩ with x = e₁, c = (−1, 0) has ∇_W L = c·xᵀ, so cos(S, −∇_W L) = 6/√52."""
    from lmrepro.lora import SignalDrift

    model, name, layer, adapter = _one_layer(alpha=2.0)
    A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    with torch.no_grad():
        A.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
        B.copy_(torch.tensor([[0.0], [2.0]]))
    assert layer.scaling[adapter] == 2.0
    probe = SignalDrift(model)
    x, c = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64), torch.tensor([-1.0, 0.0], dtype=torch.float64)
    (model(x) @ c).sum().backward()
    A.grad, B.grad = torch.tensor([[0.0, -1.0, 0.0]]).double(), torch.tensor([[-3.0], [0.0]]).double()
    probe.before_step()
    torch.optim.SGD([A, B], lr=1.0).step()
    stats = probe.after_step()[name]
    assert stats["signal"] == pytest.approx(math.sqrt(52), rel=1e-12)
    assert stats["drift"] == pytest.approx(6.0, rel=1e-12)
    assert stats["ratio"] == pytest.approx(6 / math.sqrt(52), rel=1e-12)
    assert stats["alignment"] == pytest.approx(6 / math.sqrt(52), rel=1e-12)


@pytest.fixture(scope="module")
def tiny_lm(make_spec):
    from lmrepro.models import DecoderLM

    torch.manual_seed(0)
    return DecoderLM(make_spec())


def _wrap(tiny_lm, alpha=8.0, r=4, dtype=torch.float64):
    from lmrepro.lora import alpha_for, apply_lora

    return apply_lora(copy.deepcopy(tiny_lm).to(dtype), r, alpha_for("fixed", r, alpha=alpha), TARGETS, seed=1)


def _batch(tiny_lm, seed=0, n=2, t=9):
    return torch.randint(0, tiny_lm.spec.vocab_size, (n, t), generator=torch.Generator().manual_seed(seed))


def _loss(model, batch):
    return F.cross_entropy(model(batch)[:, :-1].flatten(0, 1), batch[:, 1:].flatten())


def test_captured_grad_is_the_effective_weight_gradient(tiny_lm):
    """∇_W L from hooks equals ∇_{W₀} L (autograd on the base weight: W = W₀ + s·B·A), summed over two
    accumulated backward passes; B is made non-zero first so the adapter takes part in the forward."""
    from lmrepro.lora import SignalDrift, lora_layers

    model = _wrap(tiny_lm)
    layers = lora_layers(model)
    with torch.no_grad():
        for layer, adapter in layers.values():
            layer.lora_B[adapter].weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(7))
    for layer, _ in layers.values():
        layer.get_base_layer().weight.requires_grad_(True)
    probe = SignalDrift(model)
    for seed in (0, 1):
        _loss(model, _batch(tiny_lm, seed)).backward()
    captured = probe.captured_grads
    assert set(captured) == set(layers)
    for name, (layer, _) in layers.items():
        torch.testing.assert_close(captured[name], layer.get_base_layer().weight.grad, rtol=1e-9, atol=1e-12)
    probe.reset_grads()
    assert probe.captured_grads == {}


def test_signal_plus_drift_is_the_weight_change(tiny_lm):
    from lmrepro.lora import SignalDrift, lora_layers

    model = _wrap(tiny_lm)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    probe = SignalDrift(model, capture_grads=False)
    for step in range(2):  # step 0 moves only B (B = 0 at init); step 1 moves both
        delta_before = {n: layer.get_delta_weight(a).detach().clone() for n, (layer, a) in lora_layers(model).items()}
        optimizer.zero_grad()
        _loss(model, _batch(tiny_lm, step)).backward()
        snapshot = {n: (layer.lora_A[a].weight.detach().clone(), layer.lora_B[a].weight.detach().clone())
                    for n, (layer, a) in lora_layers(model).items()}
        probe.before_step()
        optimizer.step()
        stats = probe.after_step()
        for name, (layer, adapter) in lora_layers(model).items():
            s = layer.scaling[adapter]
            A0, B0 = snapshot[name]
            dA, dB = layer.lora_A[adapter].weight.detach() - A0, layer.lora_B[adapter].weight.detach() - B0
            change = layer.get_delta_weight(adapter).detach() - delta_before[name]
            S, D = s * (dB @ A0 + B0 @ dA), s * dB @ dA
            torch.testing.assert_close(S + D, change, rtol=1e-9, atol=1e-12)  # the split is exact
            assert stats[name]["signal"] == pytest.approx(float(S.norm()), rel=1e-9)
            assert stats[name]["drift"] == pytest.approx(float(D.norm()), rel=1e-9, abs=1e-15)
            assert math.isnan(stats[name]["alignment"])  # no gradient captured
        if step == 1:
            assert all(layer["drift"] > 0 for layer in stats.values())


def _adam_step(model, batch, lr, eps=1e-16):
    """One step of a fresh AdamW (no weight decay): δ = −lr·g/(|g| + eps) ≈ −lr·sign(g)."""
    from lmrepro.lora import SignalDrift

    probe = SignalDrift(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, eps=eps,
                                  weight_decay=0.0)
    _loss(model, batch).backward()
    probe.before_step()
    optimizer.step()
    return probe.after_step()


@pytest.mark.parametrize("alpha", [4.0, 64.0])
@pytest.mark.parametrize("lr", [1e-4, 1e-3])
def test_adam_first_step_from_init_signal_scales_with_s_lr_and_no_drift(tiny_lm, alpha, lr):
    """B = 0 at init: the forward does not depend on α, ∇_A L = 0 so δA = 0 (D = 0) and δB = −lr·sign(∇_B L),
    whose sign does not depend on s: ‖S‖ = s·lr·‖sign(∇_B L)·A‖ exactly."""
    model = _wrap(tiny_lm, alpha=alpha)
    stats = _adam_step(model, _batch(tiny_lm), lr)
    reference = _adam_step(_wrap(tiny_lm, alpha=1.0), _batch(tiny_lm), 1.0)  # s = 1/4, lr = 1
    for name, layer in stats.items():
        assert layer["drift"] == 0.0
        expected = reference[name]["signal"] * (alpha / 4) / (1 / 4) * lr
        assert layer["signal"] == pytest.approx(expected, rel=1e-6)
        assert layer["alignment"] > 0  # a descent step is positively aligned with −∇_W L


def _balanced_adapters(model):
    """A = [a; a], B = [b, −b] (r = 2): B·A = 0, so the forward equals the base model's for every α, while
    ∇_A L = s·Bᵀ·G and ∇_B L = s·G·Aᵀ are both non-zero and their signs do not depend on s."""
    from lmrepro.lora import lora_layers

    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer, adapter in lora_layers(model).values():
            A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
            a = torch.randn(A.shape[1], generator=g, dtype=A.dtype) / math.sqrt(A.shape[1])
            b = torch.randn(B.shape[0], generator=g, dtype=B.dtype) * 0.1
            A.copy_(torch.stack([a, a]))
            B.copy_(torch.stack([b, -b], dim=1))
    return model


@pytest.mark.parametrize("alpha", [2.0, 32.0, 512.0])
@pytest.mark.parametrize("lr", [1e-4, 4e-4])
def test_adam_first_step_ratio_grows_with_lr_and_is_flat_in_alpha(tiny_lm, alpha, lr):
    """With both factors moving: S ∝ s·lr, D ∝ s·lr², so ρ = ‖D‖/‖S‖ ∝ lr, independent of α (brief's prediction,
    exact for Adam's first step when α does not change the gradient)."""
    r = 2
    stats = _adam_step(_balanced_adapters(_wrap(tiny_lm, alpha=alpha, r=r)), _batch(tiny_lm), lr)
    reference = _adam_step(_balanced_adapters(_wrap(tiny_lm, alpha=float(r), r=r)), _batch(tiny_lm), 1e-4)
    s = alpha / r
    for name, layer in stats.items():
        ref = reference[name]  # s = 1, lr = 1e-4
        assert ref["drift"] > 0 and ref["signal"] > 0
        assert layer["signal"] == pytest.approx(ref["signal"] * s * lr / 1e-4, rel=1e-6)
        assert layer["drift"] == pytest.approx(ref["drift"] * s * (lr / 1e-4) ** 2, rel=1e-6)
        assert layer["ratio"] == pytest.approx(ref["ratio"] * lr / 1e-4, rel=1e-6)


def test_aggregates_and_errors(tiny_lm):
    from lmrepro.lora import SignalDrift, alpha_for, apply_lora, mean_over_layers, total_ratio

    stats = {"a": {"signal": 3.0, "drift": 4.0, "ratio": 4 / 3, "alignment": math.nan},
             "b": {"signal": 4.0, "drift": 3.0, "ratio": 0.75, "alignment": 0.5}}
    mean = mean_over_layers(stats)
    assert mean == {"signal": 3.5, "drift": 3.5, "ratio": pytest.approx((4 / 3 + 0.75) / 2), "alignment": 0.5}
    assert total_ratio(stats) == pytest.approx(1.0)

    probe = SignalDrift(_wrap(tiny_lm))
    with pytest.raises(RuntimeError, match="call before_step"):
        probe.after_step()
    dropped = apply_lora(copy.deepcopy(tiny_lm), 2, alpha_for("r", 2), TARGETS, lora_dropout=0.1)
    SignalDrift(dropped)
    with pytest.raises(ValueError, match="dropout p=0.1 in training mode"):
        _loss(dropped, _batch(tiny_lm))
    with pytest.raises(ValueError, match="no PEFT LoRA layers"):
        SignalDrift(copy.deepcopy(tiny_lm))
