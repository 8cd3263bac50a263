"""``nemodiff plan``: will a decode fit, and on how many devices? No weights are loaded.

Per device: the parameters, the KV cache and the decode's other temporaries, from XLA's
compiled memory analysis of the engine's decode on abstract weights
(:mod:`nemodiff_jax.decode.plan` says how bf16 is handled on CPU), for the ``--mesh`` asked
for, and the smallest mesh whose total fits ``--device-memory``.

Host devices: a mesh of N devices is compiled on N CPU host devices, which JAX creates only
when ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` is set before it is imported. This
command sets it (to the largest mesh it may compile) when JAX is not imported yet, and
otherwise, when the process has too few CPU devices (``nemodiff.cli.main([...])`` from a
program that already uses JAX), runs itself again in a fresh Python with the flag set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from .common import CLIError, formatter

PRESETS = ("tiny", "3b", "8b", "14b")
FLAG = "--xla_force_host_platform_device_count"
EXAMPLES = """\
examples:
  nemodiff plan --model 14b --mode ar --batch 16 --prompt 4096 --new 256 --dtype bfloat16
  nemodiff plan --model 8b --mode linear_spec --batch 16 --prompt 4096 --mesh 2x4 --device-memory 24GB
  nemodiff plan --model ./NLD-8B --dtype int8 --json
  nemodiff plan --table        # the README's table (8B and 14B, bf16 and int8, batch 1 and 16, 4k prompts)"""
DESCRIPTION = """\
Will a decode fit, and on how many devices? No weights are loaded: the engine's decode (prefill
and rounds) is compiled on abstract weights placed over the mesh by the sharding rules, and XLA's
per-device memory analysis gives the parameters, the KV cache and the other temporaries. Then the
smallest mesh (1, 2, 4, ... devices) whose total fits --device-memory. The compile is float32 on
CPU host devices (bf16 matmuls upcast there); parameters and cache are counted in --dtype
(docs/MEMORY.md)."""
TABLE = dict(models=("8b", "14b"), dtypes=("bfloat16", "int8"), batches=(1, 16), prompt=4096, new=256,
             memories=("80GB", "40GB", "24GB"))


def add_plan(sub) -> None:
    p = sub.add_parser("plan", help="per-device memory of a decode, and the smallest mesh that fits",
                       description=DESCRIPTION,
                       epilog=EXAMPLES, formatter_class=formatter)
    p.add_argument("--model", default="8b", metavar="3b|8b|14b|PATH",
                   help="a preset or a model directory (only its config.json is read); default 8b")
    p.add_argument("--mode", default="ar", choices=("ar", "diffusion", "linear_spec", "quadratic_spec"))
    p.add_argument("--batch", type=int, default=1, help="prompts decoded at once (default 1)")
    p.add_argument("--prompt", type=int, default=4096, help="prompt tokens (default 4096)")
    p.add_argument("--new", type=int, default=256, help="new tokens (default 256)")
    p.add_argument("--block-length", type=int, default=None, help="block length (default: the config's)")
    p.add_argument("--mesh", default="1x1", metavar="DATAxMODEL", help="mesh to plan (default 1x1)")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "int8"),
                   help="weights: float32, bfloat16 (default) or int8 kernels (bf16 elsewhere)")
    p.add_argument("--device-memory", default="80GB", metavar="SIZE",
                   help="memory of one device, e.g. 80GB, 24GiB (binary units; default 80GB)")
    p.add_argument("--max-devices", type=int, default=64, help="largest mesh the search tries (default 64)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the text report")
    p.add_argument("--table", action="store_true", help="print the README's Markdown planner table")
    p.set_defaults(func=cmd_plan)


def _needed_devices(args) -> int:
    from ..decode.plan import parse_mesh

    d, m = parse_mesh(args.mesh)
    return max(d * m, args.max_devices)


def _flag_count(flags: str) -> int:
    found = re.findall(FLAG + r"=(\d+)", flags)
    return int(found[-1]) if found else 1


