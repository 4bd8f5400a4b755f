"""Per-block width schedules for variable-width ("><former") transformers.

Implements the generator of the xformer brief (``shared/papers/xformer.md``):

* widths are geometric in depth: ``w_l = a_minus * w_{l-1}`` for ``1 < l <= l*`` and
  ``w_l = a_plus * w_{l-1}`` for ``l > l*`` (layers are 1-indexed, ``l*`` is the turning layer);
* symmetric ends for the two-segment shapes: ``a_plus = a_minus ** (-(l*-1)/(L-l*))`` so ``w_1 == w_L``;
* parameter matching with ``K = 16`` parameters per ``w**2`` of a dense block: ``w_1`` solves

      2*V*h + K * sum_l w_l**2 - wasted(w) = 2*V*h + L*K*h**2,
      wasted(w) = 3*(w_1 - h)*w_1 + 4*(w_L - h)*w_L

  (the embedding / LM-head term ``2*V*h`` is on both sides and cancels, so ``V`` only enters the
  reported budget);
* the free exponent is found by bisection so that the *continuous* minimum width equals
  ``bottleneck_ratio * h``, re-solving ``w_1`` at every step;
* finally every width is rounded to the nearest multiple of ``quantize``; rounding moves the matched
  budget, which :func:`matched_widths` (with :func:`rematch_widths`) restores while keeping the shape.

Shapes and what ``bottleneck_ratio`` means (our choice, one rule for all shapes: the continuous
*minimum* width of the profile is ``bottleneck_ratio * h``):

=============  ==========================  ===========================================
shape          profile                     where the minimum (= ratio*h) sits
=============  ==========================  ===========================================
``x``          a_minus < 1 < a_plus        the turning layer l* (narrow middle)
``diamond``    a_minus > 1 > a_plus        both ends, w_1 == w_L (wide middle, peak at l*)
``increasing`` w_l = a*w_{l-1}, a > 1      the first layer
``decreasing`` w_l = a*w_{l-1}, a < 1      the last layer
=============  ==========================  ===========================================

``diamond`` uses the same turning layer (default ``round(0.75*L)``) as ``x``, i.e. it is the same
generator with the exponents inverted. ``increasing`` is the generator with ``l* = 1`` (only the
``a_plus`` segment) and ``decreasing`` the generator with ``l* = L`` (only the ``a_minus``
segment); both are parameter-matched the same way.

``wasted`` counts parameters that can never receive signal. They exist only where a boundary block
is *wider* than ``h`` (coordinates ``[h, w_1)`` are always zero at the input of block 1; rows
``[h, w_L)`` of the last down-projection are cut before the LM head), so for shapes whose end
blocks are narrower than ``h`` (diamond, the narrow end of increasing/decreasing) we clamp each
term at zero. For ``x`` (``w_1 = w_L > h``) this is exactly the brief's formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Sequence

import numpy as np

#: Parameters per ``w**2`` of a dense block: 4 attention projections + 3 SwiGLU matrices of w x 4w.
BLOCK_PARAM_FACTOR = 16

SHAPES = ("x", "diamond", "increasing", "decreasing")

# The continuous minimum is matched to this relative precision by the bisection.
_BISECT_RTOL = 1e-13


@dataclass(frozen=True)
class WidthProfile:
    """Continuous (pre-rounding) width profile.

    Attributes:
        widths: tuple of L floats, block widths w_1..w_L before rounding.
        alpha_minus: growth factor for 1 < l <= l* (for ``increasing``/``decreasing`` the single
            geometric factor a, also stored in ``alpha_plus``).
        alpha_plus: growth factor for l > l*.
        bottleneck_layer: the 1-indexed turning layer l* (1 for ``increasing``, L for ``decreasing``).
        shape: one of ``SHAPES``.
    """

    widths: tuple[float, ...]
    alpha_minus: float
    alpha_plus: float
    bottleneck_layer: int
    shape: str


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_ratio(bottleneck_ratio) -> float:
    if isinstance(bottleneck_ratio, bool) or not isinstance(bottleneck_ratio, Real):
        raise ValueError(f"bottleneck_ratio must be a number in (0, 1], got {bottleneck_ratio!r}")
    r = float(bottleneck_ratio)
    # A minimum width above h cannot be parameter-matched (every block would be wider than the
    # baseline), so the allowed range is (0, 1]; 1 is the constant-width baseline.
    if not math.isfinite(r) or r <= 0.0 or r > 1.0:
        raise ValueError(
            f"bottleneck_ratio must be in (0, 1] (minimum width relative to hidden_size; "
            f"1.0 = constant-width baseline), got {bottleneck_ratio!r}"
        )
    return r


def default_bottleneck_layer(num_layers: int) -> int:
    """The paper's recipe l* = 0.75*L, rounded half up (1-indexed)."""
    return int(math.floor(0.75 * num_layers + 0.5))


