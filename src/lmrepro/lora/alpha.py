"""LoRA scaling rules: which α (and which s) to give PEFT, and how to wrap a model with them.

LoRA adapts a linear layer as W = W₀ + s·B·A, A [r, d_in], B [d_out, r] (B = 0 at init). PEFT computes
s = α/r, or s = α/√r with ``use_rslora=True``. :func:`alpha_for` turns a named rule into an
:class:`AlphaChoice` (what ``LoraConfig`` needs plus the resulting s):

=============  =======================  ====================  =========================================
rule           α                        s                     options
=============  =======================  ====================  =========================================
"2r"           2r                       2                     —
"r"            r                        1                     —
"fixed"        α (default 16)           α/r                   alpha
"rslora"       α (default 16)           α/√r  (use_rslora)    alpha
"sqrt"         C·√r (default C = 256)   C/√r                  C
"layerwise"    per layer, see below     per layer             model, loss_fn, target_modules, base_alpha,
                                                              optimizer, init, seed
=============  =======================  ====================  =========================================

Every rule also takes ``multiplier`` (default 1): α is multiplied by it, the paper's narrow tuning knob
around the proposed α. "sqrt" with C is the same forward as "rslora" with α = C (paper claim 4).

Layer-wise rule (our reconstruction of the paper's unpublished analytic rule, claim 5)
-------------------------------------------------------------------------------------
Idea: keep a full-fine-tuning learning rate η and choose each layer's s so that the curvature the adapter
meets on its first optimizer step equals the curvature full fine-tuning meets on its first step with the
same η. For one layer let G = ∇_W L [d_out, d_in] at init and q(D) = ⟨D, H_W D⟩ the loss curvature along a
weight-space direction D (one Hessian-vector product over that layer's weight; the other layers fixed).

* B = 0 at init, so ∇_A L = s·Bᵀ G = 0 and only B moves on step one: ∇_B L = s·G·Aᵀ.
* W is linear in B, so the loss Hessian over B along any u [d_out, r] is exactly H_B[u, u] = s²·q(u·A).
* AdamW's first step is δ = −η·g/(|g| + ε) ≈ −η·sign(g): the adapter moves δB = −η·sign(G·Aᵀ) (the sign does
  not depend on s > 0) and full fine-tuning moves δW = −η·sign(G). The second-order terms of the loss change
  are ½η²·s²·q(sign(G·Aᵀ)·A) for the adapter and ½η²·q(sign(G)) for full fine-tuning. Equating them:

      s_ℓ = √( q(sign G) / q(sign(G·Aᵀ)·A) ),        α_ℓ = s_ℓ · r.

* With plain SGD (``optimizer="sgd"``) the first steps are δB = −η·s·G·Aᵀ and δW = −η·G, so the adapter's
  weight-space step is −η·s²·G·AᵀA and the rule becomes s_ℓ = ( q(G) / q(G·AᵀA) )^(1/4).

Why this gives large α and a √r law under Adam: if the curvature per unit squared norm were the same along
both directions, s² would be the ratio of squared norms ‖sign G‖² / ‖sign(GAᵀ)·A‖² ≈ d_out·d_in / (d_out·r/3)
for PEFT's Kaiming-uniform A (entries U(±1/√d_in), variance 1/(3·d_in)), i.e. α = s·r ≈ √(3·d_in·r): the
rank rule α = C·√r with C = √(3·d_in) ≈ 111 for d_in = 4096, multiplied by √(κ_full/κ_adapter), the ratio of
the normalized curvatures, which the Hessian-vector products measure. The rule depends on A's distribution
(PEFT's "gaussian" init, std 1/r, gives a different α), so A is drawn from the same distribution as the
adapter's init, from its own seeded generator; the measured ratio concentrates as d_out·r grows.
A layer whose curvature along either direction is not positive (possible away from a minimum: the Hessian
is indefinite) has no matching s; it keeps ``base_alpha`` and is named in a warning. Measure on the
pretrained model to be fine-tuned, as the rule intends: on a randomly initialised LM under cross-entropy
most layers of our tiny model come out indefinite, on the same model after 300 pretraining steps none do.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from numbers import Integral
from typing import Callable

import torch
from torch import nn

RULES = ("2r", "r", "fixed", "rslora", "sqrt", "layerwise")
INITS = {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "orthogonal": "orthogonal"}
OPTIMIZERS = ("adam", "sgd")

_OPTIONS = {
    "2r": set(),
    "r": set(),
    "fixed": {"alpha"},
    "rslora": {"alpha"},
    "sqrt": {"C"},
    "layerwise": {"model", "loss_fn", "target_modules", "base_alpha", "optimizer", "init", "seed"},
}


@dataclass(frozen=True)
class AlphaChoice:
    """What ``LoraConfig`` needs for a rule, and the multiplier s it yields.

    lora_alpha: PEFT ``lora_alpha`` (α of every module not matched by ``alpha_pattern``).
    use_rslora: PEFT ``use_rslora`` (s = α/√r instead of α/r).
    alpha_pattern: PEFT ``alpha_pattern`` (regex key → α, matched as a dotted suffix of the module name) or None.
    scaling: s of every module not matched by ``alpha_pattern``.
    r: the rank the choice was made for (``apply_lora`` refuses another).
    rule: name of the rule that produced it.
    """

    lora_alpha: float
    use_rslora: bool
    alpha_pattern: dict[str, float] | None
    scaling: float
    r: int
    rule: str

    def scaling_for(self, module_name: str) -> float:
        """s of the module ``module_name`` (matched against ``alpha_pattern`` as PEFT matches it)."""
        alpha = self.lora_alpha
        for key, value in (self.alpha_pattern or {}).items():
            # PEFT's rule (peft.utils.other.get_pattern_key): the first key that matches a dotted suffix.
            if re.match(rf"(.*\.)?({key})$", module_name):
                alpha = value
                break
        return _scaling(alpha, self.r, self.use_rslora)


def _scaling(alpha: float, r: int, use_rslora: bool) -> float:
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
    return float(value)


def _check_rank(r) -> int:
    # numbers.Integral: numpy integers (a rank read from a DataFrame) are ranks too.
    if isinstance(r, bool) or not isinstance(r, Integral) or r < 1:
        raise ValueError(f"r: must be an int >= 1, got {r!r}")
    return int(r)


def alpha_for(rule: str, r: int, *, multiplier: float = 1.0, **options) -> AlphaChoice:
    """α, ``use_rslora`` and ``alpha_pattern`` of ``rule`` at rank ``r`` (table in the module docstring)."""
    if rule not in RULES:
        raise ValueError(f"rule: unknown rule {rule!r}; allowed: {', '.join(RULES)}")
    r = _check_rank(r)
    multiplier = _check_positive("multiplier", multiplier)
    unknown = set(options) - _OPTIONS[rule]
    if unknown:
        allowed = ", ".join(sorted(_OPTIONS[rule] | {"multiplier"}))
        raise ValueError(f"options {sorted(unknown)} do not apply to rule {rule!r}; allowed: {allowed}")

    if rule == "layerwise":
        missing = {"model", "loss_fn", "target_modules"} - set(options)
        if missing:
            raise ValueError(f"rule 'layerwise' needs options {sorted(missing)} (model, loss_fn, target_modules)")
        base_alpha = _check_positive("base_alpha", options.pop("base_alpha", 16.0))
        pattern = layerwise_alpha(r=r, base_alpha=base_alpha, multiplier=multiplier, **options)
        alpha = base_alpha * multiplier
        return AlphaChoice(alpha, False, pattern, _scaling(alpha, r, False), r, rule)

    use_rslora = rule == "rslora"
    if rule == "2r":
        alpha = 2.0 * r
    elif rule == "r":
        alpha = float(r)
    elif rule in ("fixed", "rslora"):
        alpha = _check_positive("alpha", options.get("alpha", 16.0))
    else:  # "sqrt"
        alpha = _check_positive("C", options.get("C", 256.0)) * math.sqrt(r)
    alpha *= multiplier
    return AlphaChoice(alpha, use_rslora, None, _scaling(alpha, r, use_rslora), r, rule)


# ---------------------------------------------------------------------------------------------------------
# Layer-wise rule


@dataclass(frozen=True)
class LayerCurvature:
    """One layer of the layer-wise rule: curvatures q (module docstring), the matching s (NaN if none) and the
    A [r, d_in] it was measured with."""

    q_full: float
    q_adapter: float
    scaling: float
    A: torch.Tensor | None = None


def target_linears(model: nn.Module, target_modules: list[str] | str) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules PEFT would adapt for ``target_modules`` (PEFT's own matching), by name."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(target_modules=target_modules)
    found = {}
    for name, module in model.named_modules():
        hit = check_target_module_exists(config, name) if name and isinstance(module, nn.Linear) else None
        if hit is True or isinstance(hit, re.Match):  # an excluded module is a truthy marker object
            found[name] = module
    if not found:
        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"target_modules: {target_modules!r} matches no nn.Linear; linear modules: {linears[:12]}"
                         + (" ..." if len(linears) > 12 else ""))
    return found


def lora_layers(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """PEFT LoRA layers over ``nn.Linear`` by module name → (layer, its one active adapter name)."""
    from peft.tuners.lora import LoraLayer

    found = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and isinstance(module.get_base_layer(), nn.Linear):
            active = [a for a in module.active_adapters if a in module.lora_A]
            if len(active) != 1:
                raise ValueError(f"model: LoRA layer {name!r} has active adapters {active}; exactly one is supported")
            found[name] = (module, active[0])
    if not found:
        raise ValueError("model: has no PEFT LoRA layers over nn.Linear (wrap it with apply_lora first)")
    return found


def _draw_A(r: int, d_in: int, init: str, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """A [r, d_in] from the distribution PEFT initialises ``lora_A`` with."""
    if init == "kaiming":  # kaiming_uniform_(a=√5) on fan_in = d_in: U(−1/√d_in, 1/√d_in)
        bound = 1.0 / math.sqrt(d_in)
        A = (torch.rand(r, d_in, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    elif init == "gaussian":  # PEFT: normal with std 1/r
        A = torch.randn(r, d_in, generator=generator, dtype=torch.float64) / r
    else:
        raise ValueError(f"init: the layer-wise rule supports 'kaiming' and 'gaussian', got {init!r}")
    return A.to(like)


def layer_scaling(G: torch.Tensor, hvp: Callable[[torch.Tensor], torch.Tensor], A: torch.Tensor,
                  optimizer: str = "adam") -> LayerCurvature:
    """The layer-wise rule for one layer.

    G: ∇_W L [d_out, d_in]; hvp: D [d_out, d_in] ↦ H_W·D [d_out, d_in]; A: the adapter's A [r, d_in].
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: {optimizer!r} is not one of {OPTIMIZERS}")
    if optimizer == "adam":
        full, adapter, power = torch.sign(G), torch.sign(G @ A.T) @ A, 2.0
    else:  # sgd: the adapter's weight-space step is s²·(−η·G·AᵀA)
        full, adapter, power = G, G @ A.T @ A, 4.0
    # Signs of the directions do not matter: q(−D) = q(D).
    q_full = float((full * hvp(full)).sum())
    q_adapter = float((adapter * hvp(adapter)).sum())
    ok = q_full > 0 and q_adapter > 0 and math.isfinite(q_full) and math.isfinite(q_adapter)
    scaling = (q_full / q_adapter) ** (1.0 / power) if ok else math.nan
    return LayerCurvature(q_full, q_adapter, scaling, A)


