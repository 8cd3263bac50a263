"""The memory planner: what one device holds for a decode, before any weight is loaded.

:func:`plan_memory` lowers and compiles the engine's jitted decode (the prefill, the rounds and
the harvest: the program ``generate`` runs, as :mod:`.memory` lowers it) on *abstract* weights
(``jax.ShapeDtypeStruct`` leaves, placed over a ``("data", "model")`` mesh by the sharding rules of
:mod:`nemodiff_jax.model.sharding` when the mesh has more than one device) and reads XLA's
``compiled.memory_analysis()``, which for a sharded program is per device. It reports per device:

* ``params``: the weights in the target dtype (bf16, or int8 kernels plus their float32 scales),
  the bytes of each leaf's shard (exact; the compiled argument size in float32);
* ``kv_cache``: the KV cache in the target dtype (exact, from its shape and sharding);
* ``working``: every other temporary of the compiled program (scores, logits, the prefill's
  chunk, the rounds' state), measured on a **float32** compile; see below.

Why the compile is float32: XLA on CPU upcasts bf16 matmuls to float32 and hoists the converted
weights out of the decode loop, so a bf16 compile here reports a float32 copy of every weight as a
temporary (8B, batch 16, 4k prompts: 57 GiB of temporaries against 20 GiB in float32), which no
accelerator allocates. The planner therefore compiles with float32 compute (int8 kernels stay
int8, as they are held), takes ``working = temporaries - the float32 KV cache`` and adds the
parameter and cache bytes of the target dtype. ``working`` is then an upper bound for bf16 (its
activations would be half as wide; softmax and logits stay float32 either way).

:func:`smallest_mesh` tries 1, 2, 4, 8, ... devices; for each count it takes the ``data x model``
split with the least exact parameters + cache per device, the largest ``"model"`` axis on a tie
(``"model"`` splits the weights, the cache's KV heads and the scores; ``"data"`` only the batch, so
it wins once the KV heads stop dividing or the cache dominates). A count whose best split already
passes the budget on parameters + cache alone is skipped without a compile.
Compiling on a mesh of N devices needs N devices: on CPU, host devices from
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set before JAX is imported
(``nemodiff plan`` does it, see :mod:`nemodiff_jax.cli.plan`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..model import quantize, sharding
from ..model.config import NLDConfig
from ..model.layout import stacked_name
from ..model.forward import abstract_params
from .memory import MODES, lower_decode_on

GIB = 2**30
DTYPES = ("float32", "bfloat16", "int8")


def parse_bytes(text: str | int | float) -> int:
    """``"80GB"``, ``"80GiB"``, ``"24g"``, ``"512MiB"`` or a plain number of bytes.

    Sizes are binary (GB = GiB = 2**30), as device makers count device memory (an "80 GB"
    device has 80 GiB)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
        if not m:
            raise ValueError(f"device memory must look like 80GB, 24GiB or 512MiB, got {text!r}")
        value, unit = float(m.group(1)), m.group(2)
    out = int(value * 1024 ** " kmgt".index(unit or " "))
    if out <= 0:
        raise ValueError(f"device memory must be positive, got {text!r}")
    return out


def parse_mesh(text: str | tuple[int, int]) -> tuple[int, int]:
    """``"2x4"`` -> ``(2, 4)`` (data x model)."""
    if isinstance(text, tuple):
        shape = text
    else:
        try:
            shape = tuple(int(s) for s in str(text).lower().split("x"))
        except ValueError:
            raise ValueError(f"mesh must look like DATAxMODEL (e.g. 2x4), got {text!r}") from None
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"mesh must look like DATAxMODEL with positive sizes (e.g. 2x4), got {text!r}")
    return shape


