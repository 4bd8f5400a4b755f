"""Run flash-linear-attention's Triton kernels on CPU through Triton's interpreter (verification only).

``TRITON_INTERPRET=1`` makes ``@triton.jit`` kernels execute as NumPy programs on CPU tensors, so the
*kernel code itself* (fla's chunked forward and backward kernels, not our PyTorch re-implementation)
can be checked against the references on a machine without a GPU. It is slow (seconds for T = 200)
and never chosen automatically: :mod:`lmrepro.ops.dispatch` offers the ``fla`` backend on CPU only when
the interpreter is on, and only when asked for explicitly or by ``force_backend``.

Two gaps of the interpreter (Triton 3.x) stop fla's kernels, and :func:`enable` closes them:

* loop induction variables: the interpreter runs ``for i_t in range(NT)`` with Python ints, but fla
  calls tensor methods on them (``i_t.to(tl.int64)``), which a compiled kernel allows. Kernels are
  re-executed with a ``range`` that yields int32 scalar tensors, as the compiler would produce;
* autotuning: ``triton.autotune`` benchmarks every config through the GPU driver, which does not exist
  here. Every config computes the same function, so for interpreted kernels all are scored equal and the
  first one runs (compiled kernels keep Triton's own benchmark).

Neither changes what a kernel computes. The switch must be set before ``triton`` (or anything that
imports fla) is imported: ``@triton.jit`` decides between compiled and interpreted at definition.

What this does not cover: only the first autotune config of each kernel runs, and fla's device-dependent
choices (shared memory size, architecture) take their CPU branches, so block sizes a GPU may pick are not
exercised. Only float32 is meaningful: the interpreter keeps bfloat16 as its uint16 bit pattern and does
integer arithmetic on it (``tl.dot`` and element-wise ops). bfloat16 / tf32 numerics and speed need a GPU
(``scripts/gpu_check_ops.py`` without ``--interpret``).
"""

from __future__ import annotations

import builtins
import os

_enabled = False


def interpreter_requested() -> bool:
    """Whether this process asked for Triton's interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def enable() -> None:
    """Patch the two interpreter gaps above (idempotent). Raises if the interpreter is not active."""
    global _enabled
    if _enabled:
        return
    if not interpreter_requested():
        raise RuntimeError(
            "Triton's interpreter is off: set TRITON_INTERPRET=1 in the environment before starting Python "
            "(kernels are compiled or interpreted when they are defined, at import)"
        )
    import numpy as np
    import triton
    import triton.language as tl
    import triton.runtime.autotuner as autotuner
    import triton.runtime.interpreter as interpreter

    if not (hasattr(interpreter, "FunctionRewriter") and hasattr(interpreter.FunctionRewriter, "_compile_and_exec")
            and hasattr(autotuner.Autotuner, "_bench")):
        raise RuntimeError(f"triton {triton.__version__}: the interpreter internals patched here have changed; "
                           "use the triton of requirements/lock.txt to run fla kernels on CPU")

    def as_int(x) -> int:
        if isinstance(x, tl.core.tensor):
            return int(np.asarray(x.handle.data).reshape(-1)[0])
        if isinstance(x, tl.constexpr):
            return int(x.value)
        return int(x)

    def tensor_range(*args, step=None):
        bounds = [as_int(a) for a in args] + ([] if step is None else [as_int(step)])
        for i in builtins.range(*bounds):
            yield tl.core.tensor(interpreter.TensorHandle(np.array([i], dtype=np.int32), tl.int32), tl.int32)

    def compile_and_exec(self, transformed_ast):
        # Same as Triton's own method, but the kernel runs in a copy of its module's globals with
        # `range` replaced, so host code in that module keeps the builtin.
        code = compile(transformed_ast, filename=self.filename, mode="exec")
        namespace = {**self.kwargs}
        fn_globals = dict(self.fn.__globals__)
        for key, value in vars(interpreter).items():
            fn_globals.setdefault(key, value)
        fn_globals["range"] = tensor_range
        exec(code, fn_globals, namespace)
        return namespace[self.fn.__name__]

    real_bench = autotuner.Autotuner._bench

    def interpreted(fn) -> bool:
        while fn is not None and not isinstance(fn, interpreter.InterpretedFunction):
            fn = getattr(fn, "fn", None)  # autotuners and heuristics wrap the kernel
        return fn is not None

    def equal_bench(self, *args, config, **kwargs):
        if interpreted(self.fn):
            return [1.0, 1.0, 1.0]
        return real_bench(self, *args, config=config, **kwargs)

    interpreter.FunctionRewriter._compile_and_exec = compile_and_exec
    autotuner.Autotuner._bench = equal_bench
    _enabled = True