def ensure_host_devices(n: int, argv: list[str]) -> int | None:
    """Make ``n`` CPU host devices available: set the flag before JAX loads, or rerun this command
    in a fresh process with it (returns that process's exit status; None: go on here)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" not in sys.modules:
        if _flag_count(flags) < n:
            os.environ["XLA_FLAGS"] = f"{flags} {FLAG}={n}".strip()
        return None
    import jax

    if len(jax.devices("cpu")) >= n:
        return None
    env = dict(os.environ, XLA_FLAGS=f"{flags} {FLAG}={n}".strip())
    return subprocess.run([sys.executable, "-m", "nemodiff_jax", "plan", *argv], env=env).returncode


def _config(spec: str):
    from ..model.config import NLDConfig

    if spec.lower() in PRESETS:
        return NLDConfig.preset(spec)
    if spec == "embedded":
        from ..io.checkpoint import EMBEDDED_DIR

        spec = str(EMBEDDED_DIR)
    if not os.path.exists(spec):
        raise CLIError(f"--model {spec}: neither a preset ({', '.join(PRESETS)}) nor an existing directory")
    return NLDConfig.from_hf(spec)


def _gib(x: int) -> str:
    return f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.1f} MiB"


def _line(plan) -> str:
    d, m = plan.mesh
    return (f"mesh {d}x{m} ({d * m} device{'s' if d * m > 1 else ''}): parameters {_gib(plan.params)}, "
            f"KV cache {_gib(plan.kv_cache)}, other temporaries {_gib(plan.working)}, "
            f"total {_gib(plan.total)} per device (compiled in {plan.compile_s:.1f} s)")


def run_plan(args) -> dict:
    """The plan as a dict: the asked-for mesh and the search (the library calls behind the CLI)."""
    from ..decode.plan import parse_bytes, parse_mesh, plan_memory, smallest_mesh

    cfg = _config(args.model)
    memory = parse_bytes(args.device_memory)
    if args.max_devices < 1:
        raise ValueError(f"--max-devices must be >= 1, got {args.max_devices}")
    kw = dict(mode=args.mode, batch=args.batch, prompt=args.prompt, new=args.new, dtype=args.dtype,
              block_length=args.block_length)
    asked = plan_memory(cfg, mesh=parse_mesh(args.mesh), **kw)
    best, tried = smallest_mesh(cfg, device_memory=memory, max_devices=args.max_devices,
                                known={asked.mesh: asked}, **kw)
    return {
        "model": args.model, "device_memory": memory, "plan": asked,
        "smallest": best, "tried": tried,
    }


def _argv_of(args) -> list[str]:
    """The parsed options as a command line again (to rerun this command in a fresh process)."""
    out = []
    for name in ("model", "mode", "batch", "prompt", "new", "block_length", "mesh", "dtype", "device_memory",
                 "max_devices"):
        value = getattr(args, name)
        if value is not None:
            out += ["--" + name.replace("_", "-"), str(value)]
    return out + [f"--{f}" for f in ("json", "table") if getattr(args, f)]


def cmd_plan(args) -> int:
    rerun = ensure_host_devices(TABLE_DEVICES if args.table else _needed_devices(args), _argv_of(args))
    if rerun is not None:
        return rerun
    if args.table:
        print(readme_table())
        return 0
    out = run_plan(args)
    plan, best = out["plan"], out["smallest"]
    if args.json:
        print(json.dumps({
            "model": out["model"], "device_memory": out["device_memory"], "plan": plan.as_dict(),
            "smallest": best.as_dict() if best else None,
            "tried": [{"mesh": f"{s[0]}x{s[1]}", "total": p.total if p else None, "note": why}
                      for s, p, why in out["tried"]],
        }))
        return 0
    print(f"{args.model}, {args.mode}, batch {args.batch}, prompt {args.prompt} + {args.new} new "
          f"({plan.cache_len} cache slots), {args.dtype} weights")
    print(_line(plan))
    print(f"smallest mesh for {_gib(out['device_memory'])} devices (per device count, the split with the least parameters + cache):")
    for shape, p, why in out["tried"]:
        print(f"  {shape[0]}x{shape[1]}: " + (f"{_gib(p.total)} per device, {why}" if p else why))
    if best is None:
        print(f"  none up to {args.max_devices} devices")
    else:
        print(f"  -> {best.mesh[0]}x{best.mesh[1]} ({best.devices} device{'s' if best.devices > 1 else ''}), "
              f"{_gib(best.total)} per device")
    return 0


TABLE_DEVICES = 64


def readme_table() -> str:
    """Markdown: per-device memory on one device and the smallest mesh for 80/40/24 GB devices."""
    from ..decode.plan import GIB, parse_bytes, plan_memory, smallest_mesh
    from ..model.config import NLDConfig

    t = TABLE
    head = ["model", "weights", "batch", "params GiB", "KV cache GiB", "other temp GiB", "total on 1 device GiB"]
    head += [f"smallest mesh for {m} (GiB/device)" for m in t["memories"]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in t["models"]:
        cfg = NLDConfig.preset(name)
        for dtype in t["dtypes"]:
            for batch in t["batches"]:
                kw = dict(mode="ar", batch=batch, prompt=t["prompt"], new=t["new"], dtype=dtype)
                one = plan_memory(cfg, mesh=(1, 1), **kw)
                known = {(1, 1): one}
                cells = [name, dtype, str(batch), f"{one.params / GIB:.1f}", f"{one.kv_cache / GIB:.1f}",
                         f"{one.working / GIB:.1f}", f"{one.total / GIB:.1f}"]
                for mem in t["memories"]:
                    best, tried = smallest_mesh(cfg, device_memory=parse_bytes(mem), known=known, **kw)
                    known.update({s: p for s, p, _ in tried if p is not None})
                    cells.append(f"{best.mesh[0]}x{best.mesh[1]} ({best.total / GIB:.1f})" if best else "none <= 64")
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
