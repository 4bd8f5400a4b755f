"""α rules against PEFT's own LoRA layers (their ``scaling``), the layer-wise rule against closed forms and
against curvature measured through PEFT's forward, and the LoRA+ optimizer's parameter groups."""

from __future__ import annotations

import copy
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def base_model(make_spec):
    from lmrepro.models import DecoderLM

    torch.manual_seed(0)
    return DecoderLM(make_spec())


def _scalings(peft_model) -> dict[str, float]:
    from lmrepro.lora import lora_layers

    return {name: layer.scaling[adapter] for name, (layer, adapter) in lora_layers(peft_model).items()}


# rule, r, options, expected s (hand values: s = α/r, rsLoRA s = α/√r)
SCALING_TABLE = [
    ("2r", 4, {}, 2.0),
    ("2r", 3, {}, 2.0),
    ("r", 8, {}, 1.0),
    ("fixed", 4, {}, 4.0),  # default α = 16
    ("fixed", 8, {"alpha": 32}, 4.0),
    ("rslora", 4, {"alpha": 16}, 8.0),
    ("rslora", 9, {"alpha": 6}, 2.0),
    ("sqrt", 4, {}, 128.0),  # default C = 256: α = 512, s = 512/4
    ("sqrt", 9, {"C": 30}, 10.0),
    ("fixed", 4, {"alpha": 16, "multiplier": 0.5}, 2.0),
    ("sqrt", 16, {"C": 8, "multiplier": 3}, 6.0),
]


@pytest.mark.parametrize("rule,r,options,expected", SCALING_TABLE)
def test_rule_scaling_matches_peft(base_model, rule, r, options, expected):
    from lmrepro.lora import alpha_for, apply_lora

    choice = alpha_for(rule, r, **options)
    assert choice.scaling == pytest.approx(expected, rel=1e-12)
    model = apply_lora(copy.deepcopy(base_model), r, choice, TARGETS, seed=0)
    scalings = _scalings(model)
    assert len(scalings) == 3 * base_model.spec.num_layers
    for name, s in scalings.items():
        assert s == pytest.approx(expected, rel=1e-12), name
        assert choice.scaling_for(name) == pytest.approx(s, rel=1e-12)


