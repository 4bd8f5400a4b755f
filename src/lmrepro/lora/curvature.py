"""Loss curvature by Lanczos on Hessian-vector products (paper claim 2: "spectral suppression").

A Hessian-vector product H·v is one double backward: g = ∇_θ L with ``create_graph=True``, then
∇_θ ⟨g, v⟩. :func:`lanczos` builds an orthonormal Krylov basis of {v, Hv, H²v, …} (full
re-orthogonalization, so no spurious copies of converged eigenvalues) and reads the extreme eigenpair off
the small tridiagonal matrix T_m = Q_mᵀ·H·Q_m. ``which="largest"`` returns the largest *algebraic*
eigenvalue (the sharpness that limits a step size, also when a negative eigenvalue dominates);
``which="magnitude"`` the eigenvalue of largest magnitude. Lanczos converges on extreme eigenvalues far
faster than power iteration (which needed > 20 products on our LoRA models and often hit its cap): its error
falls roughly like exp(−2m·√gap) after m products, power iteration's like exp(−m·gap) (gap relative).

Stopping rule: the Ritz pair's residual ‖H·y − θ·y‖ = β_m·|s_m| (known without another product) ≤ tol·‖T_m‖
(the largest |Ritz value|, a lower bound on ‖H‖₂). For a symmetric H some eigenvalue lies within the residual of
θ, so a converged θ is an eigenvalue to within tol·‖H‖₂; for "largest" it is also a lower bound on λ_max
(interlacing). Like any Krylov method it could settle on a lower eigenvalue if the random start were nearly
orthogonal to the top eigenvector. Without convergence after ``iters`` products the last estimate is
returned with a warning naming the residual.

Memory and precision. The basis lives on the parameters' device: float64 on CPU, float32 on a GPU. With full
re-orthogonalization it holds ``iters + 1`` vectors of n entries — 31 × n × 4 B is ~120 GB for Llama-3.2-1B's
adapted weights (n ≈ 1e9), more than a GPU holds — so above ``max_basis_bytes`` :func:`top_hessian_eigenvalue` runs
the three-term recurrence without re-orthogonalization (q, q_prev and w updated in place, plus the product's own
buffers: about 6n floats at once, 24 GB there) and returns no eigenvector. The eigenvalue stays trustworthy: in
finite precision Lanczos loses orthogonality only towards Ritz vectors that have already converged (Paige), which
adds spurious copies of converged eigenvalues but no wrong extreme one, and a Ritz value whose residual β_m·|s_m|
is small is still within that residual (+ O(ε‖H‖)) of an eigenvalue of H, so the stopping rule holds unchanged.
float32 suffices for the same reason: the products H·v are computed in the model's precision anyway, and float32
rounding in the recurrence (ε ≈ 6e-8, dot products reduced pairwise: error ~ ε·log n) is four orders below the
relative tolerance 1e-3 the pipelines use. Without re-orthogonalization keep tol ≥ √ε (3e-4 in float32): below it,
copies of a converged eigenvalue can delay the stop (a warning, not a wrong value). tests/test_curvature.py
compares both modes and both precisions with dense eigendecompositions.

Functions: :func:`top_hessian_eigenvalue` (any parameters), :func:`lora_vs_full_curvature` (a PEFT model:
LoRA parameters versus the base weights they adapt), :func:`adam_preconditioned_sharpness`
(λ_max of P^{-1/2}·H·P^{-1/2} with Adam's preconditioner P = diag(√v̂ + ε)).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch

from ..ops.dispatch import twice_differentiable
from .alpha import lora_layers

WHICH = ("largest", "magnitude")


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, *, iters: int = 50, tol: float = 1e-4,
            seed: int = 0, which: str = "largest", dtype=torch.float64, device: torch.device | str | None = None,
            reorthogonalize: bool = True) -> tuple[float, torch.Tensor | None]:
    """Extreme eigenpair of a symmetric operator: matvec v [n] → M·v [n] → (eigenvalue, unit vector [n]), the
    vectors in ``dtype`` on ``device`` (None: CPU). ``reorthogonalize=False``: the three-term recurrence with
    three vectors instead of the whole basis, and no eigenvector (None); see the module docstring.

    At most ``iters`` products; see the module docstring for ``which``, the stopping rule and the warning.
    """
    if which not in WHICH:
        raise ValueError(f"which: {which!r} is not one of {WHICH}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters: must be an int >= 1, got {iters!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol: must be a number > 0, got {tol!r}")
    generator = torch.Generator().manual_seed(seed)  # the same start vector on every device and precision
    q = torch.randn(n, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    steps = min(iters, n)
    if not reorthogonalize:
        return _lanczos_three_term(matvec, q / q.norm(), steps, tol, which), None
    basis = torch.empty(steps + 1, n, dtype=dtype, device=device)  # Krylov basis, rows 0..m-1 in use
    basis[0] = q / q.norm()
    alphas: list[float] = []
    betas: list[float] = []
    theta, residual, y = math.nan, math.inf, basis[0]
    for m in range(1, steps + 1):
        w = matvec(basis[m - 1]).to(dtype)
        alphas.append(float(basis[m - 1] @ w))
        Q = basis[:m]  # [m, n]
        for _ in range(2):  # classical Gram-Schmidt twice: orthogonal to working precision
            w = w - Q.T @ (Q @ w)
        beta = float(w.norm())
        theta, s_vec, norm_t = _ritz(alphas, betas, which)
        residual = beta * abs(float(s_vec[-1]))
        y = Q.T @ s_vec.to(dtype)
        # beta ≈ 0 (relative to ‖T‖): the Krylov space is invariant, its Ritz values are exact eigenvalues.
        if residual <= tol * norm_t or beta <= 1e-12 * norm_t:
            return theta, y / y.norm()
        betas.append(beta)
        basis[m] = w / beta
    _warn_unconverged(len(alphas), n, theta, residual)
    return theta, y / y.norm()


def _ritz(alphas: list[float], betas: list[float], which: str) -> tuple[float, torch.Tensor, float]:
    """(extreme eigenvalue θ of the tridiagonal T with diagonal ``alphas`` and off-diagonal ``betas``, its unit
    eigenvector s [m] (float64; the residual is β·|s[-1]|), ‖T‖₂)."""
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(T)
    idx = int(values.argmax()) if which == "largest" else int(values.abs().argmax())
    return float(values[idx]), vectors[:, idx], float(values.abs().max())


def _lanczos_three_term(matvec: Callable[[torch.Tensor], torch.Tensor], q: torch.Tensor, steps: int, tol: float,
                        which: str) -> float:
    """:func:`lanczos`'s eigenvalue from the plain recurrence w = M·q_m − α_m·q_m − β_{m−1}·q_{m−1} (one
    local re-orthogonalization against q_m), holding three vectors of n."""
    prev = torch.zeros_like(q)
    alphas: list[float] = []
    betas: list[float] = []
    theta, residual = math.nan, math.inf
    for _ in range(steps):
        w = matvec(q).to(q.dtype)
        alpha = float(q @ w)
        alphas.append(alpha)
        # in place: no temporaries of n entries beside w, q and prev (and matvec's own)
        w.sub_(q, alpha=alpha).sub_(prev, alpha=betas[-1] if betas else 0.0)
        w.sub_(q, alpha=float(q @ w))
        beta = float(w.norm())
        theta, s_vec, norm_t = _ritz(alphas, betas, which)
        residual = beta * abs(float(s_vec[-1]))
        if residual <= tol * norm_t or beta <= 1e-12 * norm_t:
            return theta
        betas.append(beta)
        prev, q = q, w / beta
    _warn_unconverged(len(alphas), q.numel(), theta, residual)
    return theta


def _warn_unconverged(products: int, n: int, theta: float, residual: float) -> None:
    if products < n:
        warnings.warn(f"lanczos: not converged after {products} products "
                      f"(eigenvalue {theta:.6g}, residual {residual:.3g})", stacklevel=4)


def hessian_matvec(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor]
                   ) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """(v [n] ↦ H·v [n] in float64, n) for the Hessian of ``loss_fn()`` over ``params`` (flattened in order).

    Parameters the loss does not reach contribute zero rows. The loss is evaluated once; its graph is kept.
    """
    if not params:
        raise ValueError("params: empty; pass the tensors whose Hessian to probe")
    loss = loss_fn()
    if loss.dim() != 0:
        raise ValueError(f"loss_fn: must return a scalar, got shape {tuple(loss.shape)}")
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    live = [(p, g) for p, g in zip(params, grads) if g is not None and g.requires_grad]
    sizes = [p.numel() for p in params]
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    index = {id(p): i for i, p in enumerate(params)}

    def matvec(v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(v)
        if not live:  # the loss is at most linear in params: H = 0
            return out
        outs = [v[offsets[index[id(p)]]:offsets[index[id(p)] + 1]].view_as(p).to(g.dtype) for p, g in live]
        hv = torch.autograd.grad([g for _, g in live], [p for p, _ in live], grad_outputs=outs,
                                 retain_graph=True, allow_unused=True)
        for (p, _), h in zip(live, hv):
            if h is not None:
                i = index[id(p)]
                out[offsets[i]:offsets[i + 1]] = h.reshape(-1).to(v.dtype)
        return out

    return matvec, offsets[-1]


MAX_BASIS_BYTES = 4 * 2 ** 30


def basis_dtype(device: torch.device) -> torch.dtype:
    """The Lanczos vectors' precision on ``device``: float64 on CPU, float32 on an accelerator (module docstring)."""
    return torch.float64 if device.type == "cpu" else torch.float32


