"""Run by test_sharded_jobs.py in a fresh process with 8 CPU host devices: the evaluation runner
and two training steps on the embedded model, on one device and sharded over a 2x4 mesh; prints
one ``REPORT {json}`` line comparing them.

``python -m tests.nemodiff_jax.model.sharded_jobs_worker``
"""

from __future__ import annotations

import json
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import nemodiff_jax as nd  # noqa: E402
from nemodiff_jax.eval.runner import evaluate  # noqa: E402
from nemodiff_jax.model import sharding  # noqa: E402
from nemodiff_jax.train.loop import TrainConfig, make_train_step  # noqa: E402
from nemodiff_jax.train.optim import OptimConfig, make_optimizer  # noqa: E402

MODES = ("linear_spec",)  # its tokens are the AR tokens; it runs the draft and the verify passes


def eval_rows(model):
    res = evaluate(model, "synthetic:reverse,sort", modes=MODES, batch_size=4, n=2, warmup=False, progress=False,
                   max_new_tokens=24)
    return [(s["mode"], s["task"], s["index"], s["prediction"], s["nfe"]) for s in res.samples]


def train_step(params, cfg, mesh):
    tc = TrainConfig(model=cfg, batch_size=4, seq_len=32, steps=10, progress=False,
                     optim=OptimConfig(warmup_steps=1, schedule="constant"))
    opt = make_optimizer(tc.optim, tc.steps)
    params = jax.tree.map(jax.numpy.copy, params)  # the step donates its state
    if mesh is not None:
        params = sharding.shard_params(params, mesh)
    state = {"params": params, "opt_state": opt.init(params), "step": jax.numpy.zeros((), "int32"),
             "rng": jax.random.key_data(jax.random.key(0))}
    rng = np.random.default_rng(0)
    ids = rng.integers(4, cfg.vocab_size, size=(4, 32)).astype(np.int32)
    mask = np.ones((4, 32), np.int32)
    ids, mask = (sharding.place_rows(x, mesh) for x in (ids, mask))
    losses, step = [], make_train_step(tc)
    with sharding.use_mesh(mesh):
        for _ in range(2):  # the first step's learning rate is 0 (warm-up), the second moves
            state, metrics = step(state, ids, mask)
            losses.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    flat = [np.asarray(x) for x in jax.tree.leaves(sharding.replicated(state["params"], mesh))]
    return losses, flat


def main() -> None:
    mesh = sharding.make_mesh("2x4")
    one = nd.load("embedded")
    sharded = nd.load("embedded", mesh=mesh)
    base, got = eval_rows(one), eval_rows(sharded)
    loss1, p1 = train_step(one.params, one.config, None)
    loss8, p8 = train_step(one.params, one.config, mesh)
    step_err = max(float(np.max(np.abs(a - b))) for a, b in zip(p1, p8))
    moved = max(float(np.max(np.abs(a - np.asarray(b)))) for a, b in zip(p1, jax.tree.leaves(one.params)))
    print("REPORT " + json.dumps({
        "devices": jax.device_count(), "eval_rows": len(base), "eval_same": base == got,
        "eval_diff": [(a, b) for a, b in zip(base, got) if a != b][:3],
        "params_sharded": str(sharded.params["layers"]["self_attn"]["q_proj"].sharding.spec),
        "loss": [loss1, loss8], "step_err": step_err, "step_moved": moved,
    }))


if __name__ == "__main__":
    main()
