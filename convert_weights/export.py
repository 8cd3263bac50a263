"""Back to HF: our converted directory (or an in-memory Model) -> an HF NLD checkpoint.

Writes ``model.safetensors`` (or shards above ``max_shard_size`` plus
``model.safetensors.index.json``), ``config.json`` and, when the model has the draft LoRA,
the PEFT adapter ``linear_spec_lora/``: the layout SGLang, vLLM and transformers load.
Tensors stream one at a time from the orbax checkpoint, so memory stays at one tensor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nemodiff_jax.model.config import NLDConfig

from .convert import MANIFEST, check_out, converted_config_dict, copy_side_files, staging, write_json
from nemodiff_jax.io.hf_read import read_config
from nemodiff_jax.io.jax_format import LORA_DIR, PARAMS_DIR, LeafReader, check_chunks, check_stored, stored_leaves
from nemodiff_jax.io.keymap import CheckpointError, ParamSpec, hf_param_specs, spec_array
from nemodiff_jax.io.adapter import ADAPTER_SUBDIR
from .lora import write_adapter
from nemodiff_jax.io.jax_format import np_dtype
from .progress import Progress
from .safetensors_stream import Entry, parse_size, write_sharded

DEFAULT_MAX_SHARD = "5GB"


def export_hf(
    src: str | Path,
    out: str | Path,
    *,
    max_shard_size: str | int = DEFAULT_MAX_SHARD,
    dtype: str | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> Path:
    """Export a converted directory ``src`` to the HF directory ``out``."""
    src, out = Path(src), Path(out)
    if not (src / PARAMS_DIR).is_dir():
        raise ValueError(f"{src} is not a converted checkpoint (no {PARAMS_DIR}/); --to-hf exports what the converter wrote")
    check_out(out, force, src)
    cfg, d = read_config(src)
    problems = check_stored(src / PARAMS_DIR, cfg, lora=False)
    if cfg.lora_rank:
        problems += check_stored(src / LORA_DIR, cfg, lora=True)
    problems += check_chunks(src, bool(cfg.lora_rank))
    if problems:
        raise CheckpointError(problems, str(src))
    lora_dtype = next(iter(stored_leaves(src / LORA_DIR).values()))[1] if cfg.lora_rank else None
    manifest = json.loads((src / MANIFEST).read_text()) if (src / MANIFEST).is_file() else {}
    adapter_config = ((manifest.get("lora") or {}).get("adapter_config")) or None
    reader = LeafReader(src)
    return _export(cfg, reader.read, out, d, parse_size(max_shard_size), dtype, force, progress, src, lora_dtype, adapter_config)


def export_model(
    model, out: str | Path, *, max_shard_size: str | int = DEFAULT_MAX_SHARD, dtype: str | None = None, force: bool = False
) -> Path:
    """Export an in-memory :class:`nemodiff_jax.Model` (e.g. after fine-tuning) to HF layout."""
    out = Path(out)
    check_out(out, force)
    cfg = model.config

    def get(spec: ParamSpec) -> np.ndarray:
        return spec.to_hf(np.asarray(spec_array(model.params, spec)))  # either layout

    src = Path(model.path) if model.path else None
    return _export(cfg, get, out, {}, parse_size(max_shard_size), dtype, force, False, src, cfg.dtype, None)


def _export(
    cfg: NLDConfig,
    get: Callable[[ParamSpec], np.ndarray],
    out: Path,
    config_dict: dict,
    max_bytes: int,
    dtype: str | None,
    force: bool,
    progress: bool | None,
    side_files: Path | None,
    lora_dtype: str | None,
    adapter_config: dict | None,
) -> Path:
    want = dtype or cfg.dtype
    base_cfg = cfg.replace(lora_rank=0, lora_alpha=0.0, dtype=want)
    specs = hf_param_specs(base_cfg, include_lora=False)
    by_name = {s.hf_name: s for s in specs}
    lora_specs = [s for s in hf_param_specs(cfg, include_lora=True) if s.lora] if cfg.lora_rank else []
    with staging(out, force) as tmp, Progress(len(specs) + len(lora_specs), "exporting", enabled=progress) as bar:
        g = bar.wrap(_checked(get))
        entries = [Entry(s.hf_name, s.hf_shape, want) for s in specs]
        write_sharded(tmp, entries, lambda e: g(by_name[e.name]).astype(np_dtype(want), copy=False), max_bytes)
        # config.json describes the base only: the adapter's rank lives in its own config.
        write_json(tmp / "config.json", converted_config_dict(base_cfg, config_dict))
        if side_files is not None and side_files.is_dir():
            copy_side_files(side_files, tmp)
        if cfg.lora_rank:
            want_lora = np_dtype(lora_dtype)
            write_adapter(tmp / ADAPTER_SUBDIR, cfg, lambda s: g(s).astype(want_lora, copy=False), lora_dtype, adapter_config)
    return out


def _checked(get):
    """``get`` that stops at an interrupt between tensors and refuses NaN/Inf weights."""
    from nemodiff_jax import guard

    def read(spec):
        guard.check()
        arr = get(spec)
        bad = guard.nonfinite_count(arr)
        if bad:
            raise CheckpointError([f"non-finite weights: {spec.hf_name} holds {bad} NaN/Inf value(s)"], "export")
        return arr

    return read
