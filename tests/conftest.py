"""Test-session setup: CPU only, offline, and runtime shape/dtype checks.

jaxtyping's import hook wraps every annotated function and dataclass in our packages with
beartype, so a wrong shape or dtype fails the test at trace time.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from jaxtyping import install_import_hook  # noqa: E402

_hook = install_import_hook(["nemodiff_jax", "pallas_kernels", "convert_weights"], "beartype.beartype")


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most 4 (each worker imports JAX and compiles its own
    programs; more than that buys little and multiplies memory)."""
    return max(1, min(os.cpu_count() or 1, 4))
