"""``import nemodiff_jax`` and ``nemodiff --help`` load no JAX, and the help comes back fast."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

NO_JAX = "import sys\n{body}\nbad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax'))\n" \
         "assert not bad, bad\nprint('ok')\n"


def _run(body: str) -> str:
    out = subprocess.run([sys.executable, "-c", NO_JAX.format(body=body)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_package_loads_no_jax():
    assert "ok" in _run("import nemodiff_jax\nassert 'generate' in dir(nemodiff_jax)")


def test_help_loads_no_jax():
    body = ("import contextlib, io\nfrom nemodiff_jax.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as buf:\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "assert 'usage: nemodiff' in buf.getvalue()")
    assert "ok" in _run(body)


def test_public_names_resolve_lazily():
    import nemodiff_jax as nd

    for name in nd.__all__:
        assert getattr(nd, name) is not None
    assert callable(nd.generate) and nd.GenerateResult.__name__ == "GenerateResult"
    with pytest.raises(AttributeError):
        nd.no_such_name  # noqa: B018


def test_help_is_quick():
    exe = shutil.which("nemodiff")
    cmd = [exe, "--help"] if exe else [sys.executable, "-m", "nemodiff_jax", "--help"]
    subprocess.run(cmd, capture_output=True, timeout=60)  # warm the file cache
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - t0
    assert out.returncode == 0 and "usage: nemodiff" in out.stdout
    assert wall < 3.0, f"nemodiff --help took {wall:.2f} s (target: under 1 s; slack for a loaded machine)"