def layerwise_report(model: nn.Module, loss_fn: Callable[[], torch.Tensor], target_modules: list[str] | str,
                     r: int, *, optimizer: str = "adam", init: str = "kaiming", seed: int = 0
                     ) -> dict[str, LayerCurvature]:
    """Per-layer curvatures and matching s on the base model (before ``apply_lora``), keyed by module name.

    loss_fn: zero-argument closure → scalar loss of ``model`` on a fixed batch (deterministic: no dropout).
    """
    from peft.tuners.lora import LoraLayer

    from ..ops.dispatch import twice_differentiable

    r = _check_rank(r)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: {optimizer!r} is not one of {OPTIMIZERS}")
    if any(isinstance(m, LoraLayer) for m in model.modules()):
        raise ValueError("model: already has LoRA layers; the layer-wise rule is measured on the base model, "
                         "before apply_lora")
    linears = target_linears(model, target_modules)
    weights = [m.weight for m in linears.values()]
    flags = [w.requires_grad for w in weights]
    generator = torch.Generator().manual_seed(seed)
    try:
        for w in weights:
            w.requires_grad_(True)
        with twice_differentiable():
            loss = loss_fn()
        grads = torch.autograd.grad(loss, weights, create_graph=True)
        report = {}
        for (name, module), w, g in zip(linears.items(), weights, grads):
            def hvp(D, g=g, w=w):  # curvature of this layer's block of the Hessian
                return torch.autograd.grad(g, w, grad_outputs=D, retain_graph=True)[0].detach()

            A = _draw_A(r, w.shape[1], init, generator, w.detach())
            report[name] = layer_scaling(g.detach(), hvp, A, optimizer)
    finally:
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
    return report