def abstract_weights(cfg: NLDConfig, dtype: str) -> dict:
    """The parameter tree as ``ShapeDtypeStruct`` leaves: ``cfg`` in ``dtype`` (``"int8"``: bf16
    with the linear kernels as int8 values and float32 per-channel scales, as ``load(quantize=)``)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    base = abstract_params(cfg.replace(dtype="bfloat16" if dtype == "int8" else dtype))
    return _quantized(base) if dtype == "int8" else base


def _quantized(tree, prefix: str = ""):
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        rule, _ = stacked_name(name)  # per-layer leaves (model/layout.py)
        if rule in quantize.CONTRACTING:
            out[key] = jax.eval_shape(
                lambda w, n=name, r=rule: quantize.quantize_leaf(w, quantize.CONTRACTING[r], n.startswith("layers.")),
                value)
        elif isinstance(value, dict):
            out[key] = _quantized(value, name + ".")
        else:
            out[key] = value
    return out


def _compile_weights(cfg: NLDConfig, dtype: str) -> dict:
    """What the float32 compile takes: float32 weights, or int8 kernels with float32 neighbours."""
    f32 = abstract_params(cfg.replace(dtype="float32"))
    return _quantized(f32) if dtype == "int8" else f32


def _local(shape, spec, sizes: dict) -> list[int]:
    """The shard shape of ``shape`` under ``spec`` (the rules only use axes that divide)."""
    axes = tuple(spec) + (None,) * (len(shape) - len(spec))
    return [d // sizes[a] if a else d for d, a in zip(shape, axes)]


def _sizes(mesh_shape) -> dict[str, int]:
    return dict(zip((sharding.DATA, sharding.MODEL), parse_mesh(tuple(mesh_shape))))


def param_bytes_per_device(weights, mesh_shape=(1, 1)) -> int:
    """Bytes of one device's share of ``weights`` (abstract or real leaves) placed by the rules of
    :mod:`nemodiff_jax.model.sharding` on a ``mesh_shape`` (data x model) mesh. No devices needed."""
    sizes, total = _sizes(mesh_shape), 0
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(weights)[0]:
        spec = sharding.spec_for(leaf.shape, sharding.leaf_axes(sharding._name(keypath), leaf.ndim), sizes)
        total += int(math.prod(_local(leaf.shape, spec, sizes))) * jnp.dtype(leaf.dtype).itemsize
    return total


def kv_bytes_per_device(cfg: NLDConfig, batch: int, cache_len: int, dtype, mesh_shape=(1, 1)) -> int:
    """One device's share of the K and V caches ``[layers, B, kv_heads, T, D]`` under the rules."""
    shape, sizes = (cfg.num_layers, batch, cfg.num_kv_heads, cache_len, cfg.head_dim), _sizes(mesh_shape)
    spec = sharding.spec_for(shape, sharding.CACHE_AXES, sizes)
    return 2 * int(math.prod(_local(shape, spec, sizes))) * jnp.dtype(dtype).itemsize


