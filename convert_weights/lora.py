"""Writing the draft LoRA as a PEFT adapter directory; reading it lives in
:mod:`nemodiff_jax.io.adapter`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nemodiff_jax.io.adapter import PEFT_PREFIX
from nemodiff_jax.io.keymap import ParamSpec, hf_param_specs
from nemodiff_jax.model.config import NLDConfig

from .safetensors_stream import Entry, write_safetensors

def write_adapter(
    directory: Path, cfg: NLDConfig, get: Callable[[ParamSpec], np.ndarray], dtype: str, base_config: dict | None = None
) -> None:
    """A PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    directory.mkdir(parents=True, exist_ok=True)
    specs = [s for s in hf_param_specs(cfg, include_lora=True) if s.lora]
    by_name = {PEFT_PREFIX + s.hf_name: s for s in specs}
    entries = [Entry(PEFT_PREFIX + s.hf_name, s.hf_shape, dtype) for s in specs]
    write_safetensors(directory / "adapter_model.safetensors", entries, lambda e: get(by_name[e.name]))
    acfg = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "inference_mode": True,
        "bias": "none",
        "lora_dropout": 0.0,
        "fan_in_fan_out": False,
        "use_dora": False,
        "use_rslora": False,
        **(base_config or {}),
        "r": cfg.lora_rank,
        "lora_alpha": int(cfg.lora_alpha) if float(cfg.lora_alpha).is_integer() else cfg.lora_alpha,
        "target_modules": ["o_proj"],
    }
    (directory / "adapter_config.json").write_text(json.dumps(acfg, indent=2) + "\n")
