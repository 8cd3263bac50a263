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

from nemodiff_jax.config import NLDConfig

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


def _linear(out_dim: int, in_dim: int, split: tuple[int, ...] | None = None, split_in: bool = False):
    """HF Linear weight [out, in] <-> Flax kernel [in, out] with an optional head split."""

    def to_jax(w):
        k = w.T  # [in, out]
        if split and not split_in:
            k = k.reshape(in_dim, *split)
        elif split and split_in:
            k = k.reshape(*split, out_dim)
        return np.ascontiguousarray(k)

    def to_hf(k):
        return np.ascontiguousarray(k.reshape(in_dim, out_dim).T)

    return to_jax, to_hf


def _same(x):
    return np.ascontiguousarray(x)


def hf_param_specs(cfg: NLDConfig, include_lora: bool | None = None) -> list[ParamSpec]:
    """Every tensor of an NLD checkpoint, in file order."""
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    nq, nk, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    specs = [ParamSpec("encoder.embed_tokens.weight", ("embed_tokens",), None, (v, h), _same, _same)]
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
        specs.append(ParamSpec(pre + "input_layernorm.weight", ("layers", "input_layernorm", "scale"), layer, (h,), _same, _same))
        for name, (shape, path, (tj, th)) in lin.items():
            specs.append(ParamSpec(pre + name + ".weight", ("layers", *path), layer, shape, tj, th))
        specs.append(
            ParamSpec(pre + "post_attention_layernorm.weight", ("layers", "post_attention_layernorm", "scale"), layer, (h,), _same, _same)
        )
        if with_lora:
            r = cfg.lora_rank
            a_tj, a_th = _linear(r, nq * d)
            b_tj, b_th = _linear(h, r)
            specs.append(ParamSpec(pre + "self_attn.o_proj.lora_A.weight", ("layers", "self_attn", "lora_a"), layer, (r, nq * d), a_tj, a_th, True))
            specs.append(ParamSpec(pre + "self_attn.o_proj.lora_B.weight", ("layers", "self_attn", "lora_b"), layer, (h, r), b_tj, b_th, True))
    specs.append(ParamSpec("encoder.norm.weight", ("norm", "scale"), None, (h,), _same, _same))
    h_tj, h_th = _linear(v, h)
    specs.append(ParamSpec("diffusion_head.weight", ("diffusion_head",), None, (v, h), h_tj, h_th))
    return specs


def canonical_name(name: str) -> str:
    """Map a Ministral3 (`model.`/`lm_head`) or PEFT name to the canonical NLD name."""
    for prefix in ("base_model.model.",):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name == "lm_head.weight":
        return "diffusion_head.weight"
    if name.startswith("model."):
        return "encoder." + name[len("model."):]
    return name


class CheckpointError(ValueError):
    """Every problem found in a checkpoint, listed in one message."""

    def __init__(self, problems: list[str], where: str = "checkpoint"):
        self.problems = list(problems)
        super().__init__(f"{where} does not match the config ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems))


def check_names_and_shapes(
    cfg: NLDConfig, available: dict[str, tuple[int, ...]], *, include_lora: bool | None = None, lora_only: bool = False
) -> list[str]:
    """Problems (missing, unexpected, wrong shape) between canonical names/shapes and the config."""
    specs = [s for s in hf_param_specs(cfg, include_lora) if (s.lora or not lora_only)]
    expected = {s.hf_name: s for s in specs}
    problems = []
    for name in sorted(set(expected) - set(available)):
        problems.append(f"missing key {name}")
    for name in sorted(set(available) - set(expected)):
        problems.append(f"unexpected key {name}")
    for name in sorted(set(expected) & set(available)):
        if tuple(available[name]) != tuple(expected[name].hf_shape):
            problems.append(f"shape mismatch for {name}: checkpoint {tuple(available[name])}, config expects {expected[name].hf_shape}")
    return problems


def assemble_params(
    cfg: NLDConfig,
    get_tensor: Callable[[str], np.ndarray],
    names: Iterable[str],
    *,
    dtype=None,
    include_lora: bool | None = None,
    lora_only: bool = False,
) -> dict:
    """Build the parameter tree from canonical-named tensors, one tensor at a time.

    ``get_tensor(name)`` returns a numpy array (possibly ml_dtypes bfloat16). Stacked
    layer parameters are preallocated once and filled in place.
    """
    specs = [s for s in hf_param_specs(cfg, include_lora) if (s.lora or not lora_only)]
    tree: dict = {}
    for spec in specs:
        w = get_tensor(spec.hf_name)
        if dtype is not None and (spec.lora or dtype != w.dtype):
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


def iter_hf_tensors(cfg: NLDConfig, params: dict, include_lora: bool | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(canonical HF name, [out, in] array)`` for every tensor of ``params``."""
    for spec in hf_param_specs(cfg, include_lora):
        node = params
        for key in spec.path:
            node = node[key]
        arr = np.asarray(node if spec.layer is None else node[spec.layer])
        yield spec.hf_name, spec.to_hf(arr)
