"""Width schedules of the ><former (xformer brief): shape, symmetry, bottleneck, parameter matching."""

import math

import numpy as np
import pytest

from lmrepro.models.width import (
    BLOCK_PARAM_FACTOR,
    SHAPES,
    budget_deviation,
    matched_widths,
    rematch_widths,
    schedule_budget,
    shape_ok,
    wasted_parameters,
    width_schedule,
    x_profile,
)

V_PAPER = 100263
PAPER = [(16, 640), (24, 960), (32, 1280), (40, 1600)]  # (layers, h) of the 200M..2B models
SMALL = [(3, 64, 1000), (4, 64, 1000), (7, 96, 500), (12, 128, 4096), (13, 256, 32000)]


def _baseline_budget(L, h, V):
    return 2 * V * h + L * BLOCK_PARAM_FACTOR * h * h


@pytest.mark.parametrize("L,h", PAPER)
def test_x_profile_paper_configs(L, h):
    prof = x_profile(h, L, V_PAPER)
    w = np.array(prof.widths)
    lstar = prof.bottleneck_layer
    assert lstar == round(0.75 * L)
    # Symmetric ends before rounding.
    assert w[0] == pytest.approx(w[-1], rel=1e-12)
    # Continuous minimum sits at l* (1-indexed) and equals 0.3 h.
    assert int(np.argmin(w)) == lstar - 1
    assert w.min() == pytest.approx(0.3 * h, rel=1e-9)
    # Geometric: constant ratio alpha_minus up to l*, alpha_plus after, tied by the symmetry rule.
    ratios = w[1:] / w[:-1]
    np.testing.assert_allclose(ratios[: lstar - 1], prof.alpha_minus, rtol=1e-10)
    np.testing.assert_allclose(ratios[lstar - 1 :], prof.alpha_plus, rtol=1e-10)
    assert prof.alpha_minus < 1 < prof.alpha_plus
    assert prof.alpha_plus == pytest.approx(prof.alpha_minus ** (-(lstar - 1) / (L - lstar)), rel=1e-12)
    # Parameter budget matched exactly before rounding (<= 0.5% required).
    base = _baseline_budget(L, h, V_PAPER)
    assert schedule_budget(w, h, V_PAPER) == pytest.approx(base, rel=1e-9)


@pytest.mark.parametrize("L,h", PAPER)
def test_width_schedule_paper_configs(L, h):
    prof = x_profile(h, L, V_PAPER)
    widths = width_schedule(h, L, V_PAPER)
    lstar = prof.bottleneck_layer
    assert len(widths) == L and all(isinstance(x, int) for x in widths)
    assert all(x % 32 == 0 for x in widths)
    assert widths[0] == widths[-1]
    # Monotone down to the bottleneck, then up (non-strict after rounding, strict before).
    assert all(a >= b for a, b in zip(widths[: lstar - 1], widths[1:lstar]))
    assert all(a <= b for a, b in zip(widths[lstar - 1 :], widths[lstar:]))
    assert widths[0] > widths[lstar - 1] < widths[-1]
    base = _baseline_budget(L, h, V_PAPER)
    drift = schedule_budget(widths, h, V_PAPER) / base - 1
    save_cont = 1 - np.mean(prof.widths) / h
    save_round = 1 - np.mean(widths) / h
    print(
        f"\n{L}x{h}: widths={widths}\n  alpha-={prof.alpha_minus:.5f} alpha+={prof.alpha_plus:.5f} "
        f"avg-width saving continuous={save_cont:.2%} rounded={save_round:.2%} "
        f"budget drift after rounding={drift:+.3%}"
    )
    # Brief: the ><former saves ~10-11% average width at equal parameters.
    assert 0.09 <= save_cont <= 0.12
    assert 0.09 <= save_round <= 0.12
    # Rounding to multiples of 32 moves the budget by well under 1%.
    assert abs(drift) < 0.01


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("L,h,V", [(2, 64, 100), (16, 640, V_PAPER), (7, 96, 500)])
def test_ratio_one_is_baseline(shape, L, h, V):
    assert width_schedule(h, L, V, shape=shape, bottleneck_ratio=1.0) == [h] * L
    assert x_profile(h, L, V, shape=shape, bottleneck_ratio=1.0).widths == tuple([float(h)] * L)


