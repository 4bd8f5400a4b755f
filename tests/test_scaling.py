"""Scaling-law fits: L(N, D) Huber fit, per-architecture power laws, loss-matched compute ratios."""

import numpy as np
import pytest

from lmrepro.analysis.flops import average_width, training_flops
from lmrepro.analysis.scaling import (
    ScalingFitWarning,
    PowerLaw,
    ScalingFit,
    compute_ratio_at_equal_loss,
    fit_power_law,
    fit_scaling_law,
)
from lmrepro.models.width import width_schedule

V_PAPER = 100263
# (layers, h, tokens, baseline loss, ><former loss) from the xformer brief.
PAPER_TABLE = [
    (16, 640, 10e9, 3.452, 3.430),
    (24, 960, 25e9, 3.138, 3.099),
    (32, 1280, 50e9, 2.926, 2.890),
    (40, 1600, 100e9, 2.751, 2.726),
]


def _grid(n_sizes=5, n_tokens=4):
    N, D = np.meshgrid(np.geomspace(1e7, 1e9, n_sizes), np.geomspace(1e9, 1e11, n_tokens), indexing="ij")
    return N.ravel(), D.ravel()


def _law(N, D, b, alpha, c, beta):
    return b * N ** (-alpha) + c * D ** (-beta)


TRUTHS = [(400.0, 0.25, 2000.0, 0.3), (50.0, 0.22, 300.0, 0.15), (900.0, 0.28, 40000.0, 0.5)]


@pytest.mark.parametrize("b,alpha,c,beta", TRUTHS)
def test_recovers_noiseless(b, alpha, c, beta):
    N, D = _grid()
    fit = fit_scaling_law(N, D, _law(N, D, b, alpha, c, beta))
    assert isinstance(fit, ScalingFit)
    assert fit.alpha == pytest.approx(alpha, rel=1e-6)
    assert fit.beta == pytest.approx(beta, rel=1e-6)
    assert fit.b == pytest.approx(b, rel=1e-5)
    assert fit.c == pytest.approx(c, rel=1e-5)
    assert fit.rmse < 1e-9 and fit.r2 == pytest.approx(1.0)
    assert fit.n_train == N.size and fit.n_holdout == 0 and np.isnan(fit.holdout_rmse)
    np.testing.assert_allclose(fit.predict(N, D), _law(N, D, b, alpha, c, beta), rtol=1e-8)


def test_recovers_noisy_loosely():
    rng = np.random.default_rng(0)
    N, D = _grid(6, 5)
    L = _law(N, D, 400.0, 0.25, 2000.0, 0.3) * np.exp(rng.normal(0.0, 0.003, N.size))
    fit = fit_scaling_law(N, D, L)
    assert fit.alpha == pytest.approx(0.25, abs=0.02)
    assert fit.beta == pytest.approx(0.3, abs=0.05)
    assert fit.rmse < 0.01 and fit.r2 > 0.99


def test_bounds_respected_when_truth_outside():
    N, D = _grid()
    with pytest.warns(ScalingFitWarning, match="alpha ended on a bound"):
        fit = fit_scaling_law(N, D, _law(N, D, 3000.0, 0.4, 2000.0, 0.3))
    assert 0.2 <= fit.alpha <= 0.3
    assert fit.alpha == pytest.approx(0.3)  # pinned at the nearest bound, and flagged
    assert fit.at_bound == ("alpha",) and fit.identifiable and not fit.trustworthy
    assert 0.0 <= fit.beta <= 2.0
    with pytest.warns(ScalingFitWarning, match="beta ended on a bound"):
        fit = fit_scaling_law(N, D, _law(N, D, 400.0, 0.25, 2000.0, 0.3), beta_bounds=(0.5, 1.0))
    assert fit.beta == pytest.approx(0.5) and fit.at_bound == ("beta",)


def test_holdout_largest():
    N, D = _grid()
    L = _law(N, D, 400.0, 0.25, 2000.0, 0.3)
    fit = fit_scaling_law(N, D, L, holdout_largest=True)
    assert fit.n_holdout == 4 and fit.n_train == N.size - 4
    assert fit.holdout_rmse < 1e-8
    # A held-out point off the law shows up in the holdout error only.
    L2 = L.copy()
    L2[N == N.max()] *= 1.05
    fit2 = fit_scaling_law(N, D, L2, holdout_largest=True)
    assert fit2.rmse < 1e-9
    assert fit2.holdout_rmse == pytest.approx(np.log(1.05), rel=1e-6)


