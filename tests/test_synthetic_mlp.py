"""Synthetic 5-layer MLP (claim 7): determinism, divergence detection, reported fields, task construction."""

from __future__ import annotations

import math

import pytest
import torch


# losses, bound → (final_loss, max_loss, diverged)
SUMMARY_TABLE = [
    ([1.0, 0.5, 0.2], 10.0, (0.2, 1.0, False)),
    ([1.0, 3.0, 0.2], 10.0, (0.2, 3.0, False)),
    ([1.0, 11.0, 0.2], 10.0, (0.2, 11.0, True)),  # recovered, but blew past the bound on the way
    ([1.0, 2.0, math.nan], 10.0, (math.inf, math.inf, True)),  # non-finite: reported as inf
    ([1.0, math.inf], 10.0, (math.inf, math.inf, True)),
    ([1.0, 10.0], 10.0, (10.0, 10.0, False)),  # the bound itself is allowed
]


@pytest.mark.parametrize("losses,bound,expected", SUMMARY_TABLE)
def test_divergence_detection(losses, bound, expected):
    from lmrepro.lora.synthetic_mlp import summarize_losses

    summary = summarize_losses(losses, bound)
    assert (summary["final_loss"], summary["max_loss"], summary["diverged"]) == expected


def test_task_is_a_five_layer_low_rank_shift():
    from lmrepro.lora.synthetic_mlp import make_task

    base, X, Y = make_task(seed=3, width=16, n=64, task_rank=2)
    assert len(base.layers) == 5 and X.shape == Y.shape == (64, 16)
    _, _, Y_again = make_task(seed=3, width=16, n=64, task_rank=2)
    torch.testing.assert_close(Y, Y_again, rtol=0, atol=0)
    with torch.no_grad():
        gap = torch.mean((base(X) - Y) ** 2)
    assert gap > 1e-3  # the student starts away from the teacher


def test_runs_are_deterministic_and_report_the_documented_fields():
    from lmrepro.lora.synthetic_mlp import FIELDS, run_mlp_experiment

    kwargs = dict(lr_multipliers=(1, 4), alpha_multipliers=(16,), base_lr=1e-3, base_alpha=8.0, r=2, steps=15,
                  seed=1, width=16)
    first, second = run_mlp_experiment(**kwargs), run_mlp_experiment(**kwargs)
    assert first == second
    assert [(row["kind"], row["multiplier"]) for row in first] == [("lr", 1), ("lr", 4), ("alpha", 16)]
    for row in first:
        assert tuple(row) == FIELDS
        assert row["final_loss"] < row["initial_loss"]  # 15 small AdamW steps make progress
    assert (first[1]["lr"], first[1]["alpha"]) == (4e-3, 8.0)
    assert (first[2]["lr"], first[2]["alpha"]) == (1e-3, 128.0)
    assert len({row["initial_loss"] for row in first}) == 1  # B = 0: every run starts from the base model


def test_a_huge_learning_rate_is_flagged_and_threads_are_restored():
    from lmrepro.lora.synthetic_mlp import run_mlp_experiment

    threads = torch.get_num_threads()
    (row,) = run_mlp_experiment(lr_multipliers=(10_000,), alpha_multipliers=(), base_lr=1e-3, steps=20,
                                width=16, r=2)
    assert row["diverged"] and row["max_loss"] > 10 * row["initial_loss"]
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="lr_multipliers: every multiplier must be a number > 0"):
        run_mlp_experiment(lr_multipliers=(0,), steps=1)
    with pytest.raises(ValueError, match="diverge_factor: must be > 1"):
        run_mlp_experiment(diverge_factor=0.5, steps=1)
