"""Scaling-law fits.

* ``fit_scaling_law``: L(N, D) = b*N^(-alpha) + c*D^(-beta) (no constant term), fitted in log space
  with a Huber loss, L-BFGS-B from a grid of starts (the hybrid-attention brief's protocol).
* ``fit_power_law`` / ``compute_ratio_at_equal_loss``: loss = A*C^(-a) per architecture and the
  compute (or average width, or any positive x) one architecture needs for another's loss
  (the xformer brief's loss-matched comparison).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from numbers import Real
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import minimize


# ----------------------------------------------------------------------------------------------
# L(N, D) = b N^-alpha + c D^-beta
# ----------------------------------------------------------------------------------------------


class ScalingFitWarning(UserWarning):
    """A scaling-law fit that the data cannot pin down (see ``ScalingFit.identifiable`` / ``at_bound``)."""


def _identifiable(x: np.ndarray, y: np.ndarray) -> bool:
    """Can log N (x) and log D (y) be told apart: two distinct values each and not collinear."""
    if np.unique(x).size < 2 or np.unique(y).size < 2:
        return False
    design = np.column_stack([np.ones_like(x), x - x.mean(), y - y.mean()])
    return np.linalg.matrix_rank(design, tol=1e-9 * max(1.0, float(np.abs(design).max()))) == 3


@dataclass(frozen=True)
class ScalingFit:
    """Result of ``fit_scaling_law``.

    Attributes:
        alpha, beta: fitted exponents (within their bounds).
        b, c: fitted coefficients (> 0).
        r2: coefficient of determination of log L on the training points.
        rmse: root-mean-square log residual (log L - log L_hat) on the training points
            (~ relative error of L).
        n_train, n_holdout: number of points used for the fit / held out.
        holdout_rmse: rms log residual on the held-out points (nan when nothing was held out).
        objective: final Huber objective (sum of Huber(r/delta), r = log residual).
        identifiable: False when the training points cannot separate the N and D terms (fewer than two
            distinct N or D, or log N and log D on one line); r2 then says nothing about the exponents.
        at_bound: names of the exponents ("alpha", "beta") that ended on a bound of their box; such an
            exponent was set by the bound, not by the data.
    """

    alpha: float
    beta: float
    b: float
    c: float
    r2: float
    rmse: float
    n_train: int
    n_holdout: int
    holdout_rmse: float
    objective: float = float("nan")
    identifiable: bool = True
    at_bound: tuple[str, ...] = ()

    @property
    def trustworthy(self) -> bool:
        """Identifiable and no exponent on a bound."""
        return self.identifiable and not self.at_bound

    def predict(self, N, D) -> np.ndarray:
        """Predicted loss b*N^-alpha + c*D^-beta; N, D broadcast (arrays or scalars)."""
        N = np.asarray(N, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        return np.exp(_log_pred(math.log(self.b), self.alpha, math.log(self.c), self.beta, np.log(N), np.log(D)))


def _log_pred(lb, alpha, lc, beta, x, y):
    return np.logaddexp(lb - alpha * x, lc - beta * y)


def _as_positive_1d(name: str, values) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 1-D sequence of positive numbers") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must contain only finite values > 0 (they are taken in log space)")
    return arr


def _check_bounds(name: str, bounds) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a pair (low, high) of finite numbers, got {bounds!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name} must be a pair (low, high) of finite numbers with low <= high, got {bounds!r}")
    return lo, hi


def _huber_objective(theta, x, y, z, delta):
    """Sum of Huber(r/delta) over log residuals r, and its gradient in theta = (lb, alpha, lc, beta).

    Dividing by delta keeps the objective O(1) per point: with delta = 1e-3 the raw Huber values are
    ~1e-7 and L-BFGS-B's absolute stopping tolerances would end the search almost immediately.
    """
    lb, alpha, lc, beta = theta
    u = lb - alpha * x
    v = lc - beta * y
    m = np.logaddexp(u, v)
    t = (z - m) / delta
    a = np.abs(t)
    loss = float(np.sum(np.where(a <= 1.0, 0.5 * t * t, a - 0.5)))
    psi = np.clip(t, -1.0, 1.0) / delta  # d loss / d r
    p = np.exp(u - m)  # d m / d u
    q = 1.0 - p  # d m / d v
    grad = -np.array(
        [np.sum(psi * p), np.sum(psi * p * -x), np.sum(psi * q), np.sum(psi * q * -y)], dtype=np.float64
    )
    return loss, grad


def _default_grid(alpha_bounds, beta_bounds, mean_log_loss, x_mean, y_mean):
    """Data-adaptive starts: exponents spread over their bounds, the two terms sharing the mean loss.

    Coefficients are set so that the prediction at the centroid (mean log N, mean log D) equals
    the geometric-mean loss, with the N-term taking a fraction f of it.
    """
    Lbar = math.exp(mean_log_loss)
    starts = []
    for alpha in np.linspace(*alpha_bounds, 3):
        for beta in np.linspace(*beta_bounds, 5):
            for f in (0.2, 0.5, 0.8):
                lb = math.log(f * Lbar) + alpha * x_mean
                lc = math.log((1.0 - f) * Lbar) + beta * y_mean
                starts.append((lb, float(alpha), lc, float(beta)))
    return starts


def _user_grid(init_grid) -> list[tuple[float, float, float, float]]:
    if isinstance(init_grid, Mapping):
        keys = ("log_b", "alpha", "log_c", "beta")
        missing = [k for k in keys if k not in init_grid]
        extra = [k for k in init_grid if k not in keys]
        if missing or extra:
            raise ValueError(
                f"init_grid mapping must have exactly the keys {keys} (each a sequence of values); "
                f"missing {missing}, unknown {extra}"
            )
        starts = list(itertools.product(*(list(np.atleast_1d(init_grid[k])) for k in keys)))
    else:
        starts = list(init_grid)
    out = []
    for s in starts:
        try:
            vals = tuple(float(v) for v in s)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"init_grid entries must be (log_b, alpha, log_c, beta), got {s!r}") from exc
        if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
            raise ValueError(f"init_grid entries must be 4 finite numbers (log_b, alpha, log_c, beta), got {s!r}")
        out.append(vals)
    if not out:
        raise ValueError("init_grid must contain at least one starting point")
    return out


def fit_scaling_law(
    N: Sequence[float],
    D: Sequence[float],
    L: Sequence[float],
    *,
    alpha_bounds: tuple[float, float] = (0.2, 0.3),
    beta_bounds: tuple[float, float] = (0.0, 2.0),
    huber_delta: float = 1e-3,
    holdout_largest: bool = False,
    init_grid: Iterable | Mapping | None = None,
) -> ScalingFit:
    """Fit L = b*N^(-alpha) + c*D^(-beta) to a table of runs.

    log L_hat = logsumexp(log b - alpha*log N, log c - beta*log D); minimise the Huber loss
    (threshold ``huber_delta``) of the residuals log L - log L_hat with L-BFGS-B over
    (log b, alpha, log c, beta), alpha and beta box-bounded, from every start of a grid; the best
    final objective wins.

    Args:
        N: (n,) parameter counts (> 0).
        D: (n,) training tokens (> 0).
        L: (n,) losses (> 0), e.g. validation loss or ln(LongPPL).
        alpha_bounds, beta_bounds: (low, high) bounds of the exponents.
        huber_delta: Huber threshold on log residuals (> 0).
        holdout_largest: exclude every point with the largest N from the fit and report its error.
        init_grid: starts as a sequence of (log_b, alpha, log_c, beta) tuples, or a mapping with those
            keys to sequences (Cartesian product). Default: 45 data-adaptive starts.

    Returns:
        ScalingFit.
    """
    N = _as_positive_1d("N", N)
    D = _as_positive_1d("D", D)
    L = _as_positive_1d("L", L)
    if not (N.size == D.size == L.size):
        raise ValueError(f"N, D and L must have the same length, got {N.size}, {D.size}, {L.size}")
    a_lo, a_hi = _check_bounds("alpha_bounds", alpha_bounds)
    b_lo, b_hi = _check_bounds("beta_bounds", beta_bounds)
    delta_ok = isinstance(huber_delta, Real) and not isinstance(huber_delta, bool)
    if not (delta_ok and math.isfinite(huber_delta) and huber_delta > 0):
        raise ValueError(f"huber_delta must be a finite number > 0, got {huber_delta!r}")

    if holdout_largest:
        if np.unique(N).size < 2:
            raise ValueError("holdout_largest needs at least two distinct values of N")
        hold = N == N.max()
    else:
        hold = np.zeros(N.size, dtype=bool)
    train = ~hold
    # Four free parameters: fewer points cannot determine the fit.
    if int(train.sum()) < 4:
        raise ValueError(
            f"need at least 4 points to fit (after holdout), got {int(train.sum())} of {N.size}"
        )

    x, y, z = np.log(N[train]), np.log(D[train]), np.log(L[train])
    # Centre log N and log D: (log b, alpha) are otherwise strongly correlated (log N ~ 20), which
    # slows L-BFGS-B. lb_c = lb - alpha*x0 is a linear change of variables; bounds are unchanged.
    x0, y0 = float(x.mean()), float(y.mean())
    xc, yc = x - x0, y - y0

    starts = (
        _default_grid((a_lo, a_hi), (b_lo, b_hi), float(z.mean()), x0, y0)
        if init_grid is None
        else _user_grid(init_grid)
    )
    bounds = [(None, None), (a_lo, a_hi), (None, None), (b_lo, b_hi)]
    best = None
    for lb, alpha, lc, beta in starts:
        alpha = min(max(alpha, a_lo), a_hi)
        beta = min(max(beta, b_lo), b_hi)
        theta0 = np.array([lb - alpha * x0, alpha, lc - beta * y0, beta])
        res = minimize(
            _huber_objective,
            theta0,
            args=(xc, yc, z, float(huber_delta)),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10},
        )
        if np.all(np.isfinite(res.x)) and np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise ValueError("scaling-law fit failed from every start of init_grid (non-finite objective)")

    lbc, alpha, lcc, beta = (float(v) for v in best.x)
    lb, lc = lbc + alpha * x0, lcc + beta * y0

    resid = z - _log_pred(lb, alpha, lc, beta, x, y)
    ss_tot = float(np.sum((z - z.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else float("nan")
    rmse = float(np.sqrt(np.mean(resid**2)))
    identifiable = _identifiable(x, y)
    # "On a bound" within a relative 1e-6 of the box width: L-BFGS-B lands exactly on an active bound.
    at_bound = tuple(name for name, v, lo, hi in (("alpha", alpha, a_lo, a_hi), ("beta", beta, b_lo, b_hi))
                     if min(v - lo, hi - v) <= 1e-6 * max(hi - lo, 1e-12))
    if not identifiable or at_bound:
        why = ("the points cannot separate N from D (fewer than two distinct N or D, or log N and log D "
               "collinear)" if not identifiable else f"{' and '.join(at_bound)} ended on a bound of its box")
        warnings.warn(f"scaling-law fit is not trustworthy: {why}; r2={r2:.4f} says nothing about the "
                      "exponents", ScalingFitWarning, stacklevel=2)
    if hold.any():
        hres = np.log(L[hold]) - _log_pred(lb, alpha, lc, beta, np.log(N[hold]), np.log(D[hold]))
        holdout_rmse = float(np.sqrt(np.mean(hres**2)))
    else:
        holdout_rmse = float("nan")
    return ScalingFit(
        alpha=alpha,
        beta=beta,
        b=math.exp(lb),
        c=math.exp(lc),
        r2=r2,
        rmse=rmse,
        n_train=int(train.sum()),
        n_holdout=int(hold.sum()),
        holdout_rmse=holdout_rmse,
        objective=float(best.fun),
        identifiable=identifiable,
        at_bound=at_bound,
    )


# ----------------------------------------------------------------------------------------------
# loss = A * C^-a
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLaw:
    """loss = A * C^(-a), fitted by least squares in log-log; r2 of log loss."""

    A: float
    a: float
    r2: float

    def predict(self, compute) -> np.ndarray:
        """Loss at compute (array or scalar, > 0)."""
        return self.A * np.asarray(compute, dtype=np.float64) ** (-self.a)

    def inverse(self, loss) -> np.ndarray:
        """Compute at which the fit reaches ``loss``: (A / loss)^(1/a)."""
        if self.a == 0:
            raise ValueError("cannot invert a power law with exponent a == 0 (loss does not depend on compute)")
        loss = np.asarray(loss, dtype=np.float64)
        if np.any(loss <= 0):
            raise ValueError("loss must be > 0 to invert the power law")
        return (self.A / loss) ** (1.0 / self.a)


def fit_power_law(compute: Sequence[float], loss: Sequence[float]) -> PowerLaw:
    """Fit loss = A*C^(-a) by ordinary least squares of log loss on log compute.

    Args:
        compute: (n,) positive x values (FLOPs, average width, ...), at least 2 distinct.
        loss: (n,) positive losses.
    """
    C = _as_positive_1d("compute", compute)
    y = np.log(_as_positive_1d("loss", loss))
    if C.size != y.size:
        raise ValueError(f"compute and loss must have the same length, got {C.size} and {y.size}")
    if C.size < 2 or np.unique(C).size < 2:
        raise ValueError("fit_power_law needs at least 2 points with distinct compute")
    x = np.log(C)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else float("nan")
    return PowerLaw(A=float(math.exp(intercept)), a=float(-slope), r2=r2)


def _points(name: str, pts) -> np.ndarray:
    try:
        arr = np.asarray(pts, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of (compute, loss) pairs") from exc
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be a sequence of (compute, loss) pairs, got shape {arr.shape}")
    return arr


def compute_ratio_at_equal_loss(
    baseline: Sequence[tuple[float, float]],
    candidate: Sequence[tuple[float, float]],
    target_loss: float | None = None,
) -> float:
    """Candidate compute / baseline compute needed for the same loss, from per-architecture power laws.

    Both compute values come from the fits (C = inverse(target_loss)), so the ratio is
    consistent even when the target is not exactly on the baseline's fit. Works with any positive
    x in place of compute (e.g. average width).

    Args:
        baseline, candidate: sequences of (compute, loss) points, >= 2 each.
        target_loss: loss to compare at; default the baseline's observed loss at its largest compute.

    Returns:
        float ratio (< 1: the candidate needs less compute).
    """
    base = _points("baseline", baseline)
    cand = _points("candidate", candidate)
    fb = fit_power_law(base[:, 0], base[:, 1])
    fc = fit_power_law(cand[:, 0], cand[:, 1])
    if target_loss is None:
        target_loss = float(base[np.argmax(base[:, 0]), 1])
    elif not (
        isinstance(target_loss, Real)
        and not isinstance(target_loss, bool)
        and math.isfinite(target_loss)
        and target_loss > 0
    ):
        raise ValueError(f"target_loss must be a finite number > 0 or None, got {target_loss!r}")
    return float(fc.inverse(target_loss) / fb.inverse(target_loss))
