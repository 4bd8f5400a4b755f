"""Paper claim 7 on a synthetic task: a 5-layer MLP, LoRA, AdamW — ×128 learning rate versus ×256 α.

Task (teacher/student regression): a random "pretrained" MLP f₀ (tanh, weights N(0, 1/fan_in)) and a teacher
f* whose every layer is f₀'s plus a random rank-``task_rank`` change of relative Frobenius size
``task_scale``; inputs x ~ N(0, I), targets f*(x). The student is f₀ with PEFT LoRA (rank r, s = α/r) on all
five linear layers, trained full-batch with AdamW on the mean squared error.

:func:`run_mlp_experiment` scales the learning rate (α fixed) and α (learning rate fixed) by the given
multipliers and reports what happens; it asserts nothing. A run *diverges* when its loss becomes non-finite
(the run stops there) or exceeds ``diverge_factor`` × the initial loss at any step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .alpha import alpha_for, apply_lora

FIELDS = ("kind", "multiplier", "lr", "alpha", "initial_loss", "final_loss", "max_loss", "diverged")


class MLP(nn.Module):
    """x [N, widths[0]] → [N, widths[-1]]: ``layers.i`` linear maps with tanh between them (none after the last)."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.tanh(x)
        return x


def make_task(seed: int, width: int = 64, depth: int = 5, n: int = 512, task_rank: int = 4,
              task_scale: float = 0.5) -> tuple[MLP, torch.Tensor, torch.Tensor]:
    """(base MLP f₀, inputs X [n, width], targets f*(X) [n, width]), all from ``seed``."""
    if depth < 1 or width < 1 or n < 1 or task_rank < 1:
        raise ValueError(f"depth, width, n, task_rank: must be >= 1, got {depth}, {width}, {n}, {task_rank}")
    generator = torch.Generator().manual_seed(seed)
    base = MLP([width] * (depth + 1))
    teacher = MLP([width] * (depth + 1))
    with torch.no_grad():
        for layer, target in zip(base.layers, teacher.layers):
            fan_in = layer.weight.shape[1]
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / math.sqrt(fan_in))
            layer.bias.zero_()
            u = torch.randn(layer.weight.shape[0], task_rank, generator=generator)
            v = torch.randn(task_rank, fan_in, generator=generator)
            delta = u @ v
            target.weight.copy_(layer.weight + task_scale * delta * layer.weight.norm() / delta.norm())
            target.bias.zero_()
        X = torch.randn(n, width, generator=generator)
        Y = teacher(X)
    return base, X, Y


def summarize_losses(losses: list[float], bound: float) -> dict[str, float | bool]:
    """dict(final_loss, max_loss, diverged): diverged if any loss is non-finite or above ``bound``.
    Non-finite losses are reported as inf (NaN would hide that the run blew up)."""
    if not losses:
        raise ValueError("losses: empty")
    clean = [x if math.isfinite(x) else math.inf for x in losses]
    max_loss = max(clean)
    return {"final_loss": clean[-1], "max_loss": max_loss, "diverged": not math.isfinite(max_loss) or max_loss > bound}


def train_lora(base: MLP, X: torch.Tensor, Y: torch.Tensor, *, lr: float, alpha: float, r: int, steps: int,
               seed: int, weight_decay: float = 0.0) -> list[float]:
    """MSE losses [steps + 1] of AdamW on LoRA adapters over a copy of ``base`` (before each step, and after the
    last); stops early at the first non-finite loss."""
    import copy

    choice = alpha_for("fixed", r, alpha=alpha)
    model = apply_lora(copy.deepcopy(base), r, choice, target_modules=r"layers\.\d+", seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses = []
    for step in range(steps + 1):
        loss = torch.mean((model(X) - Y) ** 2)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]) or step == steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return losses


def run_mlp_experiment(lr_multipliers=(1, 128), alpha_multipliers=(1, 256), base_lr: float = 1e-3,
                       base_alpha: float = 8.0, r: int = 4, steps: int = 200, seed: int = 0,
                       diverge_factor: float = 10.0, width: int = 64, num_threads: int | None = 1) -> list[dict]:
    """One run per multiplier: kind "lr" (lr = base_lr·m, α = base_alpha) then kind "alpha"
    (lr = base_lr, α = base_alpha·m). Returns one dict per run with ``FIELDS``: kind, multiplier, lr, alpha,
    initial_loss, final_loss, max_loss (inf when non-finite), diverged.

    num_threads: torch CPU threads during the runs (restored after; None leaves them). One by default: on
    64-wide matrices the threads' fan-out costs more than it gains, many times more on a shared machine.
    """
    if not (diverge_factor > 1):
        raise ValueError(f"diverge_factor: must be > 1, got {diverge_factor!r}")
    for name, values in (("lr_multipliers", lr_multipliers), ("alpha_multipliers", alpha_multipliers)):
        if any(not (isinstance(m, (int, float)) and m > 0) for m in values):
            raise ValueError(f"{name}: every multiplier must be a number > 0, got {list(values)!r}")
    base, X, Y = make_task(seed, width=width)
    runs = [("lr", m, base_lr * m, base_alpha) for m in lr_multipliers]
    runs += [("alpha", m, base_lr, base_alpha * m) for m in alpha_multipliers]
    threads = torch.get_num_threads()
    results = []
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        for kind, multiplier, lr, alpha in runs:
            losses = train_lora(base, X, Y, lr=lr, alpha=alpha, r=r, steps=steps, seed=seed)
            summary = summarize_losses(losses, diverge_factor * losses[0])
            results.append({"kind": kind, "multiplier": multiplier, "lr": lr, "alpha": alpha,
                            "initial_loss": losses[0], **summary})
    finally:
        torch.set_num_threads(threads)
    return results
