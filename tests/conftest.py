"""Test-session setup: CPU only, offline, and runtime shape/dtype checks.

jaxtyping's import hook wraps every annotated function and dataclass in our packages with
beartype, so a wrong shape or dtype fails the test at trace time.

Run time is mostly XLA compilation, so LLVM runs at -O0 (``tests/subprocess_env.py`` says why
that is safe), the session shares one persistent compilation cache (below) and the slowest
modules are scheduled first (``SLOW_FIRST``).
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):  # see subprocess_env.py
    from tests.subprocess_env import COMPILE_FLAGS

    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {COMPILE_FLAGS}".strip()

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

# Under --dist loadscope a module runs whole on one worker, and xdist hands modules out in
# collection order (pyproject turns off its reorder by test count, which put these few-test
# modules last, one worker running a long module alone at the end). The slowest modules are
# collected first, longest first (seconds in one loaded 2-worker run at 77d80d2; a hint, not a
# contract: a module missing here just runs in collection order after these).
SLOW_FIRST = (
    "tests/nemodiff_jax/decode/test_engine.py",  # 164
    "tests/nemodiff_jax/model/test_sharded_jobs.py",  # 155
    "tests/notebooks/test_notebooks.py",  # 154
    "tests/nemodiff_jax/decode/test_pallas_decode.py",  # 153
    "tests/nemodiff_jax/eval/test_lm_eval_model.py",  # 149
    "tests/nemodiff_jax/model/test_sharding.py",  # 147
    "tests/nemodiff_jax/decode/test_prefill.py",  # 143
    "tests/nemodiff_jax/decode/test_linear_spec.py",  # 137
    "tests/nemodiff_jax/decode/test_memory.py",  # 126
    "tests/nemodiff_jax/test_readme.py",  # 120
    "tests/nemodiff_jax/eval/test_torch_twin.py",  # 106
    "tests/nemodiff_jax/eval/test_eval.py",  # 105
    "tests/nemodiff_jax/decode/test_plan.py",  # 85
    "tests/nemodiff_jax/decode/test_diffusion.py",  # 83
    "tests/nemodiff_jax/model/test_layout.py",  # 80
    "tests/nemodiff_jax/decode/test_quadratic_spec.py",  # 80
    "tests/nemodiff_jax/train/test_loop.py",  # 76
    "tests/nemodiff_jax/cli/test_cli.py",  # 75
    "tests/nemodiff_jax/decode/test_nonfinite.py",  # 68
    "tests/nemodiff_jax/model/test_bf16.py",  # 67
)


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most 4 (each worker imports JAX and compiles its own
    programs; more than that buys little and multiplies memory)."""
    return max(1, min(os.cpu_count() or 1, 4))


def pytest_collection_modifyitems(config, items):
    """Modules in ``SLOW_FIRST`` first, in that order; each module's tests keep their order."""
    rank = {m: i for i, m in enumerate(SLOW_FIRST)}
    items.sort(key=lambda it: rank.get(it.nodeid.split("::", 1)[0], len(rank)))


def pytest_unconfigure(config):
    if _COMPILE_CACHE and not hasattr(config, "workerinput"):
        import shutil

        shutil.rmtree(_COMPILE_CACHE, ignore_errors=True)
