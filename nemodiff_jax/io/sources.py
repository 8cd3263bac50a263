"""Read tensors from an HF checkpoint directory lazily, one tensor at a time.

Handles a single ``model.safetensors``, sharded safetensors with
``model.safetensors.index.json``, and torch pickles (``pytorch_model*.bin``, ``*.pt``,
loaded with ``weights_only=True``). Names are canonicalised (see :func:`keymap.canonical_name`).

Opening a source never raises for a bad file: unreadable files, shards the index names but
that do not exist, and duplicate names are collected in ``problems`` so the caller can
report them together with key and shape problems in one :class:`CheckpointError`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .keymap import CheckpointError, canonical_name

# safetensors dtype codes -> the numpy-style names keymap.SUPPORTED_DTYPES uses.
_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


class TensorSource:
    """``names()`` -> canonical names, ``shapes()``, ``dtypes()``, ``get(name)`` -> numpy array."""

    def __init__(self, directory: str | Path, files: list[Path] | None = None):
        self.dir = Path(directory)
        self.problems: list[str] = []
        self.unreadable: set[str] = set()  # canonical names that live in an unreadable file
        self.unknown_unreadable = False  # an unreadable file whose names no index lists
        self._where: dict[str, tuple[Path, str]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, str] = {}
        self._torch_cache: dict[Path, dict] = {}
        self._index: dict[str, str] = {}
        self.files = list(files) if files is not None else self._find_files()
        for f in self.files:
            self._index_file(f)
        if not self.files and not self.problems:
            self.problems.append(f"no weights found in {self.dir} (looked for *.safetensors, pytorch_model*.bin, *.pt)")

    def _find_files(self) -> list[Path]:
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                self._index = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                self.problems.append(f"cannot read {index.name}: {e}")
                return sorted(self.dir.glob("*.safetensors"))
            files = sorted({self.dir / f for f in self._index.values()})
            for f in files:
                if not f.is_file():
                    self.problems.append(f"{index.name} names shard {f.name}, which does not exist")
                    self._mark_unreadable(f)
            return [f for f in files if f.is_file()]
        single = self.dir / "model.safetensors"
        if single.is_file():
            return [single]
        st = sorted(self.dir.glob("*.safetensors"))
        if st:
            return st
        return sorted(self.dir.glob("pytorch_model*.bin")) + sorted(self.dir.glob("*.pt"))

    def _mark_unreadable(self, f: Path) -> None:
        if not self._index:  # no index says what the file held: any missing key may be in it
            self.unknown_unreadable = True
        self.unreadable |= {canonical_name(k) for k, v in self._index.items() if v == f.name}

    def _index_file(self, f: Path) -> None:
        try:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(f), framework="numpy") as h:
                    for raw in h.keys():
                        sl = h.get_slice(raw)
                        dt = str(sl.get_dtype())
                        self._add(raw, f, tuple(sl.get_shape()), _ST_DTYPES.get(dt, dt.lower()))
            else:
                for raw, t in self._load_torch(f).items():
                    self._add(raw, f, tuple(t.shape), str(t.dtype).replace("torch.", ""))
        except Exception as e:  # safetensors/torch raise their own types for corrupt files
            kind = "truncated or corrupt safetensors file" if f.suffix == ".safetensors" else "unreadable torch pickle"
            self.problems.append(f"cannot read {f.name} ({kind}): {_first_line(e)}")
            self._mark_unreadable(f)

    def _add(self, raw: str, f: Path, shape, dtype: str) -> None:
        name = canonical_name(raw)
        if name in self._where:
            self.problems.append(f"duplicate tensor {name} in {self._where[name][0].name} and {f.name}")
        self._where[name] = (f, raw)
        self._shapes[name] = shape
        self._dtypes[name] = dtype

    def _load_torch(self, f: Path) -> dict:
        if f not in self._torch_cache:
            import torch

            try:  # mmap keeps the pickle's storage on disk until a tensor is touched
                sd = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) pickles cannot be mmapped
                sd = torch.load(str(f), map_location="cpu", weights_only=True)
            if not isinstance(sd, dict):
                raise ValueError(f"{f.name} holds a {type(sd).__name__}, not a state dict")
            if isinstance(sd.get("state_dict"), dict):  # trainer checkpoints nest the weights
                sd = sd["state_dict"]
            self._torch_cache = {f: sd}  # keep one pickle open at a time
        return self._torch_cache[f]

    def names(self) -> list[str]:
        return list(self._where)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def dtypes(self) -> dict[str, str]:
        return dict(self._dtypes)

    def dtype(self, name: str) -> str:
        return self._dtypes[name]

    def get(self, name: str) -> np.ndarray:
        """One tensor as a numpy array (bf16 as ml_dtypes.bfloat16); a CheckpointError if unreadable."""
        f, raw = self._where[name]
        try:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(f), framework="numpy") as h:
                    return h.get_tensor(raw)
            return _torch_to_numpy(self._load_torch(f)[raw])
        except Exception as e:
            raise CheckpointError([f"cannot read tensor {raw} from {f.name}: {_first_line(e)}"], str(self.dir)) from e


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.contiguous().numpy()
