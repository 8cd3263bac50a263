"""Write an orbax PyTree checkpoint without ever holding the tree: the streaming writer.

Each leaf is a :class:`StreamedLeaf` that produces one layer slice at a time; a small orbax
TypeHandler writes the slices into the leaf's tensorstore array (chunks never span two
layers) under a lock, so at most one source tensor is in memory at any moment. The result
is a plain orbax checkpoint: leaves are recorded as ``np.ndarray`` and any orbax restore
reads it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nemodiff_jax.model.config import NLDConfig

from nemodiff_jax.io.jax_format import np_dtype
from nemodiff_jax import guard
from nemodiff_jax.io.keymap import CheckpointError, ParamSpec, leaf_shape, leaves

_MIN_CHUNK, _MAX_CHUNK = 1 << 20, 64 << 20



@dataclasses.dataclass(frozen=True, eq=False)
class StreamedLeaf:
    """A leaf that is never whole in memory: ``parts[i]()`` returns layer ``i`` (or the whole
    array when ``stacked`` is False)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    parts: tuple[Callable[[], np.ndarray], ...]
    stacked: bool

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __deepcopy__(self, memo):  # orbax deep-copies host arrays before writing; nothing to copy
        return self


class _WriteState:
    """Shared by one save: the lock that keeps one tensor in flight, and the first error.

    Errors are kept here instead of raised inside orbax's event loop (which then closes
    with tensorstore futures still pending); :func:`write_tree` raises them after the save."""

    def __init__(self):
        self.lock: asyncio.Lock | None = None
        self.error: BaseException | None = None


def _handler_registry(state: _WriteState):
    """A registry where StreamedLeaf gets the slice-by-slice writer."""
    import tensorstore as ts
    from orbax.checkpoint import type_handlers
    from orbax.checkpoint._src.serialization import type_handler_registry as registry

    class StreamingHandler(type_handlers.NumpyHandler):
        def __init__(self):
            super().__init__(deepcopy_host_arrays=False)

        async def _open_and_write(self, value, tspec, ts_context):
            if state.lock is None:
                state.lock = asyncio.Lock()
            async with state.lock:  # one tensor in flight across all leaves
                if state.error is not None:
                    return
                try:
                    t = await ts.open(ts.Spec(tspec), create=True, open=True, context=ts_context)
                    for i, part in enumerate(value.parts):
                        arr = part()
                        if arr.dtype != value.dtype:
                            raise TypeError(f"leaf part has dtype {arr.dtype}, expected {value.dtype}")
                        await (t[i] if value.stacked else t).write(arr)
                        del arr
                except BaseException as e:  # an Interrupted included: raised by write_tree after the save
                    state.error = e

    import jax

    # jax.Array is registered only so orbax does not warn that array metadata is off.
    return registry.create_type_handler_registry(
        (jax.Array, type_handlers.ArrayHandler()),
        (StreamedLeaf, StreamingHandler()),
    )


def streamed_leaves(
    cfg: NLDConfig, specs: list[ParamSpec], get: Callable[[ParamSpec], np.ndarray], dtype: str
) -> dict[str, StreamedLeaf]:
    """One StreamedLeaf per leaf of ``specs``; ``get(spec)`` returns the HF tensor. The cast
    to ``dtype`` (a no-op when it already matches) and the layout change happen per tensor."""
    want = np_dtype(dtype)

    def part(spec: ParamSpec):
        def read() -> np.ndarray:
            guard.check()  # an interrupt stops between tensors; the staging directory is removed
            arr = get(spec)
            bad = guard.nonfinite_count(arr)
            if bad:
                raise CheckpointError([f"non-finite weights: {spec.hf_name} holds {bad} NaN/Inf value(s)"],
                                      "source checkpoint")
            return spec.to_jax(arr.astype(want, copy=False))

        return read

    return {
        name: StreamedLeaf(leaf_shape(group), want, tuple(part(s) for s in group), group[0].layer is not None)
        for name, group in leaves(specs, cfg.num_layers).items()
    }


def _save_args(leaf: StreamedLeaf):
    """Chunks of at most 64 MiB, never spanning two layers: a layer write then covers whole
    chunks (no read-modify-write), and a restore decodes 64 MiB at a time instead of a whole
    1 GiB embedding. Leaves with layers under 1 MiB (norms) stay one chunk (orbax warns below)."""
    import orbax.checkpoint as ocp

    if leaf.stacked:
        per_part = leaf.nbytes // leaf.shape[0]
        if per_part < _MIN_CHUNK:
            return ocp.SaveArgs()
        return ocp.SaveArgs(chunk_byte_size=min(per_part, _MAX_CHUNK), shard_axes=(0,))
    return ocp.SaveArgs(chunk_byte_size=_MAX_CHUNK if leaf.nbytes > _MAX_CHUNK else None)


def write_tree(path: Path, flat: dict[str, StreamedLeaf]) -> None:
    """Save ``{"a.b.c": leaf}`` as the orbax checkpoint ``path`` (which must not exist)."""
    import orbax.checkpoint as ocp

    tree: dict = {}
    save_args: dict = {}
    for name, leaf in flat.items():
        *parents, last = name.split(".")
        node, args = tree, save_args
        for key in parents:
            node, args = node.setdefault(key, {}), args.setdefault(key, {})
        node[last] = leaf
        args[last] = _save_args(leaf)
    state = _WriteState()
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=_handler_registry(state), use_compression=False)
    try:
        with ocp.Checkpointer(handler) as ckpt:
            ckpt.save(Path(path).absolute(), args=ocp.args.PyTreeSave(tree, save_args=save_args))
    except Exception:
        if state.error is None:
            raise
    if state.error is not None:  # our error, not orbax's "params are missing" that follows it
        raise state.error
