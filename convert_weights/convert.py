"""HF NLD checkpoint -> our converted layout, and a LoRA into an existing converted directory.

Every check runs before the first weight is read; everything is written into a temporary
directory beside OUT and renamed into place at the end, so a failure leaves OUT as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from nemodiff_jax import guard
from nemodiff_jax.model.config import NLDConfig

from nemodiff_jax.io.hf_read import HFCheckpoint, open_hf, read_config
from nemodiff_jax.io.jax_format import LORA_DIR, PARAMS_DIR
from nemodiff_jax.io.keymap import CheckpointError, ParamSpec
from nemodiff_jax.io.adapter import Adapter, open_adapter
from .orbax_stream import streamed_leaves, write_tree
from .progress import Progress

CONVERTER_VERSION = "1.0"
# Copied verbatim when present: tokenizer, chat template, generation defaults and the
# remote-code modules, so the directory can go back to transformers/SGLang/vLLM unchanged.
COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "tekken.json",
)
MANIFEST = "manifest.json"


def check_out(out: Path, force: bool, src: Path | None = None) -> None:
    """Refuse a non-empty OUT without ``force``, and an OUT that is (or contains) the source."""
    out = out.absolute()
    if src is not None:
        s = src.absolute().resolve()
        if out.resolve() == s or out.resolve() in s.parents:
            raise ValueError(f"output {out} would overwrite the source {src}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"output {out} is not empty; pass --force to replace it")


@contextlib.contextmanager
def staging(out: Path, force: bool) -> Iterator[Path]:
    """A temporary directory beside ``out`` that replaces it on success and vanishes on failure."""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    guard.clean_stale(out.parent, out.name)  # what a killed conversion into OUT left behind
    tmp = guard.partial_name(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with guard.deferred():
            yield tmp
        check_out(out, force)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is moved aside first and removed after."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def file_records(paths: list[Path], root: Path) -> list[dict]:
    return [
        {"path": os.path.relpath(p.absolute(), root.absolute()), "bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in paths
    ]


def chunk_records(directory: Path, name: str) -> list[dict]:
    """sha256 and size of every file of a written orbax checkpoint, as ``NAME/...`` (its place in
    OUT once renamed): :func:`jax_format.read_converted` checks them before restoring."""
    directory = Path(directory)
    records = file_records(sorted(p for p in directory.rglob("*") if p.is_file()), directory)
    return [{**r, "path": f"{name}/{r['path']}"} for r in records]


def converted_config_dict(cfg: NLDConfig, source: dict) -> dict:
    """The source config.json with our fields laid over it (keeps auto_map, dlm_* and the rest)."""
    d = {k: v for k, v in source.items() if k not in ("lora_rank", "lora_alpha")}
    d.update(cfg.to_hf_dict())
    if "dtype" in d:  # transformers 5 writes `dtype`; keep it in step with torch_dtype
        d["dtype"] = cfg.dtype
    return d


def write_json(path: Path, obj) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a JSON file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def copy_side_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in COPIED_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    for p in sorted(src.glob("*.py")):  # remote code (configuration_*.py, modeling_*.py)
        shutil.copy2(p, dst / p.name)
        copied.append(p.name)
    return copied


def _write_lora(path: Path, cfg: NLDConfig, adapter: Adapter, progress: Progress) -> dict:
    lcfg = adapter.with_config(cfg)
    get = progress.wrap(lambda s: adapter.source.get(s.hf_name))
    write_tree(path, streamed_leaves(lcfg, adapter.specs(cfg), get, adapter.dtype))
    return {
        "chunks": chunk_records(path, LORA_DIR),
        "source": str(adapter.directory.absolute()),
        "files": file_records([*adapter.source.files, adapter.directory / "adapter_config.json"], adapter.directory),
        "rank": adapter.rank,
        "alpha": adapter.alpha,
        "dtype": adapter.dtype,
        "param_count": int(sum(np.prod(s.hf_shape) for s in adapter.specs(cfg))),
        "adapter_config": adapter.config,
    }


def convert_hf(
    src: str | Path,
    out: str | Path,
    *,
    dtype: str | None = None,
    lora: str | Path | bool | None = None,
    force: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Path:
    """Convert an HF NLD checkpoint directory into ``out`` (see the module docstring)."""
    src, out = Path(src), Path(out)
    if (src / PARAMS_DIR).is_dir():
        raise ValueError(f"{src} is already a converted checkpoint (it has {PARAMS_DIR}/); use --to-hf to export it")
    check_out(out, force, src)
    ckpt = open_hf(src, dtype=dtype, lora=lora)
    cfg = ckpt.config
    base = ckpt.base_specs()
    total = len(base) + (len(ckpt.adapter.specs(cfg)) if ckpt.adapter else 0)
    log(f"converting {src} ({len(base)} tensors, {cfg.num_layers} layers) to {out} as {cfg.dtype}")
    with staging(out, force) as tmp, Progress(total, "converting", enabled=progress) as bar:
        get = bar.wrap(lambda s: ckpt.source.get(s.hf_name))
        write_tree(tmp / PARAMS_DIR, streamed_leaves(cfg, base, get, cfg.dtype))
        lora_record = _write_lora(tmp / LORA_DIR, cfg, ckpt.adapter, bar) if ckpt.adapter else None
        write_json(tmp / "config.json", converted_config_dict(cfg, ckpt.config_dict))
        copied = copy_side_files(src, tmp)
        manifest = _manifest(ckpt, base, lora_record, copied)
        manifest["chunks"] = chunk_records(tmp / PARAMS_DIR, PARAMS_DIR)
        write_json(tmp / MANIFEST, manifest)
    return out


def _manifest(ckpt: HFCheckpoint, base: list[ParamSpec], lora_record: dict | None, copied: list[str]) -> dict:
    return {
        "format": "nemodiff-jax converted checkpoint",
        "converter_version": CONVERTER_VERSION,
        "source": str(ckpt.directory.absolute()),
        "source_files": file_records([*ckpt.source.files, ckpt.directory / "config.json"], ckpt.directory),
        "dtype": ckpt.config.dtype,
        "param_count": int(sum(np.prod(s.hf_shape) for s in base)),
        "lora": lora_record,
        "copied_files": copied,
    }


def add_lora(
    out: str | Path, adapter_dir: str | Path, *, force: bool = False, progress: bool | None = None
) -> Path:
    """Convert a PEFT adapter into an already converted directory (``out/lora/``)."""
    out = Path(out)
    if not (out / PARAMS_DIR).is_dir():
        raise ValueError(f"{out} is not a converted checkpoint (no {PARAMS_DIR}/); convert the base model first")
    cfg, d = read_config(out)
    if (cfg.lora_rank or (out / LORA_DIR).exists()) and not force:
        raise ValueError(f"{out} already has a LoRA; pass --force to replace it")
    base_cfg = cfg.replace(lora_rank=0, lora_alpha=0.0)
    try:
        adapter = open_adapter(adapter_dir, base_cfg)
    except CheckpointError as e:
        raise CheckpointError([f"LoRA {adapter_dir}: {p}" for p in e.problems], str(out)) from None
    guard.clean_stale(out, LORA_DIR)
    tmp = guard.partial_name(out / LORA_DIR)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with guard.deferred(), Progress(len(adapter.specs(base_cfg)), "converting LoRA", enabled=progress) as bar:
            record = _write_lora(tmp, base_cfg, adapter, bar)
        replace_dir(tmp, out / LORA_DIR)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json(out / "config.json", converted_config_dict(adapter.with_config(base_cfg), d))
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    write_json(manifest_path, {**manifest, "lora": record})
    return out
