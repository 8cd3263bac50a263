"""Time ``block_attention`` against the dense XLA path (:func:`block_attention.reference`, the
same computation as the model's ``xla_attention``) on whatever device is present.

On a GPU the defaults are the 8B geometry (32 q / 8 kv heads, head_dim 128, bf16) at block
32, contexts 4k and 32k, batch 1 and 16, next to the H100 roofline. On CPU the kernel runs
in the Pallas interpreter, so the defaults are tiny and the timings only show that the
path works (the interpreter is not a performance model). ``main(argv)`` is wired as
``nemodiff bench kernels``; ``python -m pallas_kernels.bench --help`` lists the knobs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from nemodiff_jax.model import masks
from pallas_kernels.block_attention import TileConfig, block_attention, make_plan, reference
from pallas_kernels.roofline import window_cost


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _parser(on_gpu: bool) -> argparse.ArgumentParser:
    big = dict(
        batch="1,16", queries="32", context="4096,32768", q_heads=32, kv_heads=8, head_dim=128, dtype="bfloat16", iters=20
    )
    tiny = dict(batch="2", queries="1,8", context="100", q_heads=4, kv_heads=2, head_dim=32, dtype="float32", iters=3)
    d = big if on_gpu else tiny
    ap = argparse.ArgumentParser(prog="nemodiff bench kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--layout", choices=masks.LAYOUTS, default="window")
    ap.add_argument("--batch", type=_ints, default=_ints(d["batch"]), help="comma list")
    ap.add_argument(
        "--queries", type=_ints, default=_ints(d["queries"]),
        help="comma list: window size (window), block B of the B(B+1) layout (quadratic), L of [x_t|x_0] (block_diff)",
    )
    ap.add_argument("--context", type=_ints, default=_ints(d["context"]), help="comma list of cached prefix lengths")
    ap.add_argument("--causal", action="store_true", help="causal window instead of a bidirectional block")
    ap.add_argument("--q-heads", type=int, default=d["q_heads"])
    ap.add_argument("--kv-heads", type=int, default=d["kv_heads"])
    ap.add_argument("--head-dim", type=int, default=d["head_dim"])
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default=d["dtype"])
    ap.add_argument("--block-q", type=int, default=TileConfig.block_q)
    ap.add_argument("--block-k", type=int, default=TileConfig.block_k)
    ap.add_argument("--num-splits", type=int, default=None, help="split-K (default: automatic)")
    ap.add_argument("--iters", type=int, default=d["iters"])
    ap.add_argument("--no-xla", action="store_true", help="skip the XLA reference (it builds a dense [B,H,Q,T] mask)")
    return ap


def _time(fn, args, iters: int) -> tuple[float, float, jax.Array]:
    """(first call incl. compile, median steady-state call) in seconds, and the output."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), out


def _case(layout: str, n: int, context: int, batch: int, causal: bool):
    """(policy, number of window queries, cache length T) for one benchmark row."""
    if layout == "block_diff":
        return masks.block_diff(n, 32 if n % 32 == 0 else max(1, n // 4), batch), 2 * n, 2 * n
    nq = n * (n + 1) if layout == "quadratic" else n
    t = -(-(context + nq) // 64) * 64
    prefix = jnp.full((batch,), context, jnp.int32)
    if layout == "quadratic":
        return masks.quadratic(prefix, n), nq, t
    return (masks.causal(prefix, nq) if causal or nq == 1 else masks.bidirectional(prefix, nq)), nq, t


def main(argv=None) -> int:
    on_gpu = jax.default_backend() == "gpu"
    args = _parser(on_gpu).parse_args(argv)
    dtype = jnp.dtype(args.dtype)
    config = TileConfig(block_q=args.block_q, block_k=args.block_k, num_splits=args.num_splits)
    scale = args.head_dim**-0.5
    xla = jax.jit(reference, static_argnames=("sm_scale",))
    kernel = jax.jit(lambda q, k, v, p: block_attention(q, k, v, p, sm_scale=scale, config=config))
    rng = np.random.default_rng(0)

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); "
          f"{'compiled Triton' if on_gpu else 'Pallas interpreter: timings are not GPU-like'}")
    head = (
        "| layout | B | Q | context | T | dtype | bq/bk/splits | pallas | xla | speedup | max abs diff "
        "| H100 roofline |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for batch in args.batch:
        for n in args.queries:
            for context in args.context if args.layout != "block_diff" else [0]:
                pol, nq, t = _case(args.layout, n, context, batch, args.causal)
                q = jnp.asarray(rng.standard_normal((batch, args.q_heads, nq, args.head_dim), np.float32), dtype)
                k, v = (
                    jnp.asarray(rng.standard_normal((batch, args.kv_heads, t, args.head_dim), np.float32), dtype)
                    for _ in range(2)
                )
                plan = make_plan(batch, args.q_heads, args.kv_heads, nq, t, args.head_dim, config, dtype.itemsize)
                _, t_pl, out = _time(kernel, (q, k, v, pol), args.iters)
                if args.no_xla:
                    t_x, diff = float("nan"), float("nan")
                else:
                    _, t_x, ref = _time(lambda *a: xla(*a, sm_scale=scale), (q, k, v, pol), args.iters)
                    diff = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32))))
                roof = "-"
                if args.layout == "window":
                    c = window_cost(
                        batch, nq, context, q_heads=args.q_heads, kv_heads=args.kv_heads, head_dim=args.head_dim,
                        itemsize=dtype.itemsize, bidirectional=not (args.causal or nq == 1), cache_len=t, config=config,
                    )
                    roof = f"{c.ideal_s * 1e6:.3g} us"
                print(
                    f"| {args.layout} | {batch} | {nq} | {context} | {t} | {dtype.name} "
                    f"| {plan.block_q}/{plan.block_k}/{plan.num_splits} | {t_pl * 1e3:,.3f} ms | {t_x * 1e3:,.3f} ms "
                    f"| {t_x / t_pl:,.2f}x | {diff:.2e} | {roof} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
