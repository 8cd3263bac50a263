"""The environment a test's subprocess starts with.

The session's own environment (tests/conftest.py sets it before JAX loads), with ``XLA_FLAGS``
cut back to the session's compile-speed flags: a worker that names its own host-device count
appends it to these, and no device count of the parent leaks into a child.
"""

from __future__ import annotations

import os

# Tests run tiny models, so their time is XLA compilation, not execution. LLVM at -O0 compiles
# about 20% faster (tests/nemodiff_jax/decode/test_linear_spec.py alone: 53 -> 44 s; the suite
# on 2 workers: 1052 -> 765 s). The optimized HLO, its buffers and memory analysis are the same
# as at the default level (checked on a linear_spec decode); only the machine code differs, and
# with it the last bits of some float results (-O0 fuses no multiply-adds).
COMPILE_FLAGS = "--xla_backend_optimization_level=0"


def child_env(*, compile_flags: bool = True, **extra: str) -> dict:
    """``os.environ`` with ``XLA_FLAGS`` = the session's :data:`COMPILE_FLAGS` (or nothing when
    ``compile_flags`` is False: a child that compares floats at the default level's rounding)."""
    env = dict(os.environ)
    keep = compile_flags and COMPILE_FLAGS in env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = COMPILE_FLAGS if keep else ""
    env.update(extra)
    return env
