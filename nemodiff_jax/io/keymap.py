"""The one explicit key map between HF NLD checkpoints and our parameter tree.

Shared by the port script and :func:`nemodiff_jax.load`. Each entry names the HF tensor,
where it lands in our tree (stacked on a leading layer axis for decoder layers), and the
layout change both ways (PyTorch ``[out, in]`` to Flax kernels, heads split for q/k/v/o).
Transforms are pure reshapes/transposes, so bf16 stays bit-exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from nemodiff_jax.model.config import NLDConfig

# Accepted prefixes: NLD checkpoints wrap a Ministral3Model as `encoder`; plain
# Ministral3ForCausalLM exports use `model` and `lm_head`.
ENCODER_PREFIXES = ("encoder.", "model.")
HEAD_NAMES = ("diffusion_head.weight", "lm_head.weight")


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    hf_name: str  # canonical name, with the `encoder.` prefix
    path: tuple[str, ...]  # location in params (without the top-level "params")
    layer: int | None  # index on the stacked layer axis, or None
    hf_shape: tuple[int, ...]
    to_jax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    lora: bool = False
    jax_shape: tuple[int, ...] = ()  # per-layer shape in our tree (without the layer axis)

    @property
    def leaf(self) -> str:
        """The orbax/tensorstore name of the leaf this tensor lands in (``layers.mlp.up_proj``)."""
        return ".".join(self.path)


def transpose(a: np.ndarray, tile: int = 256) -> np.ndarray:
    """A contiguous ``a.T`` for a 2-D array. numpy's strided copy of a transposed view misses
    the cache on large matrices; copying 256x256 tiles is about 4x faster, which is minutes
    over an 8B checkpoint where every linear weight is transposed."""
    if a.size < (1 << 20):
        return np.ascontiguousarray(a.T)
    rows, cols = a.shape
    out = np.empty((cols, rows), a.dtype)
    for i in range(0, rows, tile):
        for j in range(0, cols, tile):
            out[j : j + tile, i : i + tile] = a[i : i + tile, j : j + tile].T
    return out


def _linear(out_dim: int, in_dim: int, split: tuple[int, ...] | None = None, split_in: bool = False):
    """HF Linear weight [out, in] <-> Flax kernel [in, out] with an optional head split
    (of the output axis, or of the input axis with ``split_in``). Returns both transforms and
    the per-layer Flax shape."""
    if split and not split_in:
        shape = (in_dim, *split)
    elif split:
        shape = (*split, out_dim)
    else:
        shape = (in_dim, out_dim)

    def to_jax(w):
        return transpose(w).reshape(shape)

    def to_hf(k):
        return transpose(k.reshape(in_dim, out_dim))

    return to_jax, to_hf, shape


def _same(x):
    return np.ascontiguousarray(x)


def hf_param_specs(cfg: NLDConfig, include_lora: bool | None = None) -> list[ParamSpec]:
    """Every tensor of an NLD checkpoint, in file order."""
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    nq, nk, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    specs = [ParamSpec("encoder.embed_tokens.weight", ("embed_tokens",), None, (v, h), _same, _same, jax_shape=(v, h))]
    lin = {
        "self_attn.q_proj": ((nq * d, h), ("self_attn", "q_proj"), _linear(nq * d, h, (nq, d))),
        "self_attn.k_proj": ((nk * d, h), ("self_attn", "k_proj"), _linear(nk * d, h, (nk, d))),
        "self_attn.v_proj": ((nk * d, h), ("self_attn", "v_proj"), _linear(nk * d, h, (nk, d))),
        "self_attn.o_proj": ((h, nq * d), ("self_attn", "o_proj"), _linear(h, nq * d, (nq, d), split_in=True)),
        "mlp.gate_proj": ((i, h), ("mlp", "gate_proj"), _linear(i, h)),
        "mlp.up_proj": ((i, h), ("mlp", "up_proj"), _linear(i, h)),
        "mlp.down_proj": ((h, i), ("mlp", "down_proj"), _linear(h, i)),
    }
    with_lora = cfg.lora_rank > 0 if include_lora is None else include_lora
    for layer in range(cfg.num_layers):
        pre = f"encoder.layers.{layer}."
        norm = ("layers", "input_layernorm", "scale")
        specs.append(ParamSpec(pre + "input_layernorm.weight", norm, layer, (h,), _same, _same, jax_shape=(h,)))
        for name, (shape, path, (tj, th, js)) in lin.items():
            specs.append(ParamSpec(pre + name + ".weight", ("layers", *path), layer, shape, tj, th, jax_shape=js))
        norm = ("layers", "post_attention_layernorm", "scale")
        specs.append(ParamSpec(pre + "post_attention_layernorm.weight", norm, layer, (h,), _same, _same, jax_shape=(h,)))
        if with_lora:
            r = cfg.lora_rank
            a_tj, a_th, a_js = _linear(r, nq * d)
            b_tj, b_th, b_js = _linear(h, r)
            pa, pb = ("layers", "self_attn", "lora_a"), ("layers", "self_attn", "lora_b")
            specs.append(ParamSpec(pre + "self_attn.o_proj.lora_A.weight", pa, layer, (r, nq * d), a_tj, a_th, True, a_js))
            specs.append(ParamSpec(pre + "self_attn.o_proj.lora_B.weight", pb, layer, (h, r), b_tj, b_th, True, b_js))
    specs.append(ParamSpec("encoder.norm.weight", ("norm", "scale"), None, (h,), _same, _same, jax_shape=(h,)))
    h_tj, h_th, h_js = _linear(v, h)
    specs.append(ParamSpec("diffusion_head.weight", ("diffusion_head",), None, (v, h), h_tj, h_th, jax_shape=h_js))
    return specs


def canonical_name(name: str) -> str:
    """Map a Ministral3 (`model.`/`lm_head`) or PEFT name to the canonical NLD name."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    # PEFT state dicts taken from a live model carry the adapter name; saved adapters do not.
    name = name.replace(".lora_A.default.weight", ".lora_A.weight").replace(".lora_B.default.weight", ".lora_B.weight")
    if name == "lm_head.weight":
        return "diffusion_head.weight"
    if name.startswith("model."):
        return "encoder." + name[len("model."):]
    return name


