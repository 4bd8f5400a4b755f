"""LoRA-α (paper 3): α rules for PEFT, signal/drift logging, curvature probes, the synthetic MLP of claim 7."""

from .alpha import (RULES, AlphaChoice, LayerCurvature, alpha_for, apply_lora, layer_scaling, layerwise_alpha,
                    layerwise_report, lora_layers, loraplus_optimizer, target_linears)
from .curvature import adam_preconditioned_sharpness, lanczos, lora_vs_full_curvature, top_hessian_eigenvalue
from .signal_drift import SignalDrift, mean_over_layers, total_ratio
from .synthetic_mlp import run_mlp_experiment

__all__ = ["RULES", "AlphaChoice", "LayerCurvature", "SignalDrift", "adam_preconditioned_sharpness",
           "alpha_for", "apply_lora", "lanczos", "layer_scaling", "layerwise_alpha", "layerwise_report",
           "lora_layers", "lora_vs_full_curvature", "loraplus_optimizer", "mean_over_layers",
           "run_mlp_experiment", "target_linears", "top_hessian_eigenvalue", "total_ratio"]
