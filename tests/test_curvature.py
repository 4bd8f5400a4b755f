"""Lanczos on Hessian-vector products against known spectra, dense Hessians and scipy's ARPACK."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F


def _quadratic(eigenvalues, seed=0):
    """0.5·xᵀQx with Q = U·diag(λ)·Uᵀ over two parameter tensors (shapes [2, 3] and [n − 6]) at a random x."""
    n = len(eigenvalues)
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    Q = U @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ U.T
    x = torch.randn(n, generator=g, dtype=torch.float64)
    params = [x[:6].reshape(2, 3).clone().requires_grad_(True), x[6:].clone().requires_grad_(True)]

    def loss_fn():
        flat = torch.cat([p.reshape(-1) for p in params])
        return 0.5 * flat @ Q @ flat

    return loss_fn, params, U


# spectrum, which, expected eigenvalue
SPECTRA = [
    ([10.0, 5.0, 2.0, 1.0, 0.5, 0.1, -0.3, 0.0], "largest", 10.0),
    ([10.0, 5.0, 2.0, 1.0, 0.5, 0.1, -0.3, 0.0], "magnitude", 10.0),
    ([-8.0, 4.0, 2.0, -1.0, 0.5, 0.2, 0.1, 1.5, 3.0], "largest", 4.0),  # negative-dominant
    ([-8.0, 4.0, 2.0, -1.0, 0.5, 0.2, 0.1, 1.5, 3.0], "magnitude", -8.0),
    ([-3.0, -2.0, -1.5, -1.0, -0.8, -0.6, -0.05], "largest", -0.05),  # negative definite
    ([1e-3, 2e-4, 1e-4, 5e-5, 1e-5, 0.0, 0.0], "largest", 1e-3),  # scale does not matter (relative tol)
]


@pytest.mark.parametrize("eigenvalues,which,expected", SPECTRA)
def test_recovers_known_spectrum(eigenvalues, which, expected):
    from lmrepro.lora import top_hessian_eigenvalue

    loss_fn, params, U = _quadratic(eigenvalues)
    with warnings.catch_warnings(record=True) as with_warnings:
        warnings.simplefilter("always")
        value, vector = top_hessian_eigenvalue(loss_fn, params, iters=200, tol=1e-6, which=which)
    assert not with_warnings  # converged
    assert value == pytest.approx(expected, rel=1e-4, abs=1e-4 * max(map(abs, eigenvalues)))
    assert [v.shape for v in vector] == [p.shape for p in params]
    flat = torch.cat([v.reshape(-1) for v in vector])
    true_vector = U[:, eigenvalues.index(expected)]
    assert abs(float(flat @ true_vector)) == pytest.approx(1.0, abs=1e-4)


def test_default_tolerance_gives_1e4_and_nonconvergence_warns():
    from lmrepro.lora import top_hessian_eigenvalue

    loss_fn, params, _ = _quadratic([10.0, 5.0, 2.0, 1.0, 0.5, 0.1, -0.3, 0.0])
    value, _ = top_hessian_eigenvalue(loss_fn, params)  # iters=50, tol=1e-4
    assert value == pytest.approx(10.0, rel=1e-4)
    loss_fn, params, _ = _quadratic([10.0, 9.9, 2.0, 1.0, 0.5, 0.1, -0.3, 0.0])
    with pytest.warns(UserWarning, match="not converged after 3 products"):
        top_hessian_eigenvalue(loss_fn, params, iters=3)


def test_bad_arguments():
    from lmrepro.lora import top_hessian_eigenvalue

    loss_fn, params, _ = _quadratic([1.0] * 7)
    with pytest.raises(ValueError, match="which: 'smallest' is not one of"):
        top_hessian_eigenvalue(loss_fn, params, which="smallest")
    with pytest.raises(ValueError, match="params: empty"):
        top_hessian_eigenvalue(loss_fn, [])
    with pytest.raises(ValueError, match="iters: must be an int >= 1"):
        top_hessian_eigenvalue(loss_fn, params, iters=0)


def _mlp_with_lora(r=2):
    from lmrepro.lora import alpha_for, apply_lora

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    model = apply_lora(base, r, alpha_for("fixed", r, alpha=4.0), ["0", "2"], seed=0)
    with torch.no_grad():  # B ≠ 0: a point away from init, where the Hessian has every kind of term
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(16, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    return model, X, lambda out: F.cross_entropy(out, y)


def test_lora_vs_full_against_dense_hessians():
    from lmrepro.lora import lora_layers, lora_vs_full_curvature

    model, X, loss_of_output = _mlp_with_lora()
    layers = lora_layers(model)
    base_weights = [layer.get_base_layer().weight for layer, _ in layers.values()]
    lora_params = [p for layer, a in layers.values() for p in (layer.lora_A[a].weight, layer.lora_B[a].weight)]
    result = lora_vs_full_curvature(model, lambda: loss_of_output(model(X)), iters=500, tol=1e-7)
    assert all(w.requires_grad is False for w in base_weights)  # restored after probing
    for key, params in (("lora", lora_params), ("full", base_weights)):
        expected = _dense_eigenvalues(model, X, loss_of_output, params).max()
        assert result[key] == pytest.approx(expected, rel=1e-5), key


def _loss_at(model, inputs, loss_of_output, params, values):
    """loss_of_output(model(inputs)) with ``params`` replaced by ``values`` (torch.func.functional_call)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return loss_of_output(torch.func.functional_call(model, {names[id(p)]: v for p, v in zip(params, values)},
                                                     (inputs,)))