# Floating dtypes a checkpoint tensor may hold; anything else (int8, fp8, fp64) is refused
# rather than silently cast. Keys are the names sources.py reports.
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")


class CheckpointError(ValueError):
    """Every problem found in a checkpoint, listed in one message (and in ``problems``)."""

    def __init__(self, problems: list[str], where: str = "checkpoint"):
        self.problems = list(problems)
        self.where = where
        super().__init__(f"{where}: {len(problems)} problem(s):\n  - " + "\n  - ".join(self.problems))

    def one_line(self, limit: int = 20) -> str:
        """The message on one line (for a CLI), the first ``limit`` problems spelled out."""
        shown = "; ".join(self.problems[:limit])
        more = f"; ... and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        return f"{self.where}: {len(self.problems)} problem(s): {shown}{more}"


def check_names_and_shapes(
    cfg: NLDConfig,
    available: dict[str, tuple[int, ...]],
    *,
    include_lora: bool | None = None,
    lora_only: bool = False,
    dtypes: dict[str, str] | None = None,
    unreadable: frozenset[str] = frozenset(),
) -> list[str]:
    """Problems (missing, unexpected, wrong shape, unsupported dtype) against the config.

    ``unreadable`` names tensors that live in a file that could not be read: they are
    reported with the file, not again as missing keys.
    """
    specs = [s for s in hf_param_specs(cfg, include_lora) if (s.lora or not lora_only)]
    expected = {s.hf_name: s for s in specs}
    problems = []
    for name in sorted(set(expected) - set(available) - unreadable):
        problems.append(f"missing key {name}")
    for name in sorted(set(available) - set(expected)):
        problems.append(f"unexpected key {name} {tuple(available[name])}")
    for name in sorted(set(expected) & set(available)):
        if tuple(available[name]) != tuple(expected[name].hf_shape):
            problems.append(f"shape mismatch for {name}: checkpoint {tuple(available[name])}, config expects {expected[name].hf_shape}")
    for name in sorted(set(expected) & set(dtypes or {})):
        if dtypes[name] not in SUPPORTED_DTYPES:
            problems.append(f"unsupported dtype {dtypes[name]} for {name} (expected one of {', '.join(SUPPORTED_DTYPES)})")
    return problems


def leaves(specs: list[ParamSpec], num_layers: int) -> dict[str, list[ParamSpec]]:
    """Group specs by the leaf they fill: ``{leaf name: [spec per layer]}`` (one spec if unstacked)."""
    out: dict[str, list[ParamSpec]] = {}
    for spec in specs:
        out.setdefault(spec.leaf, []).append(spec)
    for name, group in out.items():
        stacked = group[0].layer is not None
        if stacked and [s.layer for s in group] != list(range(num_layers)):
            raise AssertionError(f"keymap bug: {name} does not cover layers 0..{num_layers - 1}")
    return out


def leaf_shape(group: list[ParamSpec]) -> tuple[int, ...]:
    """Shape of a leaf in our tree: the per-layer shape with the layer axis in front when stacked."""
    first = group[0]
    return first.jax_shape if first.layer is None else (len(group), *first.jax_shape)


def assemble_params(
    cfg: NLDConfig,
    get_tensor: Callable[[str], np.ndarray],
    names: Iterable[str] = (),
    *,
    dtype=None,
    include_lora: bool | None = None,
    lora_only: bool = False,
) -> dict:
    """Build the parameter tree from canonical-named tensors, one tensor at a time.

    ``get_tensor(name)`` returns a numpy array (possibly ml_dtypes bfloat16). Stacked
    layer parameters are preallocated once and filled in place, so the peak is the tree
    plus one source tensor. ``names`` is unused (kept for callers that pass it).
    """
    specs = [s for s in hf_param_specs(cfg, include_lora) if (s.lora or not lora_only)]
    tree: dict = {}
    for spec in specs:
        w = get_tensor(spec.hf_name)
        if dtype is not None and w.dtype != dtype:
            w = w.astype(dtype)
        arr = spec.to_jax(w)
        node = tree
        for key in spec.path[:-1]:
            node = node.setdefault(key, {})
        leaf = spec.path[-1]
        if spec.layer is None:
            node[leaf] = arr
        else:
            if leaf not in node:
                node[leaf] = np.empty((cfg.num_layers, *arr.shape), arr.dtype)
            node[leaf][spec.layer] = arr
    return tree


def get_path(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def spec_array(params: dict, spec: ParamSpec):
    """The array ``spec`` names in ``params`` (its layer's slice), stacked or per-layer layout
    (:mod:`nemodiff_jax.model.layout`)."""
    if spec.layer is not None and spec.path[0] == "layers" and "layers" not in params:
        return get_path(params[f"layers_{spec.layer}"], spec.path[1:])
    node = get_path(params, spec.path)
    return node if spec.layer is None else node[spec.layer]


def iter_hf_tensors(cfg: NLDConfig, params: dict, include_lora: bool | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(canonical HF name, [out, in] array)`` for every tensor of ``params`` (either layout)."""
    for spec in hf_param_specs(cfg, include_lora):
        yield spec.hf_name, spec.to_hf(np.asarray(spec_array(params, spec)))
