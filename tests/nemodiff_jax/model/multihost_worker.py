"""One process of the two-process test (test_multihost.py): 4 CPU devices here, 8 in the
global 2x4 mesh over both processes, joined through ``jax.distributed.initialize`` on localhost.

``python -m tests.nemodiff_jax.model.multihost_worker COORDINATOR NUM_PROCESSES PROCESS_ID [--modes a,b]``
or ``... --local`` (the reference: one process, one device, no mesh). Prints one ``REPORT {json}``
line with the tokens of each mode.
"""

from __future__ import annotations

import json
import os
import sys

local = "--local" in sys.argv
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + ("" if local else " --xla_force_host_platform_device_count=4")

import jax  # noqa: E402

if not local:
    coordinator, num, pid = (x for x in sys.argv[1:4])
    num, pid = int(num), int(pid)
    # CPU collectives across processes go through gloo (this jax's default; set it anyway).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)

import numpy as np  # noqa: E402

import nemodiff_jax as nd  # noqa: E402
from nemodiff_jax.model import sharding  # noqa: E402

from .sharded_prompts import MODES, NEW_TOKENS, PROMPTS  # noqa: E402



def main() -> None:
    modes = sys.argv[sys.argv.index("--modes") + 1].split(",") if "--modes" in sys.argv else list(MODES)
    mesh = None if local else sharding.make_mesh("2x4")  # jax.devices(): all 8, across the processes
    model = nd.load("embedded", mesh=mesh)
    tokens = {m: nd.generate(model, PROMPTS, mode=m, max_new_tokens=NEW_TOKENS, **MODES[m]).tokens for m in modes}
    logits = sharding.replicated(nd.forward_logits(model, np.array([PROMPTS[0][:12], PROMPTS[3]])), mesh)
    report = {
        "process": jax.process_index(), "processes": jax.process_count(),
        "local_devices": jax.local_device_count(), "devices": jax.device_count(),
        "tokens": tokens, "logits_sum": float(np.asarray(logits, np.float64).sum()),
    }
    print("REPORT " + json.dumps(report), flush=True)
    if not local:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
