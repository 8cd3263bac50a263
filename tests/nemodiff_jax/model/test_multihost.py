"""Two processes on localhost, 4 CPU devices each, joined by ``jax.distributed.initialize`` into
one 2x4 mesh: the embedded model loaded sharded over both decodes the same tokens as one process
on one device (multihost_worker.py). NEMODIFF_SLOW=1 runs every mode; the default runs AR and
linear self-speculation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from tests.subprocess_env import child_env

ROOT = Path(__file__).resolve().parents[3]
WORKER = "tests.nemodiff_jax.model.multihost_worker"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _report(out: str) -> dict:
    return json.loads(next(x for x in out.splitlines() if x.startswith("REPORT "))[len("REPORT "):])


def test_two_processes_decode_like_one():
    modes = "ar,diffusion,linear_spec,quadratic_spec" if os.environ.get("NEMODIFF_SLOW") == "1" else "ar,linear_spec"
    env = child_env()
    coord = f"localhost:{_free_port()}"
    procs = [
        subprocess.Popen([sys.executable, "-m", WORKER, coord, "2", str(i), "--modes", modes], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    local = subprocess.run([sys.executable, "-m", WORKER, "--local", "--modes", modes], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=600)
        finally:
            p.kill()
        assert p.returncode == 0, err[-4000:]
        outs.append(_report(out))
    assert local.returncode == 0, local.stderr[-4000:]
    ref = _report(local.stdout)
    assert ref["devices"] == 1
    for i, r in enumerate(outs):
        assert (r["process"], r["processes"], r["local_devices"], r["devices"]) == (i, 2, 4, 8)
        assert r["tokens"] == ref["tokens"]
        assert abs(r["logits_sum"] - ref["logits_sum"]) < 1e-3 * abs(ref["logits_sum"])
    assert min(len(t) for t in ref["tokens"]["ar"]) > 10