def _resolve_bottleneck_layer(shape: str, num_layers: int, bottleneck_layer) -> int:
    if shape == "increasing" or shape == "decreasing":
        # Monotone shapes have no turning layer; silently ignoring one would hide a config error.
        if bottleneck_layer is not None:
            raise ValueError(
                f"bottleneck_layer is only used by shape 'x' or 'diamond'; got "
                f"bottleneck_layer={bottleneck_layer!r} with shape={shape!r} (pass None)"
            )
        return 1 if shape == "increasing" else num_layers
    if bottleneck_layer is None:
        lstar = default_bottleneck_layer(num_layers)
    else:
        if isinstance(bottleneck_layer, bool) or not isinstance(bottleneck_layer, Integral):
            raise ValueError(f"bottleneck_layer must be an integer or None, got {bottleneck_layer!r}")
        lstar = int(bottleneck_layer)
    # Both geometric segments must exist, otherwise w_1 == w_L is impossible.
    if not 2 <= lstar <= num_layers - 1:
        raise ValueError(
            f"bottleneck_layer must be in [2, num_layers-1] = [2, {num_layers - 1}] (1-indexed) for "
            f"shape {shape!r}, got {lstar}"
            + (" (the default round(0.75*num_layers))" if bottleneck_layer is None else "")
            + "; shape 'x'/'diamond' need num_layers >= 3"
        )
    return lstar


def _relative_profile(shape: str, num_layers: int, lstar: int, rho: float) -> np.ndarray:
    """Widths relative to w_1 (r_1 = 1) for the shape's extreme ratio rho in (0, 1].

    rho is min/max of the profile: w_min/w_1 (x), w_1/w_max (diamond), w_1/w_L (increasing),
    w_L/w_1 (decreasing). It is a monotone reparameterisation of alpha_minus (e.g. for x,
    alpha_minus = rho**(1/(l*-1))), so bisection on rho is bisection on alpha_minus. Writing the
    powers from the segment ends makes r_L == r_1 exactly, not just up to rounding error.
    """
    idx = np.arange(1, num_layers + 1, dtype=np.float64)
    L = num_layers
    if shape == "x" or shape == "diamond":
        sign = 1.0 if shape == "x" else -1.0
        down = (idx - 1) / (lstar - 1)  # 0 at l=1 .. 1 at l*
        up = (L - idx) / (L - lstar)  # 1 at l* .. 0 at l=L
        expo = np.where(idx <= lstar, down, up)
        return rho ** (sign * expo)
    expo = (idx - 1) / (L - 1)
    return rho ** (-expo) if shape == "increasing" else rho**expo


