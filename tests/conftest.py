"""Test-session setup: CPU only, offline, and runtime shape/dtype checks.

jaxtyping's import hook wraps every annotated function and dataclass in our packages with
beartype, so a wrong shape or dtype fails the test at trace time.

Run time is mostly XLA compilation, so the session shares one persistent compilation cache
(below).
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache per test session, in a fresh temporary directory made by the
# first process (before JAX is imported) and inherited through the environment by the xdist
# workers and by every subprocess a test starts: a program that two workers or processes need
# is compiled once. Removed when the session ends (pytest_unconfigure). A cache directory given
# in the environment is used as it is and kept. Compile counters (nemodiff_jax.eval.compiles)
# count the same with it: JAX reports a program loaded from the cache as a backend compile too.
_COMPILE_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _COMPILE_CACHE = tempfile.mkdtemp(prefix="nemodiff-jax-test-compile-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILE_CACHE

from jaxtyping import install_import_hook  # noqa: E402

_hook = install_import_hook(["nemodiff_jax", "pallas_kernels", "convert_weights"], "beartype.beartype")


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most 4 (each worker imports JAX and compiles its own
    programs; more than that buys little and multiplies memory)."""
    return max(1, min(os.cpu_count() or 1, 4))


def pytest_unconfigure(config):
    if _COMPILE_CACHE and not hasattr(config, "workerinput"):
        import shutil

        shutil.rmtree(_COMPILE_CACHE, ignore_errors=True)
