"""Run by test_plan.py in a fresh process (XLA_FLAGS must name the host devices before JAX is
imported, and the peak RSS must be this decode's alone): plans a small decode with
:mod:`nemodiff_jax.decode.plan`, then measures the same decode on real weights and prints one
``REPORT {json}`` line.

``python -m tests.nemodiff_jax.decode.plan_worker --mesh 1x1|2x4 [--mode MODE]`` (float32 weights)

Measured, independently of the planner: parameters and KV cache as the bytes of the shards the
real arrays hold on their most loaded device (``addressable_shards``), and the run's memory as
the peak RSS above the RSS before the run (``/proc/self/clear_refs`` resets the high-water mark
after a warm-up call, so compilation is not counted).
"""

from __future__ import annotations

import argparse
import gc
import json
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import nemodiff_jax as nd  # noqa: E402
from nemodiff_jax.decode import engine  # noqa: E402
from nemodiff_jax.decode.generate import prepare  # noqa: E402
from nemodiff_jax.decode.plan import plan_memory  # noqa: E402
from nemodiff_jax.model import sharding  # noqa: E402

BATCH, PROMPT, NEW = 4, 500, 64


def config():
    return nd.NLDConfig.preset("tiny").replace(
        vocab_size=16384, hidden_size=256, intermediate_size=768, num_layers=2, num_heads=8, num_kv_heads=4,
        head_dim=32, max_position_embeddings=4096, dtype="float32")


def rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def most_loaded(tree) -> int:
    totals: dict = {}
    for leaf in jax.tree.leaves(tree):
        for s in leaf.addressable_shards:
            totals[s.device] = totals.get(s.device, 0) + s.data.nbytes
    return max(totals.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mesh", default="1x1")
    ap.add_argument("--mode", default="ar")
    args = ap.parse_args()
    cfg = config()
    plan = plan_memory(cfg, mode=args.mode, batch=BATCH, prompt=PROMPT, new=NEW, dtype="float32", mesh=args.mesh)

    shape = tuple(int(x) for x in args.mesh.split("x"))
    mesh = sharding.make_mesh(shape, jax.devices()[: shape[0] * shape[1]])
    model = nd.Model(cfg, nd.init_params(cfg, 0))
    model = sharding.shard_model(model, mesh)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(4, cfg.vocab_size, size=PROMPT).tolist() for _ in range(BATCH)]
    kw = dict(mode=args.mode, max_new_tokens=NEW)

    # The KV cache the decode really builds: the engine's state after its first starts.
    with sharding.use_mesh(model.params):
        p = prepare(model, prompts, **kw)
        state, _ = engine.start(model.params, cfg, p.queue, spec=p.spec)
        cache = most_loaded((state.rows.cache.k, state.rows.cache.v))
        del state
    nd.generate(model, prompts, **kw)  # warm-up: compile
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = rss("VmRSS")
    res = nd.generate(model, prompts, **kw)
    peak = rss("VmHWM")
    print("REPORT " + json.dumps({
        "mesh": args.mesh, "devices": shape[0] * shape[1], "plan": plan.as_dict(),
        "measured": {"params": most_loaded(model.params), "kv_cache": cache, "run_rss": peak - before},
        "generated": [len(t) for t in res.tokens],
    }))


if __name__ == "__main__":
    main()