def _dense_eigenvalues(model, inputs, loss_of_output, params):
    """Eigenvalues of the dense Hessian over ``params`` (torch.autograd.functional.hessian of a flat function)."""
    sizes = [p.numel() for p in params]

    def flat_loss(flat):
        values = [c.view(p.shape) for c, p in zip(flat.split(sizes), params)]
        return _loss_at(model, inputs, loss_of_output, params, values)

    start = torch.cat([p.detach().reshape(-1) for p in params])
    return np.linalg.eigvalsh(torch.autograd.functional.hessian(flat_loss, start).numpy())


def test_lora_curvature_on_decoder_lm_matches_lanczos(make_spec):
    """Our attention under double backward (SDPA math kernel) and scipy's Lanczos on independent HVPs."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    from lmrepro.lora import alpha_for, apply_lora, lora_layers, top_hessian_eigenvalue
    from lmrepro.ops import twice_differentiable
    from lmrepro.models import DecoderLM

    torch.manual_seed(0)
    model = apply_lora(DecoderLM(make_spec()).double(), 2, alpha_for("r", 2), ["q_proj", "v_proj"], seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    batch = torch.randint(0, model.spec.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    params = [p for _, (layer, a) in lora_layers(model).items()
              for p in (layer.lora_A[a].weight, layer.lora_B[a].weight)]

    def loss_of_output(logits):
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())

    value, _ = top_hessian_eigenvalue(lambda: loss_of_output(model(batch)), params, iters=300, tol=1e-5)
    sizes = [p.numel() for p in params]

    def hvp(v):
        v = torch.from_numpy(np.asarray(v, dtype=np.float64).ravel())
        directions = tuple(c.view(p.shape) for c, p in zip(v.split(sizes), params))
        with twice_differentiable():
            _, out = torch.autograd.functional.hvp(lambda *values: _loss_at(model, batch, loss_of_output, params,
                                                                            values),
                                                   tuple(p.detach() for p in params), directions)
        return torch.cat([o.reshape(-1) for o in out]).numpy()

    n = sum(sizes)
    expected = eigsh(LinearOperator((n, n), matvec=hvp, dtype=np.float64), k=1, which="LA", tol=1e-8)[0][0]
    assert value == pytest.approx(expected, rel=1e-4)


def test_adam_preconditioned_sharpness_on_a_quadratic():
    """After one Adam step from x₀, v̂ = g² with g = Q·x₀, so P = diag(|g| + ε);
    reference: λ_max(P^{-1/2}·Q·P^{-1/2}) from numpy."""
    from lmrepro.lora import adam_preconditioned_sharpness

    eigenvalues = [6.0, 3.0, 1.0, 0.5, 0.2, 0.1, 0.05, -0.4]
    loss_fn, params, U = _quadratic(eigenvalues, seed=2)
    Q = U @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ U.T
    x0 = torch.cat([p.detach().reshape(-1) for p in params])
    optimizer = torch.optim.Adam(params, lr=1e-3, eps=1e-8)
    loss_fn().backward()
    optimizer.step()
    d = 1.0 / ((Q @ x0).abs() + 1e-8)
    expected = np.linalg.eigvalsh((d.sqrt()[:, None] * Q * d.sqrt()[None, :]).numpy()).max()
    value = adam_preconditioned_sharpness(loss_fn, params, optimizer, iters=500, tol=1e-7)
    # The Hessian of a quadratic is Q wherever it is evaluated, so the step taken does not matter.
    assert value == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match=r"params\[0\]: has no Adam state"):
        adam_preconditioned_sharpness(loss_fn, params, torch.optim.Adam(params, lr=1e-3))


def test_lanczos_converges_on_a_small_gap_in_few_products():
    """λ₂/λ₁ = 0.99 over n = 300: power iteration would need ~ln(1e-6)/ln(0.99) ≈ 1400 products; Lanczos
    must certify λ₁ (residual ≤ 1e-6·‖H‖) within 60 and agree with numpy's dense eigensolver."""
    from lmrepro.lora import lanczos

    g = torch.Generator().manual_seed(3)
    eigenvalues = torch.cat([torch.tensor([1.0, 0.99]), torch.rand(298, generator=g, dtype=torch.float64) * 0.9 - 0.3])
    U, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))
    H = U @ torch.diag(eigenvalues.double()) @ U.T
    products = []

    def matvec(v):
        products.append(1)
        return H @ v

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a non-converged run warns: fail on it
        value, vector = lanczos(matvec, 300, iters=150, tol=1e-6)
    assert value == pytest.approx(float(np.linalg.eigvalsh(H.numpy()).max()), abs=1e-6)
    assert len(products) <= 60
    assert float((H @ vector - value * vector).norm()) <= 1e-6 * 1.0 + 1e-12