def layerwise_alpha(model: nn.Module, loss_fn: Callable[[], torch.Tensor], target_modules: list[str] | str,
                    r: int, base_alpha: float = 16.0, *, multiplier: float = 1.0, optimizer: str = "adam",
                    init: str = "kaiming", seed: int = 0) -> dict[str, float]:
    """PEFT ``alpha_pattern`` of the layer-wise rule: escaped module name → α_ℓ = multiplier·s_ℓ·r.

    Layers without a matching s (non-positive curvature) are left out, so they get ``base_alpha``; a warning
    names them. See the module docstring for the derivation.
    """
    base_alpha = _check_positive("base_alpha", base_alpha)
    multiplier = _check_positive("multiplier", multiplier)
    report = layerwise_report(model, loss_fn, target_modules, r, optimizer=optimizer, init=init, seed=seed)
    unmatched = [name for name, layer in report.items() if not math.isfinite(layer.scaling)]
    if unmatched:
        warnings.warn(f"layer-wise alpha: no positive curvature along the first-step directions of {unmatched}; "
                      f"they keep base_alpha={base_alpha}", stacklevel=2)
    # re.escape: PEFT reads keys as regexes; the escaped full name matches exactly this module.
    return {re.escape(name): multiplier * layer.scaling * r
            for name, layer in report.items() if math.isfinite(layer.scaling)}