def _train_step(model, batch, lr=1e-2):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss = F.cross_entropy(model(batch)[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("r,C", [(4, 256.0), (9, 16.0)])
def test_sqrt_rule_is_rslora_with_alpha_C(base_model, r, C):
    from lmrepro.lora import alpha_for, apply_lora

    sqrt_choice, rs_choice = alpha_for("sqrt", r, C=C), alpha_for("rslora", r, alpha=C)
    assert (sqrt_choice.lora_alpha, sqrt_choice.use_rslora) == (pytest.approx(C * math.sqrt(r)), False)
    assert (rs_choice.lora_alpha, rs_choice.use_rslora) == (C, True)
    batch = torch.randint(0, base_model.spec.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    outs = []
    for choice in (sqrt_choice, rs_choice):
        model = apply_lora(copy.deepcopy(base_model), r, choice, TARGETS, seed=3)
        before = model(batch).detach()
        _train_step(model, batch)
        after = model(batch).detach()
        assert (after - before).abs().max() > 1e-4  # the step changed the function: the comparison is not vacuous
        outs.append(after)
        assert all(s == pytest.approx(C / math.sqrt(r)) for s in _scalings(model).values())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def test_alpha_pattern_applies_per_module(base_model):
    from lmrepro.lora import AlphaChoice, apply_lora

    pattern = {re.escape("layers.0.mixer.q_proj"): 32.0, "v_proj": 2.0}
    choice = AlphaChoice(lora_alpha=8.0, use_rslora=False, alpha_pattern=pattern, scaling=2.0, r=4, rule="fixed")
    model = apply_lora(copy.deepcopy(base_model), 4, choice, TARGETS, seed=0)
    expected = {"layers.0.mixer.q_proj": 8.0, "layers.1.mixer.q_proj": 2.0, "layers.0.mixer.v_proj": 0.5,
                "layers.1.mixer.v_proj": 0.5, "layers.0.mlp.down_proj": 2.0, "layers.1.mlp.down_proj": 2.0}
    scalings = _scalings(model)
    assert {name.removeprefix("base_model.model."): s for name, s in scalings.items()} == expected
    for name, s in scalings.items():
        assert choice.scaling_for(name) == s


@pytest.mark.parametrize("rule,r,options,match", [
    ("alpha2", 4, {}, "allowed: 2r, r, fixed, rslora, sqrt, layerwise"),
    ("fixed", 0, {}, "r: must be an int >= 1"),
    ("fixed", 4, {"alpha": -1}, "alpha: must be a finite number > 0"),
    ("sqrt", 4, {"alpha": 16}, r"options \['alpha'\] do not apply to rule 'sqrt'; allowed: C, multiplier"),
    ("r", 4, {"multiplier": 0}, "multiplier: must be a finite number > 0"),
    ("layerwise", 4, {"model": None}, "needs options"),
])
def test_bad_arguments_name_what_is_allowed(rule, r, options, match):
    from lmrepro.lora import alpha_for

    with pytest.raises(ValueError, match=match):
        alpha_for(rule, r, **options)


def test_apply_lora_refuses_mismatched_rank_and_unknown_init(base_model):
    from lmrepro.lora import alpha_for, apply_lora

    with pytest.raises(ValueError, match="differs from the rank"):
        apply_lora(copy.deepcopy(base_model), 8, alpha_for("2r", 4), TARGETS)
    with pytest.raises(ValueError, match="init: 'xavier' is not one of"):
        apply_lora(copy.deepcopy(base_model), 4, alpha_for("2r", 4), TARGETS, init="xavier")


def test_loraplus_puts_B_at_lr_times_ratio(base_model):
    from lmrepro.lora import alpha_for, apply_lora, loraplus_optimizer

    model = apply_lora(copy.deepcopy(base_model), 4, alpha_for("2r", 4), TARGETS, seed=0)
    optimizer = loraplus_optimizer(model, lr=1e-4, ratio=16, weight_decay=0.1)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert len(lr_of) == len(trainable) == 2 * 3 * base_model.spec.num_layers  # each parameter exactly once
    for name, p in trainable.items():
        expected = 1e-4 * 16 if ".lora_B." in name else 1e-4
        assert lr_of[id(p)] == (pytest.approx(expected), 0.1), name


# ---------------------------------------------------------------------------------------------------------
# Layer-wise rule


def _least_squares(d_in=6, d_out=5, n=40, seed=0):
    """One linear layer "0" with L = ½·mean‖W·x − y‖²: H_W[D, D] = ‖X·Dᵀ‖²/n and G = (X·Wᵀ − Y)ᵀ·X/n."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(d_in, d_out, bias=False)).double()
    X = torch.randn(n, d_in, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2.0, d_in, dtype=torch.float64)
    Y = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    return model, X, Y, lambda: 0.5 * ((model(X) - Y) ** 2).sum() / n


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("r", [1, 3])
def test_layerwise_matches_closed_form_on_least_squares(optimizer, r):
    from lmrepro.lora import layerwise_report

    model, X, Y, loss_fn = _least_squares()
    report = layerwise_report(model, loss_fn, ["0"], r, optimizer=optimizer, seed=5)
    assert list(report) == ["0"]
    layer, W, n = report["0"], model[0].weight.detach(), X.shape[0]
    A = layer.A
    assert A.shape == (r, X.shape[1]) and A.abs().max() <= 1 / math.sqrt(X.shape[1])  # PEFT's Kaiming bound
    G = (X @ W.T - Y).T @ X / n

    def q(D):
        return float(((X @ D.T) ** 2).sum() / n)

    if optimizer == "adam":
        expected = math.sqrt(q(torch.sign(G)) / q(torch.sign(G @ A.T) @ A))
    else:
        expected = (q(G) / q(G @ A.T @ A)) ** 0.25
    assert layer.scaling == pytest.approx(expected, rel=1e-10)
    assert layer.q_full > 0 and layer.q_adapter > 0  # least squares: H is positive definite here


def test_layerwise_restores_requires_grad_and_refuses_a_wrapped_model(base_model):
    from lmrepro.lora import alpha_for, apply_lora, layerwise_report

    model, _, _, loss_fn = _least_squares()
    model[0].weight.requires_grad_(False)
    layerwise_report(model, loss_fn, ["0"], 2)
    assert model[0].weight.requires_grad is False
    wrapped = apply_lora(copy.deepcopy(base_model), 2, alpha_for("r", 2), TARGETS)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        layerwise_report(wrapped, lambda: torch.zeros(()), TARGETS, 2)
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        layerwise_report(base_model, lambda: torch.zeros(()), ["qkv"], 2)


def test_layerwise_keeps_base_alpha_where_curvature_is_not_positive():
    from lmrepro.lora import alpha_for

    model, X, Y, loss_fn = _least_squares()
    with pytest.warns(UserWarning, match=r"no positive curvature .*\['0'\].*keep base_alpha=12"):
        choice = alpha_for("layerwise", 2, model=model, loss_fn=lambda: -loss_fn(), target_modules=["0"],
                           base_alpha=12.0)
    assert choice.alpha_pattern == {} and choice.lora_alpha == 12.0 and choice.scaling == 6.0


def _near_minimum_loss(model, batch, seed=0):
    """MSE of the logits to targets 0.05 away from the current logits: near a minimum, so the curvature along
    the first-step directions is positive (the Gauss–Newton term dominates), unlike CE at random init."""
    with torch.no_grad():
        target = model(batch)
        target = target + 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(seed),
                                             dtype=target.dtype)
    return lambda: ((model(batch) - target) ** 2).mean()


def test_layerwise_pattern_reaches_peft_and_matches_curvature_through_peft(base_model):
    """The derivation, checked through PEFT's own forward: with the rule's A and s, the curvature of the loss
    over B along Adam's first step −sign(∇_B L) equals the full weight's along −sign(∇_W L)."""
    from lmrepro.lora import alpha_for, apply_lora, layerwise_report, lora_layers
    from lmrepro.ops import twice_differentiable

    r = 2
    model = copy.deepcopy(base_model).double()
    batch = torch.randint(0, model.spec.vocab_size, (2, 10), generator=torch.Generator().manual_seed(2))
    loss_fn = _near_minimum_loss(model, batch)
    targets = ["q_proj", "v_proj"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer must get its own α here
        choice = alpha_for("layerwise", r, model=model, loss_fn=loss_fn, target_modules=targets, seed=4)
    report = layerwise_report(model, loss_fn, targets, r, seed=4)
    assert len(choice.alpha_pattern) == len(report) == 2 * model.spec.num_layers
    for name, layer in report.items():
        assert choice.alpha_pattern[re.escape(name)] == pytest.approx(layer.scaling * r, rel=1e-12)

    peft_model = apply_lora(model, r, choice, targets, seed=0)
    layers = lora_layers(peft_model)
    assert len(layers) == len(report)
    for name, (layer, adapter) in layers.items():
        key = name.removeprefix("base_model.model.")
        assert layer.scaling[adapter] == pytest.approx(report[key].scaling, rel=1e-12)  # PEFT applied the pattern
        with torch.no_grad():
            layer.lora_A[adapter].weight.copy_(report[key].A)
    with twice_differentiable():
        loss = loss_fn()
    Bs = [layer.lora_B[adapter].weight for layer, adapter in layers.values()]
    grads = torch.autograd.grad(loss, Bs, create_graph=True)
    for (name, _), B, g in zip(layers.items(), Bs, grads):
        u = -torch.sign(g.detach())  # Adam's first step on B, per unit learning rate
        curvature_B = float((u * torch.autograd.grad(g, B, grad_outputs=u, retain_graph=True)[0]).sum())
        assert curvature_B == pytest.approx(report[name.removeprefix("base_model.model.")].q_full, rel=1e-6)


def test_mechanisms_stage_names_an_unknown_measurement():
    from lmrepro.config import load_config
    from lmrepro.papers.lora_alpha.evaluate import MECHANISMS, mechanism

    assert MECHANISMS == ("signal_drift", "curvature", "mlp")
    with pytest.raises(ValueError, match=r"mechanism 'hessian' is unknown; choose one of \['signal_drift'"):
        mechanism(load_config(profile="smoke"), None, None, "hessian")
