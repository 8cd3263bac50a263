"""The research notebooks execute end to end (small settings, tiny random model when the
embedded one is absent). All four run in ONE subprocess, so JAX starts once and programs
compiled by one notebook serve the next; each runs as a plain script (its ``# %%`` cells in
order), which is what ``jupytext --to ipynb`` + a kernel would execute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))

RUNNER = r"""
import json, runpy, sys, time, traceback
times = {}
for path in sys.argv[1:]:
    t0 = time.perf_counter()
    try:
        runpy.run_path(path, run_name="__main__")
    except BaseException:
        traceback.print_exc()
        print("NOTEBOOK FAILED: " + path, flush=True)
        sys.exit(1)
    times[path.rsplit("/", 1)[-1]] = round(time.perf_counter() - t0, 1)
print("TIMES " + json.dumps(times))
"""


def test_there_are_four_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_jupytext_percent(path):
    text = path.read_text()
    assert text.count("# %%") >= 4 and "jupytext" in text
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.reads(text, fmt="py:percent")
    kinds = {c.cell_type for c in nb.cells}
    assert kinds == {"markdown", "code"}
    # Markdown cells are all comments: no code hides in them.
    for cell in nb.cells:
        if cell.cell_type == "code":
            compile(cell.source, str(path), "exec")


def test_notebooks_execute(tmp_path):
    env = dict(os.environ, NEMODIFF_NB_SMALL="1", NEMODIFF_NB_OUT=str(tmp_path), MPLBACKEND="Agg",
               JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", RUNNER, *map(str, NOTEBOOKS)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    times = json.loads(proc.stdout.rsplit("TIMES ", 1)[1])
    assert len(times) == 4
    print("notebook seconds:", times)
    for name in ("01_canvas.png", "03_canvases.png", "sweep.png", "sweep.svg"):
        assert (tmp_path / name).is_file(), name