# ---------------------------------------------------------------------------------------------------------
# Wrapping and optimizers


def apply_lora(model: nn.Module, r: int, choice: AlphaChoice, target_modules: list[str] | str,
               lora_dropout: float = 0.0, init: str = "kaiming", seed: int | None = None):
    """Wrap ``model`` (modified in place, as PEFT does) with one LoRA adapter → ``peft.PeftModel``.

    init: "kaiming" (PEFT default: Kaiming-uniform A, zero B), "gaussian", "pissa", "olora", "orthogonal".
    seed: seeds the adapter initialisation without touching the global RNG (None: global RNG).
    """
    from peft import LoraConfig, get_peft_model

    r = _check_rank(r)
    if r != choice.r:
        raise ValueError(f"r: {r} differs from the rank the AlphaChoice was made for ({choice.r})")
    if init not in INITS:
        raise ValueError(f"init: {init!r} is not one of {sorted(INITS)}")
    if not 0.0 <= lora_dropout < 1.0:
        raise ValueError(f"lora_dropout: must be in [0, 1), got {lora_dropout!r}")
    config = LoraConfig(r=r, lora_alpha=choice.lora_alpha, use_rslora=choice.use_rslora,
                        alpha_pattern=dict(choice.alpha_pattern or {}), target_modules=target_modules,
                        lora_dropout=lora_dropout, init_lora_weights=INITS[init])
    if seed is None:
        return get_peft_model(model, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def loraplus_optimizer(model: nn.Module, lr: float, ratio: float = 16.0, weight_decay: float = 0.0,
                       optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
                       **optimizer_kwargs) -> torch.optim.Optimizer:
    """LoRA+ (PEFT ``create_loraplus_optimizer``): A matrices at ``lr``, B matrices (and 1-D trainable
    parameters, as PEFT groups them) at ``lr·ratio``; ``weight_decay`` on every group that PEFT decays."""
    from peft.optimizers import create_loraplus_optimizer

    lr = _check_positive("lr", lr)
    ratio = _check_positive("ratio", ratio)
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay: must be a number >= 0, got {weight_decay!r}")
    return create_loraplus_optimizer(model, optimizer_cls, lr=lr, loraplus_lr_ratio=ratio,
                                     loraplus_weight_decay=float(weight_decay), **optimizer_kwargs)
