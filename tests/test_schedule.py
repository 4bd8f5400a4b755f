"""Learning-rate schedules: warmup ramp, peak, floor at the end, WSD plateau, monotonicity."""

import math

import pytest
import torch

from lmrepro.config import TrainConfig
from lmrepro.train import lr_multiplier


def config(schedule, warmup_fraction=0.1, min_lr_ratio=0.1, decay_fraction=0.2):
    return TrainConfig(seq_len=8, batch_size=1, micro_batch_size=1, max_tokens=8, lr=1e-3, schedule=schedule,
                       warmup_fraction=warmup_fraction, min_lr_ratio=min_lr_ratio, decay_fraction=decay_fraction)


def curve(cfg, total):
    return [lr_multiplier(s, total, cfg) for s in range(total)]


CASES = [  # (schedule, total_steps, warmup_fraction, min_lr_ratio, decay_fraction)
    ("cosine", 100, 0.1, 0.1, 0.2),
    ("cosine", 37, 0.05, 0.0, 0.2),
    ("cosine", 11, 0.0, 0.25, 0.2),
    ("cosine", 3, 0.0, 0.1, 0.2),
    ("wsd", 100, 0.1, 0.1, 0.2),
    ("wsd", 41, 0.05, 0.0, 0.3),
    ("wsd", 13, 0.0, 0.5, 0.25),
    ("wsd", 20, 0.1, 0.1, 0.9),  # decay spans everything after warmup
    ("wsd", 3, 0.5, 0.1, 0.5),  # rounding makes warmup and decay overlap: decay starts after warmup
    ("constant", 100, 0.1, 0.1, 0.2),
    ("constant", 9, 0.0, 0.1, 0.2),
]


@pytest.mark.parametrize("schedule, total, warmup_fraction, floor, decay_fraction", CASES)
def test_schedule_shape(schedule, total, warmup_fraction, floor, decay_fraction):
    cfg = config(schedule, warmup_fraction, floor, decay_fraction)
    lrs = curve(cfg, total)
    warmup = int(round(warmup_fraction * total))

    # Warmup ramps linearly from 1/warmup and reaches exactly 1 on its last step.
    for s in range(warmup):
        assert lrs[s] == pytest.approx((s + 1) / warmup, abs=1e-12)
    # Peak is exactly 1, reached at the end of warmup (or at step 0 without warmup), never exceeded.
    assert max(lrs) == pytest.approx(1.0, abs=1e-12)
    assert lrs[max(warmup - 1, 0)] == pytest.approx(1.0, abs=1e-12)
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in lrs)
    after = lrs[warmup:]
    # Never increases after warmup; never below the floor.
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:]))
    assert min(after) >= floor - 1e-12
    if schedule == "constant":
        assert after == [1.0] * len(after)
    else:
        assert lrs[-1] == pytest.approx(floor, abs=1e-12)  # the last step runs at the floor


@pytest.mark.parametrize("total, warmup_fraction, floor", [(100, 0.1, 0.1), (51, 0.0, 0.0), (24, 0.25, 0.3)])
def test_cosine_is_a_half_cosine_between_peak_and_floor(total, warmup_fraction, floor):
    cfg = config("cosine", warmup_fraction, floor)
    warmup = int(round(warmup_fraction * total))
    span = total - 1 - warmup
    for s in range(warmup, total):
        expected = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / span))
        assert lr_multiplier(s, total, cfg) == pytest.approx(expected, abs=1e-12)
    assert lr_multiplier(warmup, total, cfg) == pytest.approx(1.0)
    # Strictly decreasing after warmup (cosine has no plateau).
    after = curve(cfg, total)[warmup:]
    assert all(b < a for a, b in zip(after, after[1:]))


@pytest.mark.parametrize("total, warmup_fraction, decay_fraction, floor", [(100, 0.1, 0.2, 0.1), (33, 0.0, 0.3, 0.0),
                                                                            (10, 0.2, 0.5, 0.2)])
def test_wsd_is_flat_then_decays_linearly(total, warmup_fraction, decay_fraction, floor):
    cfg = config("wsd", warmup_fraction, floor, decay_fraction)
    lrs = curve(cfg, total)
    warmup = int(round(warmup_fraction * total))
    decay = int(round(decay_fraction * total))
    start = total - decay
    assert lrs[warmup:start] == [1.0] * (start - warmup)  # stable phase: exactly the peak
    tail = lrs[start - 1:]  # last stable step, then the decay steps
    steps = [a - b for a, b in zip(tail, tail[1:])]
    assert all(d == pytest.approx((1 - floor) / decay, abs=1e-12) for d in steps)  # linear, equal decrements
    assert lrs[-1] == pytest.approx(floor, abs=1e-12)


def test_wsd_without_decay_stays_at_peak():
    lrs = curve(config("wsd", 0.1, 0.1, decay_fraction=0.0), 50)
    assert lrs[5:] == [1.0] * 45


def test_single_step_run_uses_full_lr():
    for schedule in ("cosine", "wsd", "constant"):
        assert lr_multiplier(0, 1, config(schedule, warmup_fraction=0.0)) == 1.0


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_lambda_lr_applies_the_multiplier_per_optimizer_step(schedule):
    """The trainer's wiring: LambdaLR(partial(lr_multiplier)) gives lr × multiplier at each step."""
    from functools import partial

    cfg, total = config(schedule), 30
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_multiplier, total_steps=total, cfg=cfg))
    seen = []
    for _ in range(total):
        seen.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert seen == pytest.approx([cfg.lr * m for m in curve(cfg, total)], rel=1e-12)