def _solve_w1(rel: np.ndarray, hidden_size: int, block_factor: float) -> float:
    """Solve the parameter-matching equation for w_1 given widths relative to w_1.

    K*S*w1^2 - 3*[w1>h]*(w1-h)*w1 - 4*[wL>h]*(rL*w1-h)*rL*w1 = L*K*h^2 with S = sum r^2.
    The left side is continuous and increasing in w1 (for K >= 7/2 the quadratic's leading
    coefficient stays positive), so exactly one branch of the clamped 'wasted' term is consistent.
    """
    h = float(hidden_size)
    L = rel.size
    S = float(np.sum(rel * rel))
    rL = float(rel[-1])
    target = L * block_factor * h * h
    for first_wasted in (True, False):
        for last_wasted in (True, False):
            a = block_factor * S - (3.0 if first_wasted else 0.0) - (4.0 * rL * rL if last_wasted else 0.0)
            b = (3.0 * h if first_wasted else 0.0) + (4.0 * rL * h if last_wasted else 0.0)
            c = -target
            if a <= 0.0:
                continue
            disc = b * b - 4.0 * a * c
            if disc < 0.0:
                continue
            # Numerically stable positive root of a*w^2 + b*w + c = 0 with c < 0.
            w1 = (-2.0 * c) / (b + math.sqrt(disc))
            tol = 1e-12 * h
            if (w1 > h - tol) != first_wasted and abs(w1 - h) > tol:
                continue
            if (rL * w1 > h - tol) != last_wasted and abs(rL * w1 - h) > tol:
                continue
            return w1
    raise ValueError(
        f"parameter matching has no real positive solution for hidden_size={hidden_size}, "
        f"num_layers={L}, block_factor={block_factor} (profile sum of squares {S:.4g}); "
        "use a larger bottleneck_ratio or a different shape"
    )


def wasted_parameters(widths: Sequence[float], hidden_size: int) -> float:
    """Parameters that can never receive signal, per the xformer brief.

    Args:
        widths: L block widths (continuous or rounded).
        hidden_size: baseline width h (embedding / LM-head width).

    Returns:
        3*(w_1-h)*w_1 + 4*(w_L-h)*w_L, each term clamped at 0 (a block narrower than h wastes
        nothing: see the module docstring).
    """
    w = np.asarray(widths, dtype=np.float64)
    if w.ndim != 1 or w.size < 1:
        raise ValueError(f"widths must be a non-empty 1-D sequence, got shape {w.shape}")
    h = float(hidden_size)
    w1, wL = float(w[0]), float(w[-1])
    return 3.0 * max(w1 - h, 0.0) * w1 + 4.0 * max(wL - h, 0.0) * wL


def schedule_budget(
    widths: Sequence[float], hidden_size: int, vocab_size: int, block_factor: float = BLOCK_PARAM_FACTOR
) -> float:
    """The parameter budget used for matching: 2*V*h + K*sum(w^2) - wasted (norms ignored).

    The baseline's budget is 2*V*h + L*K*h^2. For the exact parameter count of a concrete
    model see ``lmrepro.analysis.flops.parameter_count``.
    """
    w = np.asarray(widths, dtype=np.float64)
    return (
        2.0 * vocab_size * hidden_size
        + block_factor * float(np.sum(w * w))
        - wasted_parameters(w, hidden_size)
    )