def test_lanczos_scale_invariance_down_to_tiny_operators():
    """The invariant-subspace test is relative to ‖T‖: an operator of norm 5e-13 is not mistaken for 0."""
    from lmrepro.lora import lanczos

    g = torch.Generator().manual_seed(4)
    U, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    for scale in (1e-13, 1.0, 1e9):
        H = U @ torch.diag(torch.linspace(-5, 1, 40, dtype=torch.float64) * scale) @ U.T
        assert lanczos(lambda v: H @ v, 40, iters=40, tol=1e-8)[0] == pytest.approx(1.0 * scale, rel=1e-6)
        assert lanczos(lambda v: H @ v, 40, iters=40, tol=1e-8, which="magnitude")[0] == pytest.approx(-5 * scale,
                                                                                                       rel=1e-6)


@pytest.mark.parametrize("eigenvalues,which,expected", SPECTRA)
def test_without_the_basis_the_three_term_recurrence_finds_the_same_eigenvalue(eigenvalues, which, expected):
    """max_basis_bytes too small for the basis: the three-term recurrence, the eigenvalue only."""
    from lmrepro.lora import top_hessian_eigenvalue

    loss_fn, params, _ = _quadratic(eigenvalues)
    value, vector = top_hessian_eigenvalue(loss_fn, params, iters=200, tol=1e-6, which=which, max_basis_bytes=0)
    assert vector is None
    assert value == pytest.approx(expected, rel=1e-4, abs=1e-4 * max(map(abs, eigenvalues)))
    _, kept = top_hessian_eigenvalue(loss_fn, params, iters=200, tol=1e-6, which=which)
    assert kept is not None  # the default budget holds this basis


def _dense_operator(n: int, seed: int):
    """(matvec, eigenvalues) of a dense symmetric n × n matrix with a decaying spectrum and a tight top cluster,
    where plain Lanczos loses orthogonality after a few dozen products."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.cat([torch.tensor([5.0, 4.99, 4.98]), torch.rand(n - 3, generator=g, dtype=torch.float64) * 4 - 1])
    M = U @ torch.diag(lam) @ U.T
    return (lambda v: (M.to(v.dtype) @ v)), torch.linalg.eigvalsh(M)


@pytest.mark.parametrize("reorthogonalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lanczos_precision_and_reorthogonalization_against_a_dense_eigendecomposition(reorthogonalize, dtype):
    """400 × 400, 120 products: float32 vectors and/or no re-orthogonalization still give λ_max to the
    tolerance (relative 1e-6 here, the pipelines use 1e-3), no spurious larger value, the same start vector."""
    from lmrepro.lora import lanczos

    matvec, lam = _dense_operator(400, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a cluster 0.002 wide may need all 120 products
        value, vector = lanczos(matvec, 400, iters=120, tol=1e-7, dtype=dtype, reorthogonalize=reorthogonalize)
    assert value == pytest.approx(float(lam[-1]), rel=1e-6 if dtype == torch.float64 else 1e-5)
    assert value <= float(lam[-1]) * (1 + 1e-6)  # interlacing: never above λ_max (to rounding)
    assert (vector is None) == (not reorthogonalize)
    if vector is not None:
        assert vector.dtype == dtype and vector.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_without_reorthogonalization_the_stopping_rule_fires_at_the_pipelines_tolerance():
    """At tol 1e-3 (the pipelines') in float32 the three-term recurrence stops on its residual bound, well before
    the product cap, with no warning, and its value is within the tolerance of λ_max."""
    from lmrepro.lora import lanczos

    matvec, lam = _dense_operator(400, 0)
    products = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, _ = lanczos(lambda v: products.append(1) or matvec(v), 400, iters=120, tol=1e-3,
                           dtype=torch.float32, reorthogonalize=False)
    assert len(products) < 60
    assert value == pytest.approx(float(lam[-1]), rel=1e-3)