def _cache_dtype(dtype: str) -> str:
    return "bfloat16" if dtype == "int8" else dtype


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Per-device bytes of one decode on one mesh (``total = params + kv_cache + working``)."""

    mesh: tuple[int, int]
    mode: str
    batch: int
    prompt: int
    new: int
    dtype: str
    cache_len: int
    params: int
    kv_cache: int
    working: int
    compile_s: float
    compiled: dict  # the float32 compile's raw memory_analysis (bytes per device)

    @property
    def total(self) -> int:
        return self.params + self.kv_cache + self.working

    @property
    def devices(self) -> int:
        return self.mesh[0] * self.mesh[1]

    def fits(self, device_memory: int) -> bool:
        return self.total <= device_memory

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "total": self.total, "mesh": f"{self.mesh[0]}x{self.mesh[1]}"}


def host_device_count() -> int:
    return len(jax.devices("cpu"))


def _mesh(shape: tuple[int, int]):
    """The mesh on CPU host devices: the plan is compiled for the host whatever the default backend."""
    n, have = shape[0] * shape[1], host_device_count()
    if n > have:
        raise ValueError(
            f"mesh {shape[0]}x{shape[1]} needs {n} devices but JAX sees {have} CPU devices: set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX is imported (nemodiff plan does)")
    return sharding.make_mesh(shape, jax.devices("cpu")[:n])


def plan_memory(cfg: NLDConfig, *, mode: str = "ar", batch: int = 1, prompt: int = 1024, new: int = 128,
                dtype: str = "bfloat16", mesh: str | tuple[int, int] = (1, 1),
                block_length: int | None = None) -> MemoryPlan:
    """Compile ``mode``'s decode for ``batch`` prompts of ``prompt`` tokens and ``new`` new tokens on
    ``mesh`` (data x model) with abstract weights, and return one device's memory (bytes)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    for name, v in (("batch", batch), ("prompt", prompt), ("new", new)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    shape = parse_mesh(mesh)
    if prompt + new > cfg.max_position_embeddings:
        raise ValueError(f"prompt ({prompt}) + new ({new}) exceeds max_position_embeddings "
                         f"({cfg.max_position_embeddings})")
    m = _mesh(shape)  # 1x1 too: the compile is for the host's CPU, not a GPU the process may see
    f32 = cfg.replace(dtype="float32")
    weights = _compile_weights(cfg, dtype)
    shards = sharding.param_shardings(weights, m)
    weights = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), weights, shards)
    t0 = time.perf_counter()
    lowered, sh = lower_decode_on(f32, weights, mode=mode, batch=batch, prompt=prompt, new=new,
                                  block_length=block_length, mesh=m)
    ma = lowered.compile().memory_analysis()
    compile_s = time.perf_counter() - t0
    compiled = {k: int(getattr(ma, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
    kv32 = kv_bytes_per_device(f32, batch, sh["cache_len"], "float32", shape)
    kv = kv_bytes_per_device(cfg, batch, sh["cache_len"], _cache_dtype(dtype), shape)
    params = param_bytes_per_device(abstract_weights(cfg, dtype), shape)
    working = max(compiled["temp"] - kv32, 0) + compiled["output"]
    return MemoryPlan(mesh=shape, mode=mode, batch=batch, prompt=prompt, new=new, dtype=dtype,
                      cache_len=sh["cache_len"], params=params, kv_cache=kv, working=working,
                      compile_s=compile_s, compiled=compiled)


def candidate_meshes(max_devices: int) -> list[list[tuple[int, int]]]:
    """Meshes by device count 1, 2, 4, ... ``max_devices``; within a count, every power-of-two
    ``data x model`` split, the largest ``"model"`` axis first."""
    groups, n = [], 1
    while n <= max_devices:
        groups.append([(n // m, m) for m in reversed([2**i for i in range(n.bit_length()) if 2**i <= n])])
        n *= 2
    return groups


def lower_bound(cfg: NLDConfig, *, batch: int, cache_len: int, dtype: str, mesh_shape) -> int:
    """Exact per-device parameters + KV cache (no compile): a mesh above the budget here is skipped."""
    return (param_bytes_per_device(abstract_weights(cfg, dtype), mesh_shape)
            + kv_bytes_per_device(cfg, batch, cache_len, _cache_dtype(dtype), mesh_shape))


def smallest_mesh(cfg: NLDConfig, *, device_memory: int, mode: str = "ar", batch: int = 1, prompt: int = 1024,
                  new: int = 128, dtype: str = "bfloat16", max_devices: int = 64,
                  block_length: int | None = None, max_compiles: int = 4,
                  known: dict | None = None) -> tuple[MemoryPlan | None, list]:
    """The first mesh of :func:`candidate_meshes` whose planned total fits ``device_memory``.

    Returns ``(plan or None, tried)``, ``tried`` listing ``(mesh, plan or None, why)`` for every mesh
    looked at (``plan`` None: skipped because its parameters + cache alone pass the budget).
    ``known``: plans already compiled, by mesh, reused instead of compiling again."""
    from .memory import decode_shapes

    known = dict(known or {})
    cache_len = decode_shapes(mode, prompt, new, cfg.block_size if block_length is None else block_length)["cache_len"]
    tried, compiles = [], 0
    for group in candidate_meshes(max_devices):
        # per device count, the split with the least exact parameters + cache (ties: more "model")
        bounds = [lower_bound(cfg, batch=batch, cache_len=cache_len, dtype=dtype, mesh_shape=m) for m in group]
        shape, bound = min(zip(group, bounds), key=lambda t: t[1])
        if bound > device_memory:
            tried.append((shape, None, f"parameters + cache alone are {bound / GIB:.1f} GiB"))
            continue
        if shape in known:
            plan = known[shape]
        else:
            if compiles >= max_compiles:
                tried.append((shape, None, f"not compiled: {max_compiles} compiles done"))
                break
            plan = plan_memory(cfg, mode=mode, batch=batch, prompt=prompt, new=new, dtype=dtype, mesh=shape,
                               block_length=block_length)
            compiles += 1
        fits = plan.fits(device_memory)
        tried.append((shape, plan, "fits" if fits else "too big"))
        if fits:
            return plan, tried
    return None, tried
