"""Backend choice for the sequence-mixing ops: one function, one override, one registry.

Precedence (highest first):

1. the op's explicit ``backend=`` argument;
2. a process-wide override set with :func:`force_backend` (meant for tests and debugging);
3. the automatic rule: the GPU kernel on CUDA when its library is installed, the chunked
   PyTorch path (``sdpa`` for attention) otherwise. ``fla`` on CPU exists only under Triton's
   interpreter (``TRITON_INTERPRET=1``, :mod:`lmrepro.ops.triton_interpreter`), to verify the kernel
   code without a GPU, and is never chosen automatically. Attention on CUDA: window + sinks -> flex;
   otherwise flash when installed (fp16/bf16, equal head dims), else flex for a window, else sdpa.

An explicitly requested or forced backend that cannot run here raises
:class:`BackendUnavailableError`; nothing silently computes something else.
A process-wide override whose name is not a backend *kind* of some op (``force_backend("chunked")``
while calling ``attention``) does not apply to that op, which then uses its automatic rule;
restrict an override with ``ops=`` to make it strict (an op listed there must know the name).

Inside :func:`twice_differentiable` (curvature: Hessian-vector products, double backward) only the
backends of :data:`TWICE_DIFFERENTIABLE` may run: a forced or automatic choice outside it is replaced
by the op's first listed one (``sdpa`` for attention, ``chunked`` for the linear ops), an explicit
``backend=`` outside it raises :class:`BackendUnavailableError`, and SDPA is held to its math kernel.

Every decision is logged once per (op, backend) on the ``lmrepro.ops`` logger and recorded in a
registry, :func:`backends_used`, that run provenance stores.

Backends per op::

    attention:          naive | sdpa | flex | flash
    lightning_attention naive | chunked | fla
    mamba2_ssd          naive | chunked | fla
    gated_delta_rule    naive | chunked | fla

GPU libraries (flash_attn, fla) are never imported here: availability is probed with
``importlib.util.find_spec`` and the op modules import the kernels lazily.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping

import torch

from .triton_interpreter import enable as enable_triton_interpreter
from .triton_interpreter import interpreter_requested

__all__ = [
    "OP_BACKENDS",
    "BackendUnavailableError",
    "backend_available",
    "backends_used",
    "force_backend",
    "reset_backends_used",
    "select_backend",
    "twice_differentiable",
]

logger = logging.getLogger("lmrepro.ops")

OP_BACKENDS: dict[str, tuple[str, ...]] = {
    "attention": ("naive", "sdpa", "flex", "flash"),
    "lightning_attention": ("naive", "chunked", "fla"),
    "mamba2_ssd": ("naive", "chunked", "fla"),
    "gated_delta_rule": ("naive", "chunked", "fla"),
}
ALL_BACKENDS = tuple(sorted({b for bs in OP_BACKENDS.values() for b in bs}))

#: Backends whose backward is itself differentiable (plain PyTorch autograd), per op, preferred first.
#: The kernels (flash, flex, fla) have no derivative of their backward.
TWICE_DIFFERENTIABLE: dict[str, tuple[str, ...]] = {
    "attention": ("sdpa", "naive"),
    "lightning_attention": ("chunked", "naive"),
    "mamba2_ssd": ("chunked", "naive"),
    "gated_delta_rule": ("chunked", "naive"),
}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for (explicitly or by :func:`force_backend`) but cannot run here."""


_lock = threading.Lock()
# Stack of overrides; each entry maps op -> backend. The innermost entry naming an op wins.
_override_stack: list[dict[str, str]] = []
_twice_depth = 0  # > 0 inside twice_differentiable()
_used: dict[str, list[str]] = {}
_logged: set[tuple[str, str]] = set()


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _flex_importable() -> bool:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except Exception:  # pragma: no cover - depends on the torch build
        return False
    return True


def _check_op(op: str) -> None:
    if op not in OP_BACKENDS:
        raise ValueError(f"unknown op {op!r}; known ops: {sorted(OP_BACKENDS)}")


def _check_name(op: str, backend: str) -> None:
    if backend not in OP_BACKENDS[op]:
        raise ValueError(
            f"backend {backend!r} is not a backend of op {op!r}; allowed: {list(OP_BACKENDS[op])}"
        )