@pytest.mark.parametrize("L,h,V", SMALL)
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.9])
def test_x_small_configs(L, h, V, ratio):
    prof = x_profile(h, L, V, bottleneck_ratio=ratio)
    w = np.array(prof.widths)
    assert w[0] == pytest.approx(w[-1], rel=1e-12)
    assert w.min() == pytest.approx(ratio * h, rel=1e-9)
    assert np.all(np.diff(w[: prof.bottleneck_layer]) < 0) and np.all(np.diff(w[prof.bottleneck_layer - 1 :]) > 0)
    assert schedule_budget(w, h, V) == pytest.approx(_baseline_budget(L, h, V), rel=1e-9)
    widths = width_schedule(h, L, V, bottleneck_ratio=ratio, quantize=16)
    assert all(x % 16 == 0 and x > 0 for x in widths)
    # Rounded widths are the nearest multiples of the continuous ones.
    assert all(abs(a - b) <= 8 + 1e-9 for a, b in zip(widths, w))


@pytest.mark.parametrize("lstar", [2, 5, 9])
def test_custom_bottleneck_layer(lstar):
    prof = x_profile(256, 10, 1000, bottleneck_layer=lstar)
    w = np.array(prof.widths)
    assert prof.bottleneck_layer == lstar
    assert int(np.argmin(w)) == lstar - 1
    assert w.min() == pytest.approx(0.3 * 256, rel=1e-9)
    assert w[0] == pytest.approx(w[-1], rel=1e-12)


@pytest.mark.parametrize("L,h,V", [(24, 960, V_PAPER), (6, 128, 1000), (9, 64, 300)])
def test_other_shapes(L, h, V):
    base = _baseline_budget(L, h, V)
    for shape in ("diamond", "increasing", "decreasing"):
        prof = x_profile(h, L, V, shape=shape, bottleneck_ratio=0.3)
        w = np.array(prof.widths)
        assert schedule_budget(w, h, V) == pytest.approx(base, rel=1e-9), shape
        assert w.min() == pytest.approx(0.3 * h, rel=1e-9), shape
        rounded = width_schedule(h, L, V, shape=shape, bottleneck_ratio=0.3, quantize=32)
        assert all(x % 32 == 0 and x > 0 for x in rounded)
        if shape == "diamond":
            lstar = prof.bottleneck_layer
            # Narrow ends (= ratio*h), widest at l*.
            assert w[0] == pytest.approx(w[-1], rel=1e-12)
            assert w[0] == pytest.approx(0.3 * h, rel=1e-9)
            assert int(np.argmax(w)) == lstar - 1
            assert prof.alpha_minus > 1 > prof.alpha_plus
            assert w.max() > h
        elif shape == "increasing":
            assert np.all(np.diff(w) > 0) and w[0] == pytest.approx(0.3 * h, rel=1e-9) and w[-1] > h
            assert prof.alpha_minus == prof.alpha_plus > 1
        else:
            assert np.all(np.diff(w) < 0) and w[-1] == pytest.approx(0.3 * h, rel=1e-9) and w[0] > h
            assert prof.alpha_minus == prof.alpha_plus < 1


def test_num_heads_divisibility():
    widths = width_schedule(640, 16, V_PAPER, quantize=32, num_heads=16)
    assert all(w % 16 == 0 for w in widths)
    with pytest.raises(ValueError, match=r"layer \d+ has width \d+.*num_heads=64.*quantize"):
        width_schedule(640, 16, V_PAPER, quantize=32, num_heads=64)
    assert all(w % 64 == 0 for w in width_schedule(640, 16, V_PAPER, quantize=64, num_heads=64))