def x_profile(
    hidden_size: int,
    num_layers: int,
    vocab_size: int,
    shape: str = "x",
    bottleneck_ratio: float = 0.3,
    bottleneck_layer: int | None = None,
    block_factor: float = BLOCK_PARAM_FACTOR,
) -> WidthProfile:
    """Continuous parameter-matched width profile (before rounding).

    Args:
        hidden_size: baseline width h (> 0).
        num_layers: number of blocks L (>= 2; >= 3 for 'x' and 'diamond').
        vocab_size: V (> 0); cancels in the matching, validated for a consistent API.
        shape: one of 'x', 'diamond', 'increasing', 'decreasing'.
        bottleneck_ratio: continuous minimum width / h, in (0, 1]; 1 gives the constant baseline.
        bottleneck_layer: 1-indexed turning layer l* for 'x'/'diamond' (default round(0.75*L));
            must be None for the monotone shapes.
        block_factor: K, parameters per w^2 of a block (16 for the paper's dense block).

    Returns:
        WidthProfile with L continuous widths and the two growth factors.
    """
    hidden_size = _check_int("hidden_size", hidden_size, 1)
    num_layers = _check_int("num_layers", num_layers, 2)
    vocab_size = _check_int("vocab_size", vocab_size, 1)
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    ratio = _check_ratio(bottleneck_ratio)
    if isinstance(block_factor, bool) or not isinstance(block_factor, Real) or not block_factor > 3.5:
        # Below 3.5 the 'wasted' correction can outgrow K*w^2 and the matching loses monotonicity.
        raise ValueError(f"block_factor must be a number > 3.5, got {block_factor!r}")
    block_factor = float(block_factor)

    if ratio == 1.0 and bottleneck_layer is None:
        # The baseline is valid for any depth, including L = 2 where 'x' has no turning layer.
        lstar = {"increasing": 1, "decreasing": num_layers}.get(shape, default_bottleneck_layer(num_layers))
        return WidthProfile(tuple([float(hidden_size)] * num_layers), 1.0, 1.0, lstar, shape)
    lstar = _resolve_bottleneck_layer(shape, num_layers, bottleneck_layer)
    if ratio == 1.0:
        return WidthProfile(tuple([float(hidden_size)] * num_layers), 1.0, 1.0, lstar, shape)

    target = ratio * hidden_size

    def min_width(rho: float) -> tuple[float, np.ndarray]:
        rel = _relative_profile(shape, num_layers, lstar, rho)
        w1 = _solve_w1(rel, hidden_size, block_factor)
        w = w1 * rel
        return float(np.min(w)), w

    # min_width(1) = h > target and min_width(rho -> 0) -> 0 < target: a sign change on (0, 1].
    lo, hi = 0.0, 1.0
    w = None
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        m, w = min_width(mid)
        if m > target:
            hi = mid
        else:
            lo = mid
        if hi - lo <= _BISECT_RTOL * hi:
            break
    rho = 0.5 * (lo + hi)
    _, w = min_width(rho)

    L = num_layers
    if shape == "x":
        a_minus, a_plus = rho ** (1.0 / (lstar - 1)), rho ** (-1.0 / (L - lstar))
    elif shape == "diamond":
        a_minus, a_plus = rho ** (-1.0 / (lstar - 1)), rho ** (1.0 / (L - lstar))
    elif shape == "increasing":
        a_minus = a_plus = rho ** (-1.0 / (L - 1))
    else:
        a_minus = a_plus = rho ** (1.0 / (L - 1))
    return WidthProfile(tuple(float(x) for x in w), float(a_minus), float(a_plus), lstar, shape)


def width_schedule(
    hidden_size: int,
    num_layers: int,
    vocab_size: int,
    shape: str = "x",
    bottleneck_ratio: float = 0.3,
    bottleneck_layer: int | None = None,
    quantize: int = 32,
    num_heads: int | None = None,
) -> list[int]:
    """Parameter-matched per-block widths, rounded to multiples of ``quantize``.

    Args:
        hidden_size: baseline width h; must be a multiple of ``quantize`` so that the
            baseline (``bottleneck_ratio=1``) is representable.
        num_layers: number of blocks L.
        vocab_size: vocabulary size V.
        shape: 'x' (default), 'diamond', 'increasing' or 'decreasing' (see module docstring).
        bottleneck_ratio: continuous minimum width relative to h, in (0, 1] (paper: 0.3).
        bottleneck_layer: 1-indexed turning layer for 'x'/'diamond' (default round(0.75*L)).
        quantize: round every width to the nearest multiple of this (paper: 32; 1 = no rounding).
        num_heads: if given, every width must be divisible by it (constant head count per block,
            varying head dim).

    Returns:
        list of L ints, w_1..w_L.
    """
    quantize = _check_int("quantize", quantize, 1)
    hidden_size = _check_int("hidden_size", hidden_size, 1)
    if hidden_size % quantize:
        raise ValueError(
            f"quantize={quantize} must divide hidden_size={hidden_size} so the constant-width "
            "baseline is representable; choose a divisor of hidden_size"
        )
    if num_heads is not None:
        num_heads = _check_int("num_heads", num_heads, 1)
    prof = x_profile(hidden_size, num_layers, vocab_size, shape, bottleneck_ratio, bottleneck_layer)
    # Round half up (not to even) so that equal continuous ends stay equal after rounding.
    widths = [int(math.floor(w / quantize + 0.5)) * quantize for w in prof.widths]
    for i, w in enumerate(widths, start=1):
        if w <= 0:
            raise ValueError(
                f"layer {i} rounds to width 0 (continuous {prof.widths[i - 1]:.2f}) with "
                f"quantize={quantize}; use a smaller quantize or a larger bottleneck_ratio"
            )
    if num_heads is not None:
        for i, w in enumerate(widths, start=1):
            if w % num_heads:
                raise ValueError(
                    f"layer {i} has width {w}, not divisible by num_heads={num_heads}; choose quantize "
                    f"as a multiple of num_heads (e.g. quantize={math.lcm(quantize, num_heads)})"
                )
    return widths


