"""Read tensors from an HF checkpoint directory lazily, one tensor at a time.

Handles a single ``model.safetensors``, sharded safetensors with
``model.safetensors.index.json``, and torch pickles (``pytorch_model*.bin``, ``*.pt``,
loaded with ``weights_only=True``). Names are canonicalised (see :func:`keymap.canonical_name`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .keymap import canonical_name


class TensorSource:
    """``names()`` -> canonical names, ``shape(name)``, ``get(name)`` -> numpy array."""

    def __init__(self, directory: str | Path, prefix_filter: str | None = None):
        self.dir = Path(directory)
        self._where: dict[str, tuple[Path, str]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, str] = {}
        self._torch_cache: dict[Path, dict] = {}
        files = self._find_files()
        for f in files:
            self._index_file(f)
        if not self._where:
            raise ValueError(f"no tensors found in {self.dir} (looked for *.safetensors, pytorch_model*.bin, *.pt)")
        self.files = files

    def _find_files(self) -> list[Path]:
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted({self.dir / f for f in weight_map.values()})
            missing = [str(f.name) for f in files if not f.is_file()]
            if missing:
                raise ValueError(f"{index.name} names shard(s) that do not exist: {', '.join(missing)}")
            return files
        single = self.dir / "model.safetensors"
        if single.is_file():
            return [single]
        st = sorted(self.dir.glob("*.safetensors"))
        if st:
            return st
        bins = sorted(self.dir.glob("pytorch_model*.bin")) + sorted(self.dir.glob("*.pt"))
        return bins

    def _index_file(self, f: Path) -> None:
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(f), framework="numpy") as h:
                    for raw in h.keys():
                        sl = h.get_slice(raw)
                        self._add(raw, f, tuple(sl.get_shape()), str(sl.get_dtype()))
            except Exception as e:  # safetensors raises its own error types for corrupt headers
                raise ValueError(f"cannot read {f.name}: {e} (truncated or corrupt safetensors file?)") from e
        else:
            sd = self._load_torch(f)
            for raw, t in sd.items():
                self._add(raw, f, tuple(t.shape), str(t.dtype).replace("torch.", ""))

    def _add(self, raw: str, f: Path, shape, dtype: str) -> None:
        name = canonical_name(raw)
        self._where[name] = (f, raw)
        self._shapes[name] = shape
        self._dtypes[name] = dtype

    def _load_torch(self, f: Path) -> dict:
        if f not in self._torch_cache:
            import torch

            try:
                sd = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                raise ValueError(f"cannot read {f.name}: {e}") from e
            if not isinstance(sd, dict):
                raise ValueError(f"{f.name} does not hold a state dict")
            self._torch_cache = {f: sd}  # keep one pickle open at a time
        return self._torch_cache[f]

    def names(self) -> list[str]:
        return list(self._where)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def dtype(self, name: str) -> str:
        return self._dtypes[name]

    def get(self, name: str) -> np.ndarray:
        f, raw = self._where[name]
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(f), framework="numpy") as h:
                    return h.get_tensor(raw)
            except Exception as e:
                raise ValueError(f"cannot read tensor {raw} from {f.name}: {e}") from e
        t = self._load_torch(f)[raw]
        return _torch_to_numpy(t)


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.contiguous().numpy()