def backend_available(
    op: str,
    backend: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    sinks: int = 0,
    same_head_dim: bool = True,
    requires_grad: bool = False,
) -> tuple[bool, str]:
    """Whether ``backend`` can compute ``op`` for tensors on ``device``; returns ``(ok, reason)``.

    ``dtype``, ``sinks`` and ``same_head_dim`` only matter for attention's ``flash`` path
    (fp16/bf16 only, no sink tokens, value head dim equal to the query/key head dim);
    ``requires_grad`` for ``flex`` on CPU (torch has no CPU backward for FlexAttention).
    """
    _check_op(op)
    _check_name(op, backend)
    dev = torch.device(device)
    if backend in ("naive", "chunked", "sdpa"):
        return True, "pure PyTorch"
    if backend == "flex":
        if not _flex_importable():
            return False, "torch.nn.attention.flex_attention is not importable in this torch build"
        if dev.type == "cpu" and requires_grad:
            return False, "FlexAttention has no backward on CPU (use sdpa or naive, or run on CUDA)"
        return True, "FlexAttention (compiled on CUDA, eager and unfused on CPU)"
    if backend == "flash":
        if dev.type != "cuda":
            return False, f"flash_attn needs CUDA tensors, got device {dev}"
        if not _installed("flash_attn"):
            return False, "flash_attn is not installed (optional GPU extra: pip install lmrepro[gpu])"
        if sinks:
            return False, "flash_attn has no sink tokens (use backend='flex' for sinks > 0)"
        if dtype is not None and dtype not in (torch.float16, torch.bfloat16):
            return False, f"flash_attn supports only float16/bfloat16, got {dtype}"
        if not same_head_dim:
            return False, "flash_attn needs the value head dim equal to the query/key head dim"
        return True, "flash_attn kernel"
    if backend == "fla":
        if not _installed("fla"):
            return False, "flash-linear-attention (fla) is not installed (pip install lmrepro[fla])"
        if dev.type == "cpu" and interpreter_requested():
            return True, "flash-linear-attention Triton kernel in Triton's interpreter (CPU, slow; verification)"
        if dev.type != "cuda":
            return False, (f"fla Triton kernels need CUDA tensors, got device {dev} "
                           "(on CPU only under TRITON_INTERPRET=1, see lmrepro.ops.triton_interpreter)")
        return True, "flash-linear-attention Triton kernel"
    raise AssertionError(backend)  # pragma: no cover - _check_name guards this


def _auto(op: str, dev: torch.device, **features) -> str:
    if op == "attention":
        if dev.type != "cuda":
            return "sdpa"
        window, sinks = features.get("window"), features.get("sinks", 0)
        if sinks and window is not None:
            return "flex" if backend_available(op, "flex", device=dev)[0] else "sdpa"
        if backend_available(op, "flash", device=dev, **_availability_features(features))[0]:
            return "flash"
        if window is not None and backend_available(op, "flex", device=dev)[0]:
            return "flex"
        return "sdpa"
    if dev.type == "cuda" and backend_available(op, "fla", device=dev)[0]:
        return "fla"
    return "chunked"


def _availability_features(features: dict) -> dict:
    return {
        "dtype": features.get("dtype"),
        "sinks": features.get("sinks", 0),
        "same_head_dim": features.get("same_head_dim", True),
        "requires_grad": features.get("requires_grad", False),
    }


def _forced(op: str) -> str | None:
    with _lock:
        for entry in reversed(_override_stack):
            if op in entry:
                return entry[op]
    return None


def _restricted() -> bool:
    with _lock:
        return _twice_depth > 0


