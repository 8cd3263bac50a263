"""Write safetensors files one tensor at a time, and plan shards the way HF does.

``safetensors.numpy.save_file`` wants every tensor of a file in memory at once; an 8B
shard is several GB. The format is simple (8-byte header length, JSON header with
dtype/shape/byte offsets, raw little-endian data), so knowing every shape up front lets
us write the header first and stream the data after it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

DTYPE_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor to write: its name, shape and dtype name (``float32``/``bfloat16``/``float16``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(_np_dtype(self.dtype)).itemsize


def _np_dtype(name: str):
    import ml_dtypes

    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def parse_size(text: str | int) -> int:
    """``"5GB"`` (10^9, as HF counts), ``"2GiB"``, ``"500MB"`` or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"cannot read size {text!r}; use e.g. 5GB, 500MB, 2GiB or a byte count")
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return size


def plan_shards(entries: list[Entry], max_bytes: int) -> list[list[Entry]]:
    """Split ``entries`` (kept in order) into shards of at most ``max_bytes`` each; a tensor
    larger than the limit gets a shard of its own (as transformers does)."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return [s for s in shards if s]


def write_safetensors(
    path: Path, entries: list[Entry], get: Callable[[Entry], np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Write ``entries`` to ``path``, asking ``get`` for one tensor at a time."""
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for e in entries:
        if e.dtype not in DTYPE_CODES:
            raise ValueError(f"cannot write {e.name}: unsupported dtype {e.dtype}")
        header[e.name] = {"dtype": DTYPE_CODES[e.dtype], "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for e in entries:
            arr = np.ascontiguousarray(get(e))
            if tuple(arr.shape) != tuple(e.shape) or arr.dtype != np.dtype(_np_dtype(e.dtype)):
                raise ValueError(f"{e.name}: got {arr.dtype}{list(arr.shape)}, planned {e.dtype}{list(e.shape)}")
            f.write(arr.reshape(-1).view(np.uint8).data)


def write_sharded(
    directory: Path,
    entries: list[Entry],
    get: Callable[[Entry], np.ndarray],
    max_bytes: int,
    basename: str = "model",
) -> list[str]:
    """HF layout: ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` plus
    ``model.safetensors.index.json`` when the tensors exceed ``max_bytes``. Returns file names."""
    shards = plan_shards(entries, max_bytes)
    if len(shards) == 1:
        name = f"{basename}.safetensors"
        write_safetensors(directory / name, shards[0], get)
        return [name]
    names, weight_map = [], {}
    for i, shard in enumerate(shards):
        name = f"{basename}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(directory / name, shard, get)
        names.append(name)
        weight_map.update({e.name: name for e in shard})
    index = {"metadata": {"total_size": sum(e.nbytes for e in entries)}, "weight_map": weight_map}
    (directory / f"{basename}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names
