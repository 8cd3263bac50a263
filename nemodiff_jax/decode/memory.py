"""Compiled memory of the real decode at real sizes, without the weights.

``decode_memory(cfg, mode=..., batch=..., prompt=..., new=...)`` lowers and compiles the
jitted decode that :func:`nemodiff_jax.generate` runs for that mode (same static shapes:
prompt bucket, output bucket, cache length) with *abstract* parameters
(``jax.ShapeDtypeStruct`` leaves from :func:`nemodiff_jax.api.abstract_params`), so an 8B or
14B decode compiles on a laptop CPU, and reads XLA's ``compiled.memory_analysis()``.

``python -m nemodiff_jax.decode.memory --table`` prints the Markdown table of docs/MEMORY.md
(the 8B and 14B presets, batch 1 and 16, prompts of 1k and 4k tokens). The bound checked
there: temporaries <= 1.25 x the KV cache + a few GiB (:data:`SLACK_GIB`).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from ..model.forward import abstract_params
from ..model.config import NLDConfig

GIB = 2**30
SLACK_GIB = 4.0
MODES = ("ar", "diffusion", "linear_spec", "quadratic_spec")


def kv_cache_bytes(cfg: NLDConfig, batch: int, cache_len: int, dtype) -> int:
    return 2 * cfg.num_layers * batch * cfg.num_kv_heads * cache_len * cfg.head_dim * jnp.dtype(dtype).itemsize


def decode_shapes(mode: str, prompt: int, new: int, block_length: int) -> dict:
    """The static shapes ``generate`` compiles for these lengths."""
    from .generate import out_bucket, prompt_bucket
    from .knobs import cache_needed

    bl = 1 if mode == "ar" else block_length
    width = prompt_bucket(prompt)
    out_len = out_bucket(new, bl)
    return dict(block_length=bl, width=width, out_len=out_len, cache_len=cache_needed(mode, width, out_len, bl))


def lower_decode(cfg: NLDConfig, *, mode: str, batch: int, prompt: int, new: int, block_length: int | None = None):
    """``(lowered, shapes)``: the engine's jitted decode for ``mode`` lowered on abstract params and prompts."""
    return lower_decode_on(cfg, abstract_params(cfg), mode=mode, batch=batch, prompt=prompt, new=new,
                           block_length=block_length)


def lower_decode_on(cfg: NLDConfig, params, *, mode: str, batch: int, prompt: int, new: int,
                    block_length: int | None = None, mesh=None):
    """:func:`lower_decode` on the given (abstract) ``params``; with a ``mesh`` (their
    shardings' mesh), the prompts' rows go over ``"data"`` and the lowering runs under the mesh,
    as ``generate`` runs a sharded model."""
    from . import engine
    from .knobs import Knobs
    from ..model import sharding

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    bl = cfg.block_size if block_length is None else block_length
    sh = decode_shapes(mode, prompt, new, bl)
    spec = engine.LoopSpec(mode=mode, block_length=sh["block_length"], out_len=sh["out_len"],
                           cache_len=sh["cache_len"], prompt_width=sh["width"], slots=batch)
    # Concrete (small) prompt, keys (int seed rows) and knobs: only the weights need to be abstract.
    queue = engine.Queue(
        prompt=jnp.zeros((batch, sh["width"]), jnp.int32),
        prompt_len=jnp.full((batch,), prompt, jnp.int32),
        keys=jnp.stack([jnp.zeros((batch,), jnp.int32), jnp.arange(batch, dtype=jnp.int32)], axis=1),
        knobs=Knobs.make(batch, max_new_tokens=new).clipped(sh["out_len"]),
    )
    # Lower over the queue's flat leaves: ``Lowered`` rebuilds its argument pytrees from placeholder
    # leaves, which the runtime-checked Knobs/Queue annotations would reject.
    leaves, treedef = jax.tree.flatten(queue)
    leaves = [sharding.place_rows(x, mesh) if getattr(x, "ndim", 0) else x for x in leaves]

    def run(params, leaves):
        return engine.decode(params, cfg, jax.tree.unflatten(treedef, leaves), spec=spec)

    with sharding.use_mesh(mesh):
        return jax.jit(run).lower(params, leaves), sh


def decode_memory(
    cfg: NLDConfig,
    *,
    mode: str = "ar",
    batch: int = 1,
    prompt: int = 1024,
    new: int = 128,
    dtype: str = "float32",
    block_length: int | None = None,
) -> dict:
    """Compile the decode on abstract ``dtype`` weights and return its memory analysis (bytes)."""
    cfg = cfg.replace(dtype=dtype)
    t0 = time.perf_counter()
    lowered, sh = lower_decode(cfg, mode=mode, batch=batch, prompt=prompt, new=new, block_length=block_length)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    ma = compiled.memory_analysis()
    kv = kv_cache_bytes(cfg, batch, sh["cache_len"], dtype)
    temp = int(ma.temp_size_in_bytes)
    bound = 1.25 * kv + SLACK_GIB * GIB
    return dict(
        mode=mode, batch=batch, prompt=prompt, new=new, dtype=dtype, **sh,
        temp=temp, argument=int(ma.argument_size_in_bytes), output=int(ma.output_size_in_bytes),
        alias=int(ma.alias_size_in_bytes), kv_cache=kv, bound=bound, within=temp <= bound,
        lower_s=t1 - t0, compile_s=t2 - t1,
    )


def _gib(x) -> str:
    return f"{x / GIB:.2f}"


def table(rows: list[dict], names: list[str]) -> str:
    head = ("| model | mode | batch | prompt | new | cache slots | KV cache GiB | temporaries GiB | "
            "temp / KV | bound GiB | within | arguments GiB | compile s |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for name, r in zip(names, rows):
        lines.append(
            f"| {name} | {r['mode']} | {r['batch']} | {r['prompt']} | {r['new']} | {r['cache_len']} | "
            f"{_gib(r['kv_cache'])} | {_gib(r['temp'])} | {r['temp'] / r['kv_cache']:.2f} | {_gib(r['bound'])} | "
            f"{'yes' if r['within'] else '**no**'} | {_gib(r['argument'])} | {r['compile_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", action="store_true", help="print the Markdown table of docs/MEMORY.md")
    ap.add_argument("--presets", default="8b,14b")
    ap.add_argument("--modes", default="ar,linear_spec")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--prompts", default="1024,4096")
    ap.add_argument("--new", type=int, default=256)
    args = ap.parse_args(argv)
    rows, names = [], []
    for preset in args.presets.split(","):
        cfg = NLDConfig.preset(preset)
        for mode in args.modes.split(","):
            for batch in map(int, args.batches.split(",")):
                for prompt in map(int, args.prompts.split(",")):
                    r = decode_memory(cfg, mode=mode, batch=batch, prompt=prompt, new=args.new)
                    rows.append(r)
                    names.append(preset)
                    if not args.table:
                        print({k: (round(v / GIB, 3) if isinstance(v, int) and v > GIB // 16 else v)
                               for k, v in r.items()}, flush=True)
    if args.table:
        print(table(rows, names))


if __name__ == "__main__":
    main()