def select_backend(
    op: str,
    backend: str | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    window: int | None = None,
    sinks: int = 0,
    same_head_dim: bool = True,
    requires_grad: bool = False,
) -> str:
    """Decide which backend computes ``op`` (see the module docstring for the precedence).

    Records the choice for :func:`backends_used` and logs it once per (op, backend).
    Raises ``ValueError`` for a name that is not a backend of ``op`` and
    :class:`BackendUnavailableError` for a requested/forced backend that cannot run here
    (or, inside :func:`twice_differentiable`, an explicit one without a double backward).
    """
    _check_op(op)
    dev = torch.device(device)
    features = dict(dtype=dtype, window=window, sinks=sinks, same_head_dim=same_head_dim,
                    requires_grad=requires_grad)
    twice = TWICE_DIFFERENTIABLE[op] if _restricted() else None
    if backend is not None:
        source, chosen = "explicit", backend
        _check_name(op, chosen)
        if twice is not None and chosen not in twice:
            raise BackendUnavailableError(f"{op}: backend {chosen!r} (explicit) has no double backward; "
                                          f"inside twice_differentiable() use one of {list(twice)}")
    else:
        forced = _forced(op)
        if forced is not None:
            source, chosen = "forced", forced
        else:
            source, chosen = "auto", _auto(op, dev, **features)
        if twice is not None and chosen not in twice:
            source, chosen = "twice_differentiable", twice[0]
    if source != "auto":
        ok, reason = backend_available(op, chosen, device=dev, **_availability_features(features))
        if not ok:
            raise BackendUnavailableError(
                f"{op}: backend {chosen!r} ({source}) is unavailable: {reason}"
            )
    if chosen == "fla" and dev.type == "cpu":
        try:
            enable_triton_interpreter()
        except RuntimeError as err:
            raise BackendUnavailableError(f"{op}: backend 'fla' on CPU is unavailable: {err}") from err
    _record(op, chosen, source, dev)
    return chosen


def _record(op: str, backend: str, source: str, dev: torch.device) -> None:
    with _lock:
        seen = _used.setdefault(op, [])
        if backend not in seen:
            seen.append(backend)
        first = (op, backend) not in _logged
        _logged.add((op, backend))
    if first:
        logger.info("%s: using backend %r (%s, device %s)", op, backend, source, dev)
    else:
        logger.debug("%s: using backend %r (%s, device %s)", op, backend, source, dev)


def backends_used() -> dict[str, str]:
    """Backends chosen so far in this process, per op, for run provenance.

    Values are backend names in order of first use, joined by ``","`` when an op ran on more
    than one backend (e.g. ``"chunked,naive"``).
    """
    with _lock:
        return {op: ",".join(bs) for op, bs in sorted(_used.items())}


def reset_backends_used() -> None:
    """Forget the recorded choices (e.g. at the start of a run)."""
    with _lock:
        _used.clear()
        _logged.clear()


@contextlib.contextmanager
def force_backend(
    backend: str | Mapping[str, str], *, ops: Iterable[str] | None = None
) -> Iterator[None]:
    """Force backends process-wide inside a ``with`` block (nested blocks: innermost wins).

    ``force_backend("naive")`` forces every op that has a ``naive`` path (all of them);
    ``force_backend("chunked")`` forces the linear ops and leaves attention automatic;
    ``force_backend("fla", ops=["gated_delta_rule"])`` forces one op (strict: the op must know
    the name); ``force_backend({"attention": "sdpa", "mamba2_ssd": "naive"})`` forces per op.
    The explicit ``backend=`` argument of an op still wins over this override.
    """
    entry: dict[str, str] = {}
    if isinstance(backend, Mapping):
        if ops is not None:
            raise ValueError("pass either a mapping op -> backend or a name with ops=, not both")
        for op, name in backend.items():
            _check_op(op)
            _check_name(op, name)
            entry[op] = name
    else:
        if backend not in ALL_BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; known backends: {list(ALL_BACKENDS)}")
        if ops is None:
            entry = {op: backend for op, bs in OP_BACKENDS.items() if backend in bs}
        else:
            for op in ops:
                _check_op(op)
                _check_name(op, backend)
                entry[op] = backend
    with _lock:
        _override_stack.append(entry)
    try:
        yield
    finally:
        with _lock:
            # Remove this exact entry even if blocks were exited out of order.
            for i in range(len(_override_stack) - 1, -1, -1):
                if _override_stack[i] is entry:
                    del _override_stack[i]
                    break


@contextlib.contextmanager
def twice_differentiable() -> Iterator[None]:
    """Restrict every op to backends with a double backward (:data:`TWICE_DIFFERENTIABLE`) inside a ``with``
    block, and SDPA to its math kernel (its fused CPU/flash kernels have no derivative of their backward;
    this also covers models that call SDPA directly, e.g. HF ones). Nested blocks are allowed.

    Attention then runs through our "sdpa" path with the math kernel, the linear ops through "chunked"
    unless a "naive" path is forced.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    global _twice_depth
    with _lock:
        _twice_depth += 1
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        with _lock:
            _twice_depth -= 1