def test_wasted_parameters_hand_computed():
    # w_1 = 10 > h = 8: 3*(10-8)*10 = 60; w_L = 12: 4*(12-8)*12 = 192.
    assert wasted_parameters([10, 5, 12], 8) == 252
    # Ends narrower than h waste nothing (diamond): each term clamps at zero.
    assert wasted_parameters([6, 20, 7], 8) == 0
    assert wasted_parameters([8, 8], 8) == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_layers=1), "num_layers"),
        (dict(num_layers=2), "bottleneck_layer"),  # x needs a turning layer in [2, L-1]
        (dict(bottleneck_layer=1), "bottleneck_layer"),
        (dict(bottleneck_layer=16), "bottleneck_layer"),
        (dict(bottleneck_ratio=0.0), "bottleneck_ratio"),
        (dict(bottleneck_ratio=-0.3), "bottleneck_ratio"),
        (dict(bottleneck_ratio=1.5), "bottleneck_ratio"),
        (dict(bottleneck_ratio=float("nan")), "bottleneck_ratio"),
        (dict(shape="bowtie"), "shape"),
        (dict(shape="increasing", bottleneck_layer=5), "bottleneck_layer"),
        (dict(quantize=0), "quantize"),
        (dict(quantize=48), "quantize"),  # does not divide h = 640
        (dict(hidden_size=0), "hidden_size"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(num_heads=0), "num_heads"),
        (dict(bottleneck_ratio=0.02, quantize=64), "width 0"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = dict(hidden_size=640, num_layers=16, vocab_size=V_PAPER)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        width_schedule(**args)


def test_impossible_matching_raises():
    with pytest.raises(ValueError, match="block_factor"):
        x_profile(64, 4, 100, block_factor=3)


def test_default_bottleneck_rounds_half_up():
    # 0.75 * 6 = 4.5 -> 5 (half up, not Python's round-half-to-even 4).
    assert x_profile(64, 6, 100).bottleneck_layer == 5
    assert math.isclose(min(x_profile(64, 6, 100).widths), 0.3 * 64, rel_tol=1e-9)


# ---------------------------------------------------------------------- shapes kept after rounding


@pytest.mark.parametrize("widths, shape, turning, ok", [
    ([8, 6, 4, 2, 4, 8], "x", 4, True), ([8, 6, 4, 5, 4, 8], "x", 4, False), ([8, 8, 4, 4, 4, 8], "x", 4, True),
    ([2, 4, 8, 4, 2], "diamond", 3, True), ([2, 4, 8, 9, 2], "diamond", 3, False),
    ([1, 2, 2, 3], "increasing", 1, True), ([1, 3, 2], "increasing", 1, False),
    ([3, 2, 2, 1], "decreasing", 3, True), ([3, 1, 2], "decreasing", 3, False),
])
def test_shape_ok(widths, shape, turning, ok):
    assert shape_ok(widths, shape, turning) is ok


@pytest.mark.parametrize("h, shape", [(64, "x"), (96, "x"), (96, "diamond"), (96, "increasing"), (128, "decreasing")])
def test_rematch_never_worsens_and_keeps_the_shape(h, shape):
    lstar = 6 if shape in ("x", "diamond") else None
    raw = width_schedule(h, 8, 4096, shape=shape, bottleneck_layer=lstar, quantize=16, num_heads=4)
    turning = {"x": 6, "diamond": 6, "increasing": 1, "decreasing": 8}[shape]
    fixed = rematch_widths(raw, h, 4096, shape, turning, 16)
    assert abs(budget_deviation(fixed, h, 4096)) <= abs(budget_deviation(raw, h, 4096))
    assert shape_ok(fixed, shape, turning) and all(w % 16 == 0 and w >= 16 for w in fixed)
    if shape == "x":
        assert fixed[0] == fixed[-1]


def test_rematch_fixes_a_coarse_rounding():
    # h = 64, quantize 16: rounding alone leaves the X model +5% over budget.
    raw = [112, 80, 48, 32, 32, 16, 48, 112]
    assert budget_deviation(raw, 64, 4096) > 0.04
    fixed = matched_widths(64, 8, 4096, "x", ratio=0.3, turning=6, quantize=16, num_heads=4)
    assert abs(budget_deviation(fixed, 64, 4096)) < 0.005 and min(fixed) == 16
