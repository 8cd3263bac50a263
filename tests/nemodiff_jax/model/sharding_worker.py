"""Run by test_sharding.py in a fresh process: it sets 8 CPU host devices before jax is
imported (the test process has already imported jax with one), decodes with the embedded
model on one device and on the requested meshes, and prints one JSON report line.

``python -m tests.nemodiff_jax.model.sharding_worker --plan quick|full [--converted DIR]``
"""

from __future__ import annotations

import argparse
import json
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import nemodiff_jax as nd  # noqa: E402
from nemodiff_jax.model import sharding  # noqa: E402

from .sharded_prompts import MODES, NEW_TOKENS, PROMPTS  # noqa: E402

ALL = tuple(MODES)
# (mesh, modes, fsdp): quick covers every mode on the 2-D mesh and AR on the 1-D ones.
PLANS = {
    "quick": [("2x4", ALL, False), ("1x8", ("ar",), False), ("8x1", ("ar",), False), ("2x4", (), True)],
    "full": [(m, ALL, f) for m in ("1x8", "2x4", "8x1") for f in (False, True)],
}


def run(model, modes, new):
    return {m: nd.generate(model, PROMPTS, mode=m, max_new_tokens=new, **MODES[m]).tokens for m in modes}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", default="quick", choices=sorted(PLANS))
    ap.add_argument("--converted", default=None, help="also load this converted directory on a 2x4 mesh")
    ap.add_argument("--new", type=int, default=NEW_TOKENS)
    args = ap.parse_args()
    plan = PLANS[args.plan]
    ref = nd.load("embedded")
    need = sorted({m for _, modes, _ in plan for m in modes})
    base = run(ref, need, args.new)
    ids = np.array([PROMPTS[2]])
    base_logits = np.asarray(nd.forward_logits(ref, ids))
    report = {"devices": jax.device_count(), "runs": [], "answer_lengths": [len(t) for t in base["ar"]]}
    for shape, modes, fsdp in plan:
        mesh = sharding.make_mesh(shape)
        model = nd.load("embedded", mesh=mesh, fsdp=fsdp)
        got = run(model, modes, args.new)
        logits = np.asarray(nd.forward_logits(model, ids))
        shards = {
            name: sorted({tuple(s.data.shape) for s in leaf.addressable_shards})
            for name, leaf in [("k_proj", model.params["layers"]["self_attn"]["k_proj"]),
                               ("q_proj", model.params["layers"]["self_attn"]["q_proj"]),
                               ("embed_tokens", model.params["embed_tokens"])]
        }
        if shape == "2x4" and not fsdp and "linear_spec" in modes:  # streaming on the mesh too
            last = list(nd.stream(model, PROMPTS, every=3, mode="linear_spec", max_new_tokens=args.new,
                                  **MODES["linear_spec"]))[-1]
            report["stream_same"] = last.result.tokens == base["linear_spec"]
        report["runs"].append({
            "mesh": shape, "fsdp": fsdp,
            "same": {m: got[m] == base[m] for m in modes},
            "logit_err": float(np.abs(logits - base_logits).max()),
            "shards": shards,
            "spec": sharding.describe(model.params),
            "per_device_bytes": sharding.per_device_bytes(model.params),
            "total_bytes": int(sum(x.nbytes for x in jax.tree.leaves(model.params))),
        })
    # the per-layer layout (model/layout.py) on the 2-D mesh: slices keep their shardings, AR is unchanged
    per = nd.load("embedded", mesh=sharding.make_mesh("2x4"), stacked=False)
    report["per_layer"] = {
        "same_ar": run(per, ("ar",), args.new)["ar"] == base["ar"],
        "logit_err": float(np.abs(np.asarray(nd.forward_logits(per, ids)) - base_logits).max()),
        "q_proj_shards": sorted({tuple(s.data.shape) for s in per.params["layers_0"]["self_attn"]["q_proj"].addressable_shards}),
        "q_proj_spec": str(per.params["layers_0"]["self_attn"]["q_proj"].sharding.spec),
    }
    if args.converted:
        mesh = sharding.make_mesh("2x4")
        conv = nd.load(args.converted, mesh=mesh)
        flat_ref = jax.tree_util.tree_leaves_with_path(ref.params)
        flat = dict(jax.tree_util.tree_leaves_with_path(conv.params))
        report["converted"] = {
            "equal": all(np.array_equal(np.asarray(v), np.asarray(flat[k])) for k, v in flat_ref),
            "spec_q": str(conv.params["layers"]["self_attn"]["q_proj"].sharding.spec),
        }
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