def test_init_grid_forms():
    N, D = _grid()
    L = _law(N, D, 400.0, 0.25, 2000.0, 0.3)
    f1 = fit_scaling_law(N, D, L, init_grid=[(np.log(100.0), 0.2, np.log(100.0), 0.5)])
    f2 = fit_scaling_law(
        N, D, L, init_grid={"log_b": [3.0, 6.0], "alpha": [0.25], "log_c": [5.0, 8.0], "beta": [0.2]}
    )
    for f in (f1, f2):
        assert f.alpha == pytest.approx(0.25, rel=1e-4) and f.beta == pytest.approx(0.3, rel=1e-4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(N=[1e7, -1e8, 1e9, 1e9], D=[1e9] * 4, L=[3.0] * 4), "N"),
        (dict(N=[1e7, 1e8, 1e9, 1e9], D=[1e9, 0, 1e9, 1e9], L=[3.0] * 4), "D"),
        (dict(N=[1e7, 1e8, 1e9, 1e9], D=[1e9] * 4, L=[3.0, 3.0, np.nan, 3.0]), "L"),
        (dict(N=[1e7, 1e8, 1e9], D=[1e9] * 4, L=[3.0] * 4), "same length"),
        (dict(N=[1e7, 1e8, 1e9], D=[1e9] * 3, L=[3.0] * 3), "at least 4"),
        (dict(N=[1e7, 1e8, 1e9, 1e9], D=[1e9] * 4, L=[3.0] * 4, holdout_largest=True), "at least 4"),
        (dict(N=[1e7, 1e8, 1e9, 1e9], D=[1e9] * 4, L=[3.0] * 4, alpha_bounds=(0.3, 0.2)), "alpha_bounds"),
        (dict(N=[1e7, 1e8, 1e9, 1e9], D=[1e9] * 4, L=[3.0] * 4, huber_delta=0), "huber_delta"),
        (dict(N=[1e7, 1e8, 1e9, 1e9], D=[1e9] * 4, L=[3.0] * 4, init_grid={"alpha": [0.2]}), "init_grid"),
    ],
)
def test_fit_scaling_law_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_scaling_law(**kwargs)


def test_power_law_exact():
    C = np.geomspace(1e18, 1e22, 5)
    fit = fit_power_law(C, 30.0 * C ** (-0.05))
    assert isinstance(fit, PowerLaw)
    assert fit.A == pytest.approx(30.0, rel=1e-9) and fit.a == pytest.approx(0.05, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.inverse(fit.predict(3e20)) == pytest.approx(3e20, rel=1e-9)
    with pytest.raises(ValueError, match="compute"):
        fit_power_law([1.0, 0.0], [2.0, 1.0])
    with pytest.raises(ValueError, match="distinct"):
        fit_power_law([1.0, 1.0], [2.0, 1.0])
    with pytest.raises(ValueError, match="same length"):
        fit_power_law([1.0, 2.0], [2.0])


@pytest.mark.parametrize("A_c,a_c", [(27.0, 0.05), (28.0, 0.052)])
def test_compute_ratio_synthetic(A_c, a_c):
    A_b, a_b = 30.0, 0.05
    C = np.geomspace(1e18, 1e22, 4)
    base = [(c, A_b * c ** (-a_b)) for c in C]
    cand = [(c, A_c * c ** (-a_c)) for c in C]
    target = A_b * C[-1] ** (-a_b)
    expected = (A_c / target) ** (1 / a_c) / C[-1]
    assert compute_ratio_at_equal_loss(base, cand) == pytest.approx(expected, rel=1e-8)
    t = 2.0
    expected_t = (A_c / t) ** (1 / a_c) / (A_b / t) ** (1 / a_b)
    assert compute_ratio_at_equal_loss(base, cand, target_loss=t) == pytest.approx(expected_t, rel=1e-8)
    with pytest.raises(ValueError, match="target_loss"):
        compute_ratio_at_equal_loss(base, cand, target_loss=-1.0)
    with pytest.raises(ValueError, match="pairs"):
        compute_ratio_at_equal_loss([1.0, 2.0], cand)


def test_paper_table_loss_matched_ratios():
    base_c, x_c, base_w, x_w = [], [], [], []
    for L, h, tokens, loss_b, loss_x in PAPER_TABLE:
        widths = width_schedule(h, L, V_PAPER)
        base_c.append((training_flops([h] * L, h, V_PAPER, 4096, tokens), loss_b))
        x_c.append((training_flops(widths, h, V_PAPER, 4096, tokens), loss_x))
        base_w.append((float(h), loss_b))
        x_w.append((average_width(widths), loss_x))
    flop_ratio = compute_ratio_at_equal_loss(base_c, x_c)
    width_ratio = compute_ratio_at_equal_loss(base_w, x_w)
    print(
        f"\n><former at the 2B baseline's loss (2.751): FLOP ratio {flop_ratio:.3f} "
        f"({1 - flop_ratio:.1%} fewer; brief ~22%), avg-width ratio {width_ratio:.3f} "
        f"({1 - width_ratio:.1%} lower; brief ~15%)"
    )
    assert 0.70 <= flop_ratio <= 0.85
    assert 0.80 <= width_ratio <= 0.90