# ------------------------------------------------------------------------------- shapes after rounding
# Rounding to multiples of ``quantize`` breaks the parameter match; these restore it (our choice, the
# brief is silent) while keeping the shape.


def shape_ok(widths, shape: str, turning: int) -> bool:
    """Does ``widths`` keep the monotone segments of ``shape`` (non-strictly)? ``turning`` = 1-indexed l*."""
    w = list(widths)
    down = lambda seq: all(a >= b for a, b in zip(seq, seq[1:]))  # noqa: E731
    up = lambda seq: all(a <= b for a, b in zip(seq, seq[1:]))  # noqa: E731
    if shape == "x":
        return down(w[:turning]) and up(w[turning - 1:])
    if shape == "diamond":
        return up(w[:turning]) and down(w[turning - 1:])
    if shape == "increasing":
        return up(w)
    if shape == "decreasing":
        return down(w)
    raise ValueError(f"shape {shape!r} is unknown")


def budget_deviation(widths, hidden_size: int, vocab_size: int) -> float:
    """(budget(widths) − budget(baseline)) / budget(baseline), budget = 2·V·h + 16·Σw² − wasted (the brief's
    matched quantity: parameters that can receive signal, norms ignored)."""
    base = schedule_budget([hidden_size] * len(widths), hidden_size, vocab_size)
    return (schedule_budget(widths, hidden_size, vocab_size) - base) / base


def rematch_widths(widths, hidden_size: int, vocab_size: int, shape: str, turning: int, quantize: int,
                   keep: tuple[int, ...] = ()) -> list[int]:
    """Greedy re-matching after rounding: repeatedly apply the single move that most reduces |budget
    deviation| — one block ±quantize, or (x, diamond) both end blocks together so w_1 = w_L stays — among
    moves that keep ``shape`` (:func:`shape_ok`), widths ≥ quantize and the 0-indexed blocks ``keep`` (the
    bottleneck) unchanged. Stops when no move helps; |deviation| never increases."""
    cur = [int(w) for w in widths]
    L = len(cur)
    symmetric = shape in ("x", "diamond") and cur[0] == cur[-1]
    groups = [(0, L - 1)] if symmetric else [(0,), (L - 1,)]
    groups += [(i,) for i in range(1, L - 1)]
    groups = [g for g in groups if not set(g) & set(keep)]
    err = abs(budget_deviation(cur, hidden_size, vocab_size))
    while True:
        best = None
        for group in groups:
            for step in (-quantize, quantize):
                cand = list(cur)
                for i in group:
                    cand[i] += step
                if min(cand) < quantize or not shape_ok(cand, shape, turning):
                    continue
                e = abs(budget_deviation(cand, hidden_size, vocab_size))
                if e < err - 1e-15 and (best is None or e < best[0]):
                    best = (e, cand)
        if best is None:
            return cur
        err, cur = best


def matched_widths(hidden_size: int, num_layers: int, vocab_size: int, shape: str | None, *, ratio: float,
                   turning: int, quantize: int, num_heads: int, rematch: bool = True) -> list[int]:
    """Per-block widths of ``shape`` (None: the constant baseline), parameter-matched to the baseline.

    ``turning`` (1-indexed l*) is used by x and diamond; the monotone shapes have none."""
    if shape is None:
        return [hidden_size] * num_layers
    lstar = turning if shape in ("x", "diamond") else None
    widths = width_schedule(hidden_size, num_layers, vocab_size, shape=shape, bottleneck_ratio=ratio,
                            bottleneck_layer=lstar, quantize=quantize, num_heads=num_heads)
    if not rematch:
        return widths
    prof = x_profile(hidden_size, num_layers, vocab_size, shape=shape, bottleneck_ratio=ratio, bottleneck_layer=lstar)
    narrowest = int(np.argmin(prof.widths))
    return rematch_widths(widths, hidden_size, vocab_size, shape, prof.bottleneck_layer, quantize, keep=(narrowest,))
