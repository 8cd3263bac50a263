"""The frozen, hashable model configuration, its presets, and the HF config.json reader.

A config is a static argument of every jitted function: it fixes shapes only. Anything a
user sweeps (thresholds, temperatures, lengths) is a traced value elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from pathlib import Path
from typing import Any

_MODEL_TYPES = ("nemotron_labs_diffusion", "ministral3")


@dataclasses.dataclass(frozen=True)
class NLDConfig:
    """Geometry, RoPE and special tokens of an NLD model (docs/ALGORITHMS.md, "Model" and "Checkpoints and special tokens")."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 262144
    # RoPE: YaRN (docs/ALGORITHMS.md, "Model"). rope_type "default" disables the YaRN ramp.
    rope_type: str = "yarn"
    rope_theta: float = 1.0e6
    rope_factor: float = 16.0
    original_max_position_embeddings: int = 16384
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 1.0
    rope_truncate: bool = True
    llama4_scaling_beta: float = 0.1
    # Special tokens and diffusion settings (docs/ALGORITHMS.md, "Checkpoints and special tokens").
    mask_token_id: int = 100
    bos_token_id: int = 1
    eos_token_id: int = 11
    pad_token_id: int = 11
    block_size: int = 32
    # Draft LoRA on o_proj (docs/ALGORITHMS.md, "Draft LoRA"); rank 0 means the model has none.
    lora_rank: int = 0
    lora_alpha: float = 0.0
    # Numerics and kernels.
    dtype: str = "bfloat16"
    attention_impl: str = "xla"

    def __post_init__(self):
        check_fields(self, "config")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "max_position_embeddings", "original_max_position_embeddings", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name} must be >= 1, got {getattr(self, name)}")
        for name in ("rms_norm_eps", "rope_theta"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"config field {name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("mask_token_id", "bos_token_id", "eos_token_id", "pad_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"config field {name} ({getattr(self, name)}) lies outside the vocabulary "
                                 f"[0, {self.vocab_size})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.attention_impl not in ("xla", "pallas"):
            raise ValueError(f"attention_impl must be 'xla' or 'pallas', got {self.attention_impl!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    def replace(self, **changes: Any) -> "NLDConfig":
        return dataclasses.replace(self, **changes)

    @staticmethod
    def preset(name: str) -> "NLDConfig":
        """One of ``tiny``, ``3b``, ``8b``, ``14b``."""
        try:
            return _PRESETS[name.lower()]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(_PRESETS)}") from None

    @staticmethod
    def from_hf(path: str | Path) -> "NLDConfig":
        """Read an HF ``config.json`` (a file or the directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ValueError(f"no config.json at {path}")
        try:
            d = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return config_from_hf_dict(d)

    def to_hf_dict(self) -> dict[str, Any]:
        """An HF ``config.json`` of model_type ``nemotron_labs_diffusion``."""
        return config_to_hf_dict(self)


_TYPE_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def _type_ok(value, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    return True


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def type_error(where: str, name: str, kind: str, value) -> ValueError:
    return ValueError(f"{where} field {name!r} must be {_TYPE_NAMES.get(kind, kind)}, got {_describe(value)}")


def check_fields(obj, where: str, values: dict | None = None) -> None:
    """Every int/float/str/bool field of a dataclass (or of ``values``, keyed by field name) holds
    that type (``X | None`` allows None), or one ValueError naming the field and the type."""
    for f in dataclasses.fields(obj):
        if values is not None and f.name not in values:
            continue
        kinds = [k.strip() for k in str(f.type).split("|")]
        value = getattr(obj, f.name) if values is None else values[f.name]
        if value is None and "None" in kinds:
            continue
        kind = kinds[0]
        if kind in _TYPE_NAMES and not _type_ok(value, kind):
            raise type_error(where, f.name, kind, value)
        if kind.startswith("tuple[str") and not (isinstance(value, tuple) and all(isinstance(v, str) for v in value)):
            raise type_error(where, f.name, "a list of strings", value)


# Raw config.json fields (HF names) and their JSON types; ``eos_token_id`` may also be a list.
_HF_TYPES = {
    "model_type": "str", "vocab_size": "int", "hidden_size": "int", "intermediate_size": "int",
    "num_hidden_layers": "int", "num_attention_heads": "int", "num_key_value_heads": "int", "head_dim": "int",
    "rms_norm_eps": "float", "max_position_embeddings": "int", "rope_theta": "float", "mask_token_id": "int",
    "bos_token_id": "int", "pad_token_id": "int", "block_size": "int", "lora_rank": "int", "lora_alpha": "float",
    "torch_dtype": "str", "dtype": "str",
}
_ROPE_TYPES = {
    "rope_type": "str", "type": "str", "rope_theta": "float", "factor": "float",
    "original_max_position_embeddings": "int", "beta_fast": "float", "beta_slow": "float", "mscale": "float",
    "mscale_all_dim": "float", "truncate": "bool", "llama_4_scaling_beta": "float",
}


def check_hf_dict(d) -> None:
    """config.json's structure and field types, named as in the file."""
    if not isinstance(d, dict):
        raise ValueError(f"config.json must hold a JSON object, got {type(d).__name__}")
    for key, kind in _HF_TYPES.items():
        if d.get(key) is not None and not _type_ok(d[key], kind):
            raise type_error("config.json", key, kind, d[key])
    eos = d.get("eos_token_id")
    if eos is not None and not (_type_ok(eos, "int") or (isinstance(eos, list) and eos and
                                                         all(_type_ok(e, "int") for e in eos))):
        raise type_error("config.json", "eos_token_id", "an integer or a list of integers", eos)
    for section in ("rope_parameters", "rope_scaling"):
        rope = d.get(section)
        if rope is None:
            continue
        if not isinstance(rope, dict):
            raise type_error("config.json", section, "an object", rope)
        for key, kind in _ROPE_TYPES.items():
            if rope.get(key) is not None and not _type_ok(rope[key], kind):
                raise type_error("config.json", f"{section}.{key}", kind, rope[key])


def _required(d: dict, key: str, where: str = "config.json"):
    if key not in d or d[key] is None:
        raise ValueError(f"{where} is missing the required field {key!r}")
    return d[key]


def config_from_hf_dict(d: Any, **overrides: Any) -> NLDConfig:
    check_hf_dict(d)
    model_type = d.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"unsupported model_type {model_type!r}; expected one of {_MODEL_TYPES}")
    # nemotron_labs_diffusion nests nothing; some exports wrap the encoder config.
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    hidden = _required(d, "hidden_size")
    heads = _required(d, "num_attention_heads")
    eos = d.get("eos_token_id", 11)
    if isinstance(eos, list):
        vocab = d.get("vocab_size")
        outside = [e for e in eos if not 0 <= e < vocab]
        if outside:
            raise ValueError(f"config field eos_token_id ({outside[0]}) lies outside the vocabulary [0, {vocab})")
        eos = eos[0]
    rope_type = rope.get("rope_type", rope.get("type", "default")) if rope else "default"
    theta = rope.get("rope_theta", d.get("rope_theta"))
    if theta is None:
        raise ValueError("config.json is missing the required field 'rope_theta' (rope_parameters.rope_theta)")
    kwargs = dict(
        vocab_size=_required(d, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=_required(d, "intermediate_size"),
        num_layers=_required(d, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or hidden // heads,
        rms_norm_eps=d.get("rms_norm_eps", 1e-5),
        max_position_embeddings=d.get("max_position_embeddings", 262144),
        rope_type="yarn" if rope_type == "yarn" else "default",
        rope_theta=float(theta),
        rope_factor=float(rope.get("factor") or 1.0),
        original_max_position_embeddings=int(
            rope.get("original_max_position_embeddings") or d.get("max_position_embeddings", 262144)
        ),
        beta_fast=float(rope.get("beta_fast") or 32.0),
        beta_slow=float(rope.get("beta_slow") or 1.0),
        mscale=float(rope.get("mscale") or 0.0),
        mscale_all_dim=float(rope.get("mscale_all_dim") or 0.0),
        rope_truncate=bool(rope.get("truncate", True)),
        llama4_scaling_beta=float(rope.get("llama_4_scaling_beta") or 0.0),
        mask_token_id=d.get("mask_token_id", 100),
        bos_token_id=d.get("bos_token_id", 1) if d.get("bos_token_id") is not None else 1,
        eos_token_id=eos if eos is not None else 11,
        pad_token_id=d.get("pad_token_id") if d.get("pad_token_id") is not None else (eos if eos is not None else 11),
        block_size=d.get("block_size", 32),
        lora_rank=int(d.get("lora_rank", 0) or 0),
        lora_alpha=float(d.get("lora_alpha", 0.0) or 0.0),
        dtype=_dtype_name(d.get("torch_dtype") or d.get("dtype") or "bfloat16"),
    )
    kwargs.update(overrides)
    return NLDConfig(**kwargs)


def _dtype_name(name: str) -> str:
    name = str(name).replace("torch.", "")
    return {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16", "half": "float16"}.get(name, name)


def config_to_hf_dict(c: NLDConfig) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_type": c.rope_type, "rope_theta": c.rope_theta}
    if c.rope_type == "yarn":
        rope.update(
            factor=c.rope_factor,
            original_max_position_embeddings=c.original_max_position_embeddings,
            beta_fast=c.beta_fast,
            beta_slow=c.beta_slow,
            mscale=c.mscale,
            mscale_all_dim=c.mscale_all_dim,
            llama_4_scaling_beta=c.llama4_scaling_beta,
        )
        if not c.rope_truncate:
            rope["truncate"] = False
    d = {
        "architectures": ["NemotronLabsDiffusionModel"],
        "model_type": "nemotron_labs_diffusion",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_position_embeddings,
        "rope_parameters": rope,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mask_token_id": c.mask_token_id,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "block_size": c.block_size,
        "dlm_paradigm": "bidirectional",
        "torch_dtype": c.dtype,
    }
    if c.lora_rank:
        d.update(lora_rank=c.lora_rank, lora_alpha=c.lora_alpha)
    return d


def _nld(layers: int, hidden: int, inter: int, theta: float) -> NLDConfig:
    return NLDConfig(
        vocab_size=131072,
        hidden_size=hidden,
        intermediate_size=inter,
        num_layers=layers,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        rope_theta=theta,
    )


_PRESETS: dict[str, NLDConfig] = {
    # A few million parameters; YaRN's original window is tiny so tests exercise the
    # ramp and the Llama-4 query scale with short sequences.
    "tiny": NLDConfig(
        vocab_size=4096,
        hidden_size=128,
        intermediate_size=512,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rope_factor=4.0,
        original_max_position_embeddings=32,
        mask_token_id=3,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        block_size=8,
        dtype="float32",
    ),
    # 3B: rope_theta is not published; 1e6 is the Ministral3 default. from_hf reads the real one.
    "3b": _nld(26, 3072, 9216, 1.0e6),
    "8b": _nld(34, 4096, 14336, 1.0e6),
    "14b": _nld(40, 5120, 16384, 1.0e9),
}
