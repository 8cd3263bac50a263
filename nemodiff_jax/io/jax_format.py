"""Our converted layout on disk: ``config.json``, ``manifest.json`` and the orbax checkpoints
``params/`` (and ``lora/`` for the draft LoRA, kept in its own dtype).

:func:`read_converted` checks the stored shapes against config.json, then restores with
orbax leaf by leaf into the wanted dtype; :class:`LeafReader` reads single layer slices for
the streaming export. Writing is :mod:`orbax_stream`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nemodiff_jax.model.config import NLDConfig

from .keymap import CheckpointError, ParamSpec, hf_param_specs, leaf_shape, leaves

def np_dtype(name: str) -> np.dtype:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


PARAMS_DIR = "params"
LORA_DIR = "lora"


def _expected(cfg: NLDConfig, lora: bool) -> dict[str, tuple[int, ...]]:
    specs = [s for s in hf_param_specs(cfg, include_lora=lora) if s.lora == lora]
    return {name: leaf_shape(group) for name, group in leaves(specs, cfg.num_layers).items()}


def stored_leaves(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"a.b": (shape, dtype name)}`` from an orbax checkpoint's metadata (no array is read)."""
    import jax
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as ckpt:
        meta = ckpt.metadata(Path(path).absolute())
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    out = {}
    for keypath, m in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = ".".join(str(getattr(k, "key", k)) for k in keypath)
        out[name] = (tuple(m.shape), np.dtype(m.dtype).name)
    return out


def check_stored(path: Path, cfg: NLDConfig, lora: bool) -> list[str]:
    """Missing/unexpected leaves and shapes that disagree with the config."""
    if not path.is_dir():
        return [f"missing {path.name}/ (the orbax checkpoint)"]
    try:
        have = stored_leaves(path)
    except Exception as e:  # orbax raises many types for a damaged checkpoint
        return [f"cannot read the orbax checkpoint {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"]
    want = _expected(cfg, lora)
    problems = [f"missing leaf {n} in {path.name}/" for n in sorted(set(want) - set(have))]
    problems += [f"unexpected leaf {n} in {path.name}/" for n in sorted(set(have) - set(want))]
    problems += [
        f"shape mismatch for {n} in {path.name}/: stored {have[n][0]}, config expects {want[n]}"
        for n in sorted(set(want) & set(have))
        if have[n][0] != want[n]
    ]
    return problems


def _restore(path: Path, dtype: np.dtype) -> dict:
    """Restore with orbax one leaf at a time, as a host array in ``dtype`` (tensorstore casts
    while reading), and move it to the default device before the next. Host peak: one leaf
    on an accelerator; the model plus its largest leaf on CPU. Never two models."""
    import jax
    import orbax.checkpoint as ocp

    out: dict = {}
    with ocp.PyTreeCheckpointer() as ckpt:
        meta = ckpt.metadata(path.absolute())
        tree = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
        for keypath, leaf_meta in jax.tree_util.tree_flatten_with_path(tree)[0]:
            keys = [str(getattr(k, "key", k)) for k in keypath]
            item, args = _nest(keys, leaf_meta), _nest(keys, ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype))
            host = ckpt.restore(path.absolute(), args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True))
            node = out
            for key in keys[:-1]:
                node, host = node.setdefault(key, {}), host[key]
            # Wait for the copy: an async device_put would keep every host buffer alive.
            node[keys[-1]] = jax.block_until_ready(jax.device_put(host[keys[-1]]))
            del host
    return out


def _nest(keys: list[str], value) -> dict:
    for key in reversed(keys):
        value = {key: value}
    return value


def to_device(tree: dict) -> dict:
    """Replace the numpy leaves of a nested dict by device arrays *in place*, one at a time,
    waiting for each copy, so host memory is the tree plus one leaf, never two trees."""
    import jax

    for key, value in tree.items():
        if isinstance(value, dict):
            to_device(value)
        else:
            tree[key] = jax.block_until_ready(jax.device_put(value))
    return tree


def check_chunks(directory: Path, lora: bool) -> list[str]:
    """Every orbax file recorded in manifest.json (``chunks``, and ``lora.chunks``) is there with
    its size and sha256. Directories
    converted before chunks were recorded are not checked. ``NEMODIFF_SKIP_SHA256=1`` checks
    sizes only (a 16 GB model hashes in about ten seconds)."""
    import hashlib
    import json
    import os

    path = Path(directory) / "manifest.json"
    if not path.is_file():
        return []
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        return [f"manifest.json is not valid JSON: {e}"]
    if not isinstance(manifest, dict):
        return ["manifest.json does not hold a JSON object"]
    groups = [(PARAMS_DIR, manifest.get("chunks"))]
    if lora and isinstance(manifest.get("lora"), dict):
        groups.append((LORA_DIR, manifest["lora"].get("chunks")))
    skip_hash = os.environ.get("NEMODIFF_SKIP_SHA256") == "1"
    problems = []
    for _, records in groups:
        if not records:
            continue
        for rec in records:
            f = Path(directory) / rec["path"]
            if not f.is_file():
                problems.append(f"{rec['path']} is missing (listed in manifest.json)")
            elif f.stat().st_size != rec["bytes"]:
                problems.append(f"{rec['path']} has {f.stat().st_size} bytes, manifest.json says {rec['bytes']}")
            elif not skip_hash:
                h = hashlib.sha256()
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 24), b""):
                        h.update(block)
                if h.hexdigest() != rec["sha256"]:
                    problems.append(f"{rec['path']} does not match its sha256 in manifest.json (changed after "
                                    "conversion; convert again)")
    return problems


def read_converted(directory: str | Path, dtype: str | None = None, **overrides):
    """``(cfg, params)`` from a converted directory; arrays arrive in ``dtype`` (default: as stored)."""
    from .hf_read import read_config

    directory = Path(directory)
    if dtype is not None:
        overrides["dtype"] = dtype
    cfg, _ = read_config(directory, **overrides)
    lora_dir = directory / LORA_DIR
    has_lora = cfg.lora_rank > 0
    problems = check_stored(directory / PARAMS_DIR, cfg, lora=False)
    if has_lora:
        problems += check_stored(lora_dir, cfg, lora=True)
    problems += check_chunks(directory, has_lora)
    if problems:
        raise CheckpointError(problems, str(directory))
    params = _restore(directory / PARAMS_DIR, np_dtype(cfg.dtype))
    if has_lora:
        lora = _restore(lora_dir, np_dtype(cfg.dtype))
        params["layers"]["self_attn"].update(lora["layers"]["self_attn"])
    return cfg, params


class LeafReader:
    """Layer slices of a converted checkpoint's leaves through tensorstore (the export path):
    ``read(spec)`` returns the HF-layout tensor, reading only that layer."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._open: dict[tuple[str, str], object] = {}

    def _store(self, sub: str, leaf: str):
        import tensorstore as ts

        key = (sub, leaf)
        if key not in self._open:
            spec = {
                "driver": "zarr",
                "kvstore": {"driver": "ocdbt", "base": f"file://{(self.directory / sub).absolute()}", "path": leaf},
            }
            self._open[key] = ts.open(spec, open=True, read=True).result()
        return self._open[key]

    def jax_slice(self, spec: ParamSpec) -> np.ndarray:
        t = self._store(LORA_DIR if spec.lora else PARAMS_DIR, spec.leaf)
        return np.asarray((t if spec.layer is None else t[spec.layer]).read().result())

    def read(self, spec: ParamSpec) -> np.ndarray:
        return spec.to_hf(self.jax_slice(spec))
