"""Signal and drift of one optimizer step on LoRA layers (paper claim 3; the measurement is our reconstruction).

A step moves A → A + δA and B → B + δB, so the effective weight W = W₀ + s·B·A changes by exactly

    ΔW = s·(δB·A + B·δA)  +  s·δB·δA  =  S + D,

S the first-order signal and D the bilinear drift. Per layer we report ‖S‖_F, ‖D‖_F, ρ = ‖D‖/‖S‖ and the
alignment cos(S, −∇_W L). Under Adam the first step moves every entry by ≈ η whatever s is, so S ∝ s·η and
D ∝ s·η²: ρ grows with η and does not depend on α (the paper's prediction).

∇_W L, the gradient with respect to the *effective* weight, cannot be recovered from ∇_A L = s·Bᵀ·∇_W L and
∇_B L = s·∇_W L·Aᵀ (rank r at most). It is captured instead with hooks: a LoRA layer computes
y = x·W₀ᵀ + s·(x·Aᵀ)·Bᵀ = x·Wᵀ, so ∇_W L = Σ_tokens (∂L/∂y)ᵀ·x, from the layer input saved by a forward hook
and the output gradient seen by a tensor hook. This holds when the adapter sees the same input as the base
layer, i.e. without LoRA dropout in training mode; such layers are refused. Gradients accumulate over every
backward since the last :meth:`SignalDrift.after_step` (as ``.grad`` does under gradient accumulation);
activation checkpointing would run the forward hook twice per step and count the gradient twice.

Usage around any optimizer::

    probe = SignalDrift(model)          # a PEFT model
    loss.backward(); probe.before_step(); optimizer.step(); stats = probe.after_step()
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .alpha import lora_layers

FIELDS = ("signal", "drift", "ratio", "alignment")


class SignalDrift:
    """Per-step signal/drift probe on every LoRA layer of a PEFT ``model`` (see module docstring).

    capture_grads: register the hooks that capture ∇_W L (alignment is NaN without them and without ``grads``).
    """

    def __init__(self, model: nn.Module, capture_grads: bool = True):
        self.layers = lora_layers(model)
        self._snapshot: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._grads: dict[str, torch.Tensor] = {}
        self._handles = []
        if capture_grads:
            for name, (layer, adapter) in self.layers.items():
                self._handles.append(layer.register_forward_hook(self._forward_hook(name, adapter)))

    def _forward_hook(self, name: str, adapter: str):
        def hook(module, args, output):
            if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad):
                return
            dropout = module.lora_dropout[adapter]
            if module.training and isinstance(dropout, nn.Dropout) and dropout.p > 0:
                raise ValueError(f"SignalDrift: LoRA layer {name!r} has dropout p={dropout.p} in training mode; "
                                 "∇_W L from hooks needs lora_dropout=0 (or capture_grads=False)")
            x = args[0].detach()

            def grad_hook(grad_out):
                dtype = torch.promote_types(grad_out.dtype, torch.float32)  # bf16 outer products lose too much
                g = grad_out.detach().reshape(-1, grad_out.shape[-1]).to(dtype)
                gw = g.T @ x.reshape(-1, x.shape[-1]).to(dtype)  # [d_out, d_in]
                self._grads[name] = self._grads[name] + gw if name in self._grads else gw

            output.register_hook(grad_hook)

        return hook

    def remove(self) -> None:
        """Detach the hooks (the probe then only measures signal and drift)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def reset_grads(self) -> None:
        """Forget the captured ∇_W L (e.g. after a backward that was not part of training)."""
        self._grads = {}

    @property
    def captured_grads(self) -> dict[str, torch.Tensor]:
        """∇_W L [d_out, d_in] per layer accumulated since the last ``after_step``/``reset_grads``."""
        return dict(self._grads)

    def before_step(self) -> None:
        """Snapshot A [r, d_in] and B [d_out, r] of every layer (call right before ``optimizer.step()``)."""
        self._snapshot = {name: (layer.lora_A[a].weight.detach().clone(), layer.lora_B[a].weight.detach().clone())
                          for name, (layer, a) in self.layers.items()}

    @torch.no_grad()
    def after_step(self, grads: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, float]]:
        """Per layer name: dict(signal=‖S‖_F, drift=‖D‖_F, ratio=‖D‖/‖S‖, alignment=cos(S, −∇_W L)).

        grads: ∇_W L [d_out, d_in] per layer name, overriding the captured ones. ratio is NaN when S = 0;
        alignment is NaN when S = 0, ∇_W L = 0 or no gradient is known for the layer.
        """
        if self._snapshot is None:
            raise RuntimeError("SignalDrift.after_step: call before_step() before the optimizer step")
        grads = self._grads if grads is None else grads
        stats = {}
        for name, (layer, adapter) in self.layers.items():
            A0, B0 = self._snapshot[name]
            A1, B1 = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
            s = float(layer.scaling[adapter])
            dA, dB = (A1 - A0).double(), (B1 - B0).double()
            S = s * (dB @ A0.double() + B0.double() @ dA)
            D = s * (dB @ dA)
            signal, drift = float(S.norm()), float(D.norm())
            g = grads.get(name)
            alignment = math.nan
            if g is not None and signal > 0:
                g = g.double()
                if g.shape != S.shape:
                    raise ValueError(f"grads[{name!r}]: shape {tuple(g.shape)}, expected {tuple(S.shape)}")
                gnorm = float(g.norm())
                alignment = -float((S * g).sum()) / (signal * gnorm) if gnorm > 0 else math.nan
            stats[name] = {"signal": signal, "drift": drift,
                           "ratio": drift / signal if signal > 0 else math.nan, "alignment": alignment}
        self._snapshot = None
        self._grads = {}
        return stats


def mean_over_layers(stats: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of each field over layers, ignoring NaN (NaN if every layer is NaN)."""
    out = {}
    for field in FIELDS:
        values = [layer[field] for layer in stats.values() if not math.isnan(layer[field])]
        out[field] = sum(values) / len(values) if values else math.nan
    return out


def total_ratio(stats: dict[str, dict[str, float]]) -> float:
    """‖D‖/‖S‖ over all layers together (Frobenius norms of the concatenated updates)."""
    signal = math.sqrt(sum(layer["signal"] ** 2 for layer in stats.values()))
    drift = math.sqrt(sum(layer["drift"] ** 2 for layer in stats.values()))
    return drift / signal if signal > 0 else math.nan