def top_hessian_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor], iters: int = 50,
                           tol: float = 1e-4, seed: int = 0, which: str = "largest",
                           max_basis_bytes: int = MAX_BASIS_BYTES) -> tuple[float, list[torch.Tensor] | None]:
    """Top eigenvalue of ∇²_θ L over ``params`` → (eigenvalue, unit eigenvector as tensors shaped like params).

    loss_fn: zero-argument closure → scalar loss on a fixed batch (deterministic: no dropout).
    which: "largest" (algebraic, the sharpness; default) or "magnitude" (see module docstring).
    The Lanczos vectors live on the parameters' device (:func:`basis_dtype`); when the full basis,
    (iters + 1) × n entries, would exceed ``max_basis_bytes`` the three-term recurrence runs instead and the
    eigenvector is None.
    """
    if not params:
        raise ValueError("params: empty; pass the tensors whose Hessian to probe")
    device = params[0].device
    dtype = basis_dtype(device)
    full = _basis_fits(sum(p.numel() for p in params), iters, dtype, max_basis_bytes)
    with twice_differentiable():
        matvec, n = hessian_matvec(loss_fn, params)
        value, v = lanczos(matvec, n, iters=iters, tol=tol, seed=seed, which=which, dtype=dtype, device=device,
                           reorthogonalize=full)
    if v is None:
        return value, None
    vector, start = [], 0
    for p in params:
        vector.append(v[start:start + p.numel()].view_as(p).to(p.dtype))
        start += p.numel()
    return value, vector


def lora_vs_full_curvature(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], iters: int = 50,
                           tol: float = 1e-4, seed: int = 0, which: str = "largest",
                           max_basis_bytes: int = MAX_BASIS_BYTES) -> dict[str, float]:
    """dict(lora=λ over all LoRA A and B matrices, full=λ over the base weights they adapt), at the current
    point of a PEFT model. The base weights get ``requires_grad`` only while they are probed. Each probe keeps
    its Lanczos basis on the model's device when it fits ``max_basis_bytes`` (:func:`top_hessian_eigenvalue`)."""
    layers = lora_layers(model)
    lora_params = [p for layer, adapter in layers.values()
                   for p in (layer.lora_A[adapter].weight, layer.lora_B[adapter].weight)]
    base = [layer.get_base_layer().weight for layer, _ in layers.values()]
    lam_lora, _ = top_hessian_eigenvalue(loss_fn, lora_params, iters, tol, seed, which, max_basis_bytes)
    flags = [w.requires_grad for w in base]
    try:
        for w in base:
            w.requires_grad_(True)
        lam_full, _ = top_hessian_eigenvalue(loss_fn, base, iters, tol, seed, which, max_basis_bytes)
    finally:
        for w, flag in zip(base, flags):
            w.requires_grad_(flag)
    return {"lora": lam_lora, "full": lam_full}


def adam_preconditioned_sharpness(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor],
                                  optimizer: torch.optim.Optimizer, iters: int = 50, tol: float = 1e-4,
                                  seed: int = 0, max_basis_bytes: int = MAX_BASIS_BYTES) -> float:
    """λ_max(P^{-1/2}·H·P^{-1/2}) with P = diag(√v̂ + ε) from an Adam/AdamW ``optimizer`` that has stepped
    (v̂ = exp_avg_sq / (1 − β₂^t)). Adam's update is −η·P⁻¹·m̂, so this is the sharpness its step size meets."""
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    scales = []
    for i, p in enumerate(params):
        state = optimizer.state.get(p, {})
        if id(p) not in groups or "exp_avg_sq" not in state:
            raise ValueError(f"params[{i}]: has no Adam state (exp_avg_sq) in optimizer; step it first")
        group = groups[id(p)]
        step = float(state["step"])
        v_hat = state["exp_avg_sq"].double() / (1 - group["betas"][1] ** step)
        scales.append((1.0 / (v_hat.sqrt() + group["eps"])).sqrt().reshape(-1))
    device = params[0].device
    d = torch.cat(scales).to(device=device, dtype=basis_dtype(device))
    with twice_differentiable():
        matvec, n = hessian_matvec(loss_fn, params)
        value, _ = lanczos(lambda v: d * matvec(d * v), n, iters=iters, tol=tol, seed=seed, dtype=d.dtype,
                           device=device, reorthogonalize=_basis_fits(n, iters, d.dtype, max_basis_bytes))
    return value


def _basis_fits(n: int, iters: int, dtype: torch.dtype, max_basis_bytes: int) -> bool:
    """Whether the full Lanczos basis, (iters + 1) × n entries of ``dtype``, fits ``max_basis_bytes``."""
    return (min(iters, n) + 1) * n * torch.finfo(dtype).bits // 8 <= max_basis_bytes
